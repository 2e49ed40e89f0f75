//! The network namespace: devices, addresses, routes and ports of the container's own.
//!
//! A new network namespace is empty but for a loopback device `lo`, and even that is down
//! (`man 7 network_namespaces`). Three choices, from most to least isolated:
//!
//! - `none`: leave it so. Nothing can be reached, not even 127.0.0.1.
//! - `loopback`: bring `lo` up, with one `ioctl(SIOCSIFFLAGS)` (`man 7 netdevice`).
//! - `veth`: also a virtual Ethernet pair (`man 4 veth`), a cable with two ends: one stays on
//!   the host (`isolab<pid>h`), the other is created *inside* the container's namespace as
//!   `eth0`. Both get an address from a small /30 subnet, so host and container can talk to
//!   each other and to nothing else: there is no route out and no NAT. A device belongs to
//!   exactly one namespace, and when a namespace dies its devices die with it; deleting one end
//!   of a veth pair deletes the other. So the pair goes away when the container does, however
//!   it ends.

use std::fmt;
use std::fs;
use std::net::Ipv4Addr;
use std::str::FromStr;

use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use nix::errno::Errno;
use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::netlink::{Intent, Netlink};

/// What the container's network namespace gets (`--net`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// An empty namespace: `lo` stays down.
    None,
    /// `lo` up (the default).
    Loopback,
    /// `lo` up and a veth pair to the host.
    Veth,
}

impl FromStr for Mode {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "none" => Ok(Mode::None),
            "loopback" => Ok(Mode::Loopback),
            "veth" => Ok(Mode::Veth),
            _ => Err(Error::Invalid(format!(
                "invalid --net '{text}': expected none, loopback or veth"
            ))),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::None => "none",
            Mode::Loopback => "loopback",
            Mode::Veth => "veth",
        })
    }
}

/// An IPv4 subnet, `10.200.0.4/30`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    /// The network address (host bits zero).
    pub network: Ipv4Addr,
    /// The prefix length.
    pub prefix: u8,
}

impl Subnet {
    fn mask(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        }
    }

    /// The host's end: the first address.
    pub fn host_address(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// The container's end: the second address.
    pub fn container_address(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 2)
    }

    /// Do the two subnets share an address?
    pub fn overlaps(&self, other: &Subnet) -> bool {
        let mask = Self::mask(self.prefix.min(other.prefix));
        u32::from(self.network) & mask == u32::from(other.network) & mask
    }
}

impl FromStr for Subnet {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let invalid = |why: &str| {
            Error::Invalid(format!("invalid --subnet '{text}': {why}, e.g. 10.200.0.0/30"))
        };
        let (address, prefix) =
            text.split_once('/').ok_or_else(|| invalid("expected A.B.C.D/N"))?;
        let address: Ipv4Addr = address.parse().map_err(|_| invalid("not an IPv4 address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| invalid("not a prefix length"))?;
        if !(8..=30).contains(&prefix) {
            return Err(invalid("the prefix must be 8 to 30 (two addresses are needed)"));
        }
        let network = Ipv4Addr::from(u32::from(address) & Self::mask(prefix));
        if network != address {
            return Err(invalid(&format!("host bits set (the network is {network}/{prefix})")));
        }
        Ok(Subnet { network, prefix })
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The pool the runtime picks container subnets from.
pub const POOL: Subnet = Subnet { network: Ipv4Addr::new(10, 200, 0, 0), prefix: 16 };

/// The routes of the host's main table (`/proc/net/route`), plus 127.0.0.0/8, whose route
/// lives in the `local` table that file does not show. The default route is left out: it
/// "overlaps" everything and conflicts with nothing.
pub fn host_routes() -> Result<Vec<(Subnet, String)>> {
    let text = fs::read_to_string("/proc/net/route")
        .map_err(|e| Error::io("read", "/proc/net/route", &e))?;
    let mut routes =
        vec![(Subnet { network: Ipv4Addr::new(127, 0, 0, 0), prefix: 8 }, "lo".to_string())];
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(device), Some(destination), Some(mask)) =
            (fields.first(), fields.get(1), fields.get(7))
        else {
            continue;
        };
        // The kernel prints each address as the hex of its in-memory (network order) bytes
        // read as a native integer: turning it back into bytes gives the address.
        let (Ok(destination), Ok(mask)) =
            (u32::from_str_radix(destination, 16), u32::from_str_radix(mask, 16))
        else {
            continue;
        };
        let prefix = u32::from_be_bytes(mask.to_ne_bytes()).leading_ones() as u8;
        if prefix == 0 {
            continue;
        }
        let network = Ipv4Addr::from(destination.to_ne_bytes());
        routes.push((Subnet { network, prefix }, device.to_string()));
    }
    Ok(routes)
}

// ANCHOR: pick_subnet
/// A free /30 from [`POOL`]: one that overlaps none of the host's routes (each running
/// container's host end adds the route of its /30, so running containers are avoided too).
/// The search starts at a place that depends on `seed` (the runtime's pid), so that two
/// runtimes starting at once are unlikely to pick the same one.
pub fn pick_subnet(routes: &[(Subnet, String)], seed: u32) -> Result<Subnet> {
    let count = 1u32 << (30 - POOL.prefix);
    (0..count)
        .map(|i| (seed.wrapping_mul(2_654_435_761) % count + i) % count)
        .map(|i| Subnet { network: Ipv4Addr::from(u32::from(POOL.network) + i * 4), prefix: 30 })
        .find(|candidate| routes.iter().all(|(route, _)| !route.overlaps(candidate)))
        .ok_or_else(|| Error::Invalid(format!("no free /30 left in {POOL}: pass --subnet")))
}
// ANCHOR_END: pick_subnet

/// Refuses a `--subnet` that overlaps a host route: traffic for it would go one way or the
/// other depending on prefix lengths, and the container could reach or shadow host networks.
pub fn check_free(subnet: Subnet, routes: &[(Subnet, String)]) -> Result<()> {
    match routes.iter().find(|(route, _)| route.overlaps(&subnet)) {
        None => Ok(()),
        Some((route, device)) => Err(Error::Invalid(format!(
            "--subnet {subnet} overlaps the host's route to {route} (dev {device}): choose a \
             subnet the host does not use, e.g. from {POOL}"
        ))),
    }
}

/// The name of the host's end of the pair for the container whose first process is `pid` (a
/// plan shows it with a placeholder for the pid: the same name, from the same function).
pub fn host_link_name(pid: impl std::fmt::Display) -> String {
    format!("isolab{pid}h")
}

// ANCHOR: loopback_up
/// Brings `lo` up in the calling process's network namespace: `SIOCGIFFLAGS` to read the
/// flags, `SIOCSIFFLAGS` to write them back with `IFF_UP` (`man 7 netdevice`). 127.0.0.1 is
/// already on it; a new namespace just leaves it down.
pub fn loopback_up() -> Result<()> {
    set_up("lo")
}
// ANCHOR_END: loopback_up

fn set_up(name: &str) -> Result<()> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Error::sys("socket", "AF_INET", Errno::last()));
    }
    // SAFETY: we own the fresh descriptor; OwnedFd closes it.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
        *slot = byte as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name from and writes the flags into a valid ifreq.
    if unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut request) } < 0 {
        return Err(Error::sys("ioctl", format!("SIOCGIFFLAGS {name}"), Errno::last()));
    }
    // SAFETY: the kernel filled the flags member of the union above.
    unsafe { request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads a valid ifreq.
    if unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &request) } < 0 {
        return Err(Error::sys("ioctl", format!("SIOCSIFFLAGS {name}"), Errno::last())
            .hint("bringing a device up needs CAP_NET_ADMIN in its network namespace"));
    }
    Ok(())
}

/// The MTU of both ends of a container's veth: loopback's size, not Ethernet's 1,500.
///
/// A veth never puts a frame on a wire: the kernel hands each packet straight to its peer, so
/// the only cost of an MTU is per packet. With 1,500, TCP's MSS is 1,448 bytes, and every
/// segment that GSO cut to that size on the sending side walks the receiving stack on its own
/// (GRO is off on a new veth). With 65,535, as on `lo` (65,536), one segment carries 64 KiB.
/// `isolab bench`'s iperf3, container → host, on a busy 2-CPU machine (Gbit/s, three runs
/// each, host loopback alongside): MTU 1,500 → 0.74-0.80 of loopback; GRO on both ends → about
/// 0.85; MTU 65,535 → 0.95-1.0; both → about 1.0. The link only ever joins the host and one
/// container, so no path with a smaller MTU is behind it (a route beyond the host would find
/// its own MTU by path MTU discovery, RFC 1191).
pub const VETH_MTU: u32 = 65_535;

// ANCHOR: create_veth
/// Creates the veth pair for the container whose first process is `child`: `host_name` in
/// our namespace, and its peer directly inside the child's network namespace as `eth0`
/// (`IFLA_NET_NS_PID` on the peer; the kernel creates it there, so no name on the host can
/// clash with `eth0`), both ends with an MTU of [`VETH_MTU`]. Then gives the host's end its
/// address and brings it up.
///
/// Equivalent to `ip link add NAME mtu 65535 type veth peer name eth0 mtu 65535 netns PID`,
/// followed by `ip addr add HOST/30 dev NAME` and `ip link set NAME up`.
pub fn create_veth(host_name: &str, child: Pid, subnet: Subnet) -> Result<()> {
    let mut netlink = Netlink::open()?;
    let mut peer = LinkMessage::default();
    peer.attributes.push(LinkAttribute::IfName("eth0".to_string()));
    peer.attributes.push(LinkAttribute::NetNsPid(child.as_raw() as u32));
    peer.attributes.push(LinkAttribute::Mtu(VETH_MTU));
    let mut link = LinkMessage::default();
    link.attributes.push(LinkAttribute::IfName(host_name.to_string()));
    link.attributes.push(LinkAttribute::Mtu(VETH_MTU));
    link.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
    ]));
    netlink
        .request(
            RouteNetlinkMessage::NewLink(link),
            Intent::Create,
            &format!("RTM_NEWLINK veth {host_name}"),
        )
        .map_err(|error| match error.errno() {
            Some(Errno::EPERM) => {
                error.hint("creating a link on the host needs CAP_NET_ADMIN there: run as root")
            }
            Some(Errno::EEXIST) => error.hint("a link of that name exists already"),
            _ => error,
        })?;
    let configured = configure(&mut netlink, host_name, subnet.host_address(), subnet.prefix);
    if configured.is_err() {
        let _ = delete_link(host_name);
    }
    configured
}
// ANCHOR_END: create_veth

// ANCHOR: container_end
/// Inside the container: gives `eth0` its address and brings it up.
pub fn configure_container_end(subnet: Subnet) -> Result<()> {
    configure(&mut Netlink::open()?, "eth0", subnet.container_address(), subnet.prefix)
}
// ANCHOR_END: container_end

/// `ip addr add ADDRESS/PREFIX dev NAME; ip link set NAME up`, over netlink.
fn configure(netlink: &mut Netlink, name: &str, address: Ipv4Addr, prefix: u8) -> Result<()> {
    let index = link_index(name)?;
    let mut message = AddressMessage::default();
    message.header.family = AddressFamily::Inet;
    message.header.prefix_len = prefix;
    message.header.index = index;
    message.attributes.push(AddressAttribute::Local(address.into()));
    message.attributes.push(AddressAttribute::Address(address.into()));
    netlink.request(
        RouteNetlinkMessage::NewAddress(message),
        Intent::Create,
        &format!("RTM_NEWADDR {address}/{prefix} dev {name}"),
    )?;

    let mut link = LinkMessage::default();
    link.header.index = index;
    link.header.flags = LinkFlags::Up;
    link.header.change_mask = LinkFlags::Up;
    netlink.request(
        RouteNetlinkMessage::SetLink(link),
        Intent::Change,
        &format!("RTM_SETLINK {name} up"),
    )
}

/// Deletes link `name` from our namespace (its veth peer goes with it).
pub fn delete_link(name: &str) -> Result<()> {
    let mut link = LinkMessage::default();
    link.header.index = link_index(name)?;
    Netlink::open()?.request(
        RouteNetlinkMessage::DelLink(link),
        Intent::Change,
        &format!("RTM_DELLINK {name}"),
    )
}

/// The index of link `name` (`man 3 if_nametoindex`).
pub fn link_index(name: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(name).map_err(|errno| Error::sys("if_nametoindex", name, errno))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(text: &str) -> Subnet {
        text.parse().unwrap()
    }

    #[test]
    fn parses_and_checks_subnets() {
        let s = subnet("10.200.3.4/30");
        assert_eq!(
            (s.host_address(), s.container_address()),
            (Ipv4Addr::new(10, 200, 3, 5), Ipv4Addr::new(10, 200, 3, 6))
        );
        for bad in ["10.200.3.5/30", "10.200.3.4", "10.200.3.4/31", "x/30"] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn overlap_works_both_ways() {
        assert!(subnet("10.0.0.0/8").overlaps(&subnet("10.200.0.4/30")));
        assert!(subnet("10.200.0.4/30").overlaps(&subnet("10.0.0.0/8")));
        assert!(!subnet("10.200.0.4/30").overlaps(&subnet("10.200.0.8/30")));
    }

    #[test]
    fn picks_around_routes() {
        let routes = vec![(subnet("10.200.0.0/24"), "isolab1h".to_string())];
        let picked = pick_subnet(&routes, 0).unwrap();
        assert_eq!(picked, subnet("10.200.1.0/30"));
        assert!(check_free(subnet("10.200.0.8/30"), &routes)
            .unwrap_err()
            .to_string()
            .contains("dev isolab1h"));
    }

    #[test]
    fn reads_the_hosts_routes() {
        let routes = host_routes().unwrap();
        assert_eq!(routes[0].0, subnet("127.0.0.0/8"));
        assert!(routes.iter().all(|(route, _)| route.prefix > 0));
    }

    #[test]
    fn link_names_fit_ifnamsiz() {
        assert!(host_link_name(Pid::from_raw(4_194_304)).len() < libc::IFNAMSIZ);
    }
}
