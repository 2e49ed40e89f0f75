//! Whose ids are these? A range of host ids for each container's user namespace.
//!
//! As root, [`crate::idmap`] maps root inside a user namespace to 65,536 unprivileged host
//! ids. *Which* ids is not a detail: the kernel knows a file's owner and a process's user only
//! by the host id (`man 7 user_namespaces`, "Interaction with system calls"), so two things
//! mapped onto the same host id are the same user to it, whatever namespace they sit in:
//!
//! - **Two containers on one range are one user.** Container A's root owns container B's
//!   files on the host (its stage 4 upper), and may signal B's processes wherever it can name
//!   them. Each container needs a range no other container holds.
//! - **A range in `/etc/subuid` is someone's** (`man 5 subuid`). `useradd` gives the first
//!   user `100000:65536`, and that user's rootless containers (podman, via `newuidmap`) run as
//!   those ids: "uid 100000 owns nothing" is false on such a host.
//! - **Host users are host users.** A range over uids of `/etc/passwd` (`--map-base 1`) makes
//!   the container's uid 1 the host's `daemon`, uid 2 `bin`, …, with their files.
//!
//! So, as podman's `--userns=auto` does, ids come from a **pool** that root declared: root's
//! own entries in `/etc/subuid` and `/etc/subgid` (`root:START:COUNT`), or, when root has
//! none, a range isolab declares for itself ([`POOL`], a billion ids far above what
//! `useradd` hands out), minus every slot that overlaps a user, a group or another user's
//! subordinate range. The pool is cut in **slots** of 65,536 ids, one per container.
//!
//! A container takes a slot with a **claim**: a file `<claims dir>/<first uid>` created with
//! `O_EXCL`, so that two runtimes cannot both create it ([`Claims`]). A claim holds while
//! (i) its creator holds an exclusive `flock(2)` on it, which the kernel drops when the
//! process ends, however it ends; or (ii) it names a container directory that still exists
//! ([`Claim::keep_for`]: a stage 4 container keeps its ids between runs, since its upper is
//! owned by them). Anything else is stale, and the next allocation takes it over.
//!
//! Everything that decides (parsing the `/etc` files, the pool's arithmetic, overlaps) takes
//! text and paths as arguments; only [`Claims`] touches the claims directory.
//!
//! Why one file of over 1,100 lines (about 920 of code, 250 of tests): the pool, its parsing and
//! its arithmetic are pure functions that the claims build on, and read in that order. The seam
//! to split along when it grows again is [`Claims`], the only part that touches the disk.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::unistd::{Gid, Uid};

use crate::error::{Error, Result};
use crate::idmap::{IdMap, DEFAULT_COUNT};

/// How many host ids a container gets: 0–65535 inside, as a full system has.
pub const SLOT_SIZE: u32 = DEFAULT_COUNT;

/// The pool isolab declares when root has no range of its own in `/etc/subuid` and
/// `/etc/subgid`: ids 1,000,000,000 to 1,999,999,999, far above the ranges `useradd` hands out
/// (from 100000 on, 65536 per user: `SUB_UID_MIN` in `/etc/login.defs`).
pub const POOL: Span = Span { start: 1_000_000_000, count: 1_000_000_000 };

/// Where the claims are, host-wide: every root runtime on the machine allocates from here.
pub const CLAIMS_DIR: &str = "/var/lib/isolab/userns";

/// The environment variable that moves the claims directory (the tests use their own).
pub const CLAIMS_DIR_VAR: &str = "ISOLAB_USERNS_DIR";

/// The claims directory: `$ISOLAB_USERNS_DIR`, else [`CLAIMS_DIR`].
pub fn claims_dir() -> PathBuf {
    std::env::var_os(CLAIMS_DIR_VAR)
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| PathBuf::from(CLAIMS_DIR), PathBuf::from)
}

/// Ids `start..start+count` (a count of 0 is empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span {
    /// The first id.
    pub start: u32,
    /// How many.
    pub count: u32,
}

impl Span {
    /// One past the last id (as u64: `start + count` may not fit a u32).
    pub fn end(&self) -> u64 {
        u64::from(self.start) + u64::from(self.count)
    }

    /// Do the two share an id?
    pub fn overlaps(&self, other: Span) -> bool {
        self.count > 0
            && other.count > 0
            && u64::from(self.start) < other.end()
            && u64::from(other.start) < self.end()
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.count {
            1 => write!(f, "{}", self.start),
            _ => write!(f, "{}-{}", self.start, self.end().saturating_sub(1)),
        }
    }
}

/// One line of `/etc/subuid` or `/etc/subgid` (`man 5 subuid`): `owner:start:count`, the owner
/// a login name or a uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subordinate {
    /// The login name or uid the range belongs to.
    pub owner: String,
    /// The ids.
    pub ids: Span,
}

impl Subordinate {
    /// Is it one of root's ranges (by name or by uid)?
    pub fn is_root(&self) -> bool {
        self.owner == "root" || self.owner == "0"
    }
}

/// Parses `/etc/subuid` or `/etc/subgid`. Lines that are not `owner:start:count` (blank, a
/// `#` comment, a typo) are skipped, as shadow-utils skips them.
pub fn parse_subordinate(text: &str) -> Vec<Subordinate> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.trim().split(':');
            let owner = fields.next().filter(|o| !o.is_empty() && !o.starts_with('#'))?;
            let start = fields.next()?.parse().ok()?;
            let count = fields.next()?.parse().ok()?;
            fields
                .next()
                .is_none()
                .then(|| Subordinate { owner: owner.to_string(), ids: Span { start, count } })
        })
        .collect()
}

/// A user or group id in use on the host, and whose it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InUse {
    /// The id.
    pub id: u32,
    /// Who has it, in words: `daemon in /etc/passwd`.
    pub who: String,
}

/// The numbers in field `field` (0-based) of a colon-separated file: uids are field 2 of
/// `/etc/passwd`, gids field 3 of it (primary groups) and field 2 of `/etc/group`
/// (`man 5 passwd`, `man 5 group`). `file` names the file in [`InUse::who`].
pub fn parse_ids(text: &str, field: usize, file: &str) -> Vec<InUse> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            let id = fields.get(field)?.trim().parse().ok()?;
            Some(InUse { id, who: format!("{} in {file}", fields[0]) })
        })
        .collect()
}

/// What the host's files say about ids: its users and groups, and who was given which
/// subordinate range. Only the files: users from LDAP or another NSS source are not seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostIds {
    /// Uids of `/etc/passwd`.
    pub users: Vec<InUse>,
    /// Gids of `/etc/group`, and the primary gids of `/etc/passwd`.
    pub groups: Vec<InUse>,
    /// `/etc/subuid`.
    pub subuid: Vec<Subordinate>,
    /// `/etc/subgid`.
    pub subgid: Vec<Subordinate>,
}

impl HostIds {
    /// From the texts of `/etc/passwd`, `/etc/group`, `/etc/subuid` and `/etc/subgid`.
    pub fn parse(passwd: &str, group: &str, subuid: &str, subgid: &str) -> HostIds {
        let mut groups = parse_ids(group, 2, "/etc/group");
        let primary = parse_ids(passwd, 3, "/etc/passwd");
        groups.extend(
            primary
                .into_iter()
                .map(|InUse { id, who }| InUse { id, who: format!("primary group of {who}") }),
        );
        HostIds {
            users: parse_ids(passwd, 2, "/etc/passwd"),
            groups,
            subuid: parse_subordinate(subuid),
            subgid: parse_subordinate(subgid),
        }
    }

    /// Reads the four files under `etc` (`/etc`); a missing file is empty (a host without
    /// `/etc/subuid` has given nobody a range).
    pub fn read(etc: &Path) -> Result<HostIds> {
        let read = |name: &str| {
            let path = etc.join(name);
            match fs::read_to_string(&path) {
                Ok(text) => Ok(text),
                Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(String::new()),
                Err(error) => Err(Error::io("read", &path, &error)),
            }
        };
        Ok(HostIds::parse(&read("passwd")?, &read("group")?, &read("subuid")?, &read("subgid")?))
    }

    /// Host uids that are someone's: every uid of `/etc/passwd`, and every other user's
    /// range in `/etc/subuid` (root's own ranges are the pool).
    fn taken_uids(&self) -> Vec<Span> {
        taken(&self.users, &self.subuid)
    }

    /// Host gids that are someone's, as [`HostIds::taken_uids`].
    fn taken_gids(&self) -> Vec<Span> {
        taken(&self.groups, &self.subgid)
    }

    /// Who on the host already has an id of `uids` or of `gids`, in words (empty: nobody).
    pub fn conflicts(&self, uids: Span, gids: Span) -> Vec<String> {
        let ids = |in_use: &[InUse], span: Span, kind: &str| -> Vec<String> {
            in_use
                .iter()
                .filter(|used| span.overlaps(Span { start: used.id, count: 1 }))
                .map(|used| format!("{kind} {} ({})", used.id, used.who))
                .collect()
        };
        let ranges = |ranges: &[Subordinate], span: Span, file: &str| -> Vec<String> {
            ranges
                .iter()
                .filter(|range| !range.is_root() && span.overlaps(range.ids))
                .map(|range| format!("{} ({}'s range in {file})", range.ids, range.owner))
                .collect()
        };
        let mut found = ids(&self.users, uids, "uid");
        found.extend(ids(&self.groups, gids, "gid"));
        found.extend(ranges(&self.subuid, uids, "/etc/subuid"));
        found.extend(ranges(&self.subgid, gids, "/etc/subgid"));
        found
    }
}

/// The ids in `ids` and the spans of `ranges` not root's, sorted and merged.
fn taken(ids: &[InUse], ranges: &[Subordinate]) -> Vec<Span> {
    let mut spans: Vec<Span> = ids.iter().map(|used| Span { start: used.id, count: 1 }).collect();
    spans.extend(ranges.iter().filter(|range| !range.is_root()).map(|range| range.ids));
    merge(spans)
}

/// Sorts `spans` and merges those that overlap or touch.
fn merge(mut spans: Vec<Span>) -> Vec<Span> {
    spans.retain(|span| span.count > 0);
    spans.sort();
    let mut merged: Vec<Span> = Vec::new();
    for span in spans {
        match merged.last_mut() {
            Some(last) if u64::from(span.start) <= last.end() => {
                let end = last.end().max(span.end());
                last.count = u32::try_from(end - u64::from(last.start)).unwrap_or(u32::MAX);
            }
            _ => merged.push(span),
        }
    }
    merged
}

/// Does `span` overlap one of `sorted` (sorted and merged)? A binary search: the first span
/// that ends after `span` starts is the only candidate.
fn overlaps_any(sorted: &[Span], span: Span) -> bool {
    let at = sorted.partition_point(|taken| taken.end() <= u64::from(span.start));
    sorted.get(at).is_some_and(|taken| taken.overlaps(span))
}

/// One container's host ids: [`SLOT_SIZE`] uids from `uid`, as many gids from `gid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Slot {
    /// The host uid of root inside.
    pub uid: u32,
    /// The host gid of root's group inside.
    pub gid: u32,
}

impl Slot {
    /// Its uids.
    pub fn uids(&self) -> Span {
        Span { start: self.uid, count: SLOT_SIZE }
    }

    /// Its gids.
    pub fn gids(&self) -> Span {
        Span { start: self.gid, count: SLOT_SIZE }
    }

    /// The maps that put root inside on it.
    pub fn map(&self) -> IdMap {
        IdMap::root_to(self.uid, self.gid)
    }
}

impl Slot {
    /// In words, for a message: `ids 1000000000-1000065535`, or `uids …, gids …` when they
    /// differ.
    pub fn words(&self) -> String {
        match self.uid == self.gid {
            true => format!("ids {self}"),
            false => self.to_string(),
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.uid == self.gid {
            write!(f, "{}", self.uids())
        } else {
            write!(f, "uids {}, gids {}", self.uids(), self.gids())
        }
    }
}

/// Where the pool comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Root's entries in `/etc/subuid` and `/etc/subgid`.
    Root,
    /// [`POOL`], because root has no entry in the file named.
    Isolab {
        /// `/etc/subuid` or `/etc/subgid`.
        missing: &'static str,
    },
}

/// The slots containers may take: root's declared ranges, or [`POOL`], minus what the host's
/// users, groups and other users' subordinate ranges have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// Where it comes from.
    pub source: Source,
    /// The declared uid ranges.
    pub uids: Vec<Span>,
    /// The declared gid ranges.
    pub gids: Vec<Span>,
    taken_uids: Vec<Span>,
    taken_gids: Vec<Span>,
}

impl Pool {
    /// The pool of `host`: root's ranges when it has some in both files, else [`POOL`].
    pub fn of(host: &HostIds) -> Pool {
        let roots = |ranges: &[Subordinate]| -> Vec<Span> {
            ranges.iter().filter(|range| range.is_root()).map(|range| range.ids).collect()
        };
        let (uids, gids) = (roots(&host.subuid), roots(&host.subgid));
        let source = match (uids.is_empty(), gids.is_empty()) {
            (false, false) => Source::Root,
            (true, _) => Source::Isolab { missing: "/etc/subuid" },
            (false, true) => Source::Isolab { missing: "/etc/subgid" },
        };
        let (uids, gids, taken_uids, taken_gids) = match source {
            Source::Root => (uids, gids, host.taken_uids(), host.taken_gids()),
            // Our own pool gives a slot the same uids and gids, so a slot must be free of
            // both.
            Source::Isolab { .. } => {
                let both = merge([host.taken_uids(), host.taken_gids()].concat());
                (vec![POOL], vec![POOL], both.clone(), both)
            }
        };
        Pool { source, uids, gids, taken_uids, taken_gids }
    }

    /// Its slots, lowest first. Root's uid and gid ranges are cut separately and paired in
    /// order (the n-th uid slot with the n-th gid slot), as `newuidmap` users pair them.
    pub fn slots(&self) -> impl Iterator<Item = Slot> + '_ {
        let uids = free_starts(&self.uids, &self.taken_uids);
        let gids = free_starts(&self.gids, &self.taken_gids);
        uids.zip(gids).map(|(uid, gid)| Slot { uid, gid })
    }

    /// The first slot (what a run takes when no container holds it).
    pub fn first(&self) -> Result<Slot> {
        self.slots().next().ok_or_else(|| {
            Error::Invalid(format!(
                "{self} has no slot of {SLOT_SIZE} ids that no user, group or other user's \
                 range has: give root a larger range in /etc/subuid and /etc/subgid \
                 (`usermod --add-subuids 1000000000-1000999999 --add-subgids \
                 1000000000-1000999999 root`), or pass --map-base"
            ))
        })
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |spans: &[Span]| spans.iter().map(Span::to_string).collect::<Vec<_>>();
        match self.source {
            Source::Root => write!(
                f,
                "root's range in /etc/subuid ({}) and /etc/subgid ({})",
                list(&self.uids).join(", "),
                list(&self.gids).join(", ")
            ),
            Source::Isolab { missing } => {
                write!(f, "isolab's pool {POOL} (root has no {missing} entry)")
            }
        }
    }
}

/// The first ids of the slots of `ranges` (each cut from its own start) that overlap nothing
/// of `taken`. The last id, 4294967295, is `(uid_t) -1` and never part of a slot.
fn free_starts<'a>(ranges: &'a [Span], taken: &'a [Span]) -> impl Iterator<Item = u32> + 'a {
    ranges.iter().flat_map(move |range| {
        let slots = range.count / SLOT_SIZE;
        (0..slots)
            .map(move |n| u64::from(range.start) + u64::from(n) * u64::from(SLOT_SIZE))
            .take_while(|start| start + u64::from(SLOT_SIZE) <= u64::from(u32::MAX))
            .filter_map(|start| u32::try_from(start).ok())
            .filter(move |&start| !overlaps_any(taken, Span { start, count: SLOT_SIZE }))
    })
}

/// What the user asked for: where root inside should be on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// A free slot of the pool (the default).
    Free,
    /// `--map-base BASE`: uids and gids from BASE; `force` (`--map-base-force`) allows ids
    /// the host has given to someone.
    Base {
        /// The first host id.
        base: u32,
        /// `--map-base-force`.
        force: bool,
    },
    /// The slot a stopped container's files are owned by (stage 4's `start`), whose claim is
    /// kept for `dir`, its directory.
    Kept {
        /// Its ids.
        slot: Slot,
        /// The container's directory.
        dir: PathBuf,
    },
}

impl Wanted {
    /// Stage 4: the ids a stopped container's files are owned by (the store's `owner`, the
    /// host uid and gid of root inside), kept for the container at `dir`.
    pub fn kept(owner: (u32, u32), dir: &Path) -> Wanted {
        Wanted::Kept { slot: Slot { uid: owner.0, gid: owner.1 }, dir: dir.to_path_buf() }
    }
}

/// Where the ids of a plan's user namespace come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Not root: the caller's own ids, the only ones it may map.
    Rootless,
    /// The first free slot of the pool (the plan shows its first slot; the run claims).
    Free(Pool),
    /// `--map-base` (forced or not).
    Base {
        /// `--map-base-force` was given.
        force: bool,
    },
    /// A stopped container's own slot.
    Kept(PathBuf),
}

/// The user namespace's ids, as planned: the map, and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIds {
    /// The maps the parent will write.
    pub map: IdMap,
    /// Why these ids.
    pub origin: Origin,
    /// Where the run claims them.
    pub claims: Claims,
}

/// Decides the ids of the user namespace for a caller with effective ids `uid`/`gid`, reading
/// the host's users, groups and ranges under `etc`. Claims nothing: see [`UserIds::claim`].
pub fn plan(uid: Uid, gid: Gid, wanted: &Wanted, etc: &Path, claims: Claims) -> Result<UserIds> {
    if !uid.is_root() {
        if let Wanted::Base { .. } = wanted {
            return Err(Error::Invalid(
                "--map-base needs root: any other user may map only its own id (man 7 \
                 user_namespaces)"
                    .to_string(),
            ));
        }
        return Ok(UserIds { map: IdMap::rootless(uid, gid), origin: Origin::Rootless, claims });
    }
    let (map, origin) = match wanted {
        Wanted::Free => {
            let pool = Pool::of(&HostIds::read(etc)?);
            (pool.first()?.map(), Origin::Free(pool))
        }
        Wanted::Base { base, force } => {
            let slot = Slot { uid: *base, gid: *base };
            let conflicts = HostIds::read(etc)?.conflicts(slot.uids(), slot.gids());
            if !force && !conflicts.is_empty() {
                return Err(Error::Invalid(format!(
                    "--map-base {base} maps the container onto host ids in use, {}: leave \
                     --map-base out for a free slot of the pool, pick a free range, or add \
                     --map-base-force",
                    shorten(&conflicts)
                )));
            }
            (slot.map(), Origin::Base { force: *force })
        }
        Wanted::Kept { slot, dir } => (slot.map(), Origin::Kept(dir.clone())),
    };
    Ok(UserIds { map, origin, claims })
}

/// The first few of `items`, and how many more.
fn shorten(items: &[String]) -> String {
    let shown = items.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
    match items.len() {
        0..=3 => shown,
        n => format!("{shown} and {} more", n - 3),
    }
}

impl UserIds {
    /// Takes the ids for the run (nothing for a rootless one): the first slot of the pool
    /// that no other container holds, or exactly the `--map-base` or kept slot. The claim
    /// holds until it is dropped (or, once [`Claim::keep_for`] a directory, for as long as
    /// that directory exists).
    pub fn claim(&self) -> Result<Option<Claim>> {
        let slot = Slot { uid: self.map.uid.outside, gid: self.map.gid.outside };
        let claim = match &self.origin {
            Origin::Rootless => return Ok(None),
            Origin::Free(pool) => self.claims.claim_free(pool)?,
            Origin::Base { .. } => self.claims.claim_exact(slot, None)?,
            Origin::Kept(dir) => self.claims.claim_exact(slot, Some(dir))?,
        };
        Ok(Some(claim))
    }

    /// Where the ids come from, for the plan (`--dry-run`): one or two lines, no `#`.
    pub fn describe(&self) -> Vec<String> {
        let (uid, gid) = (self.map.uid, self.map.gid);
        if let Origin::Rootless = self.origin {
            return vec![format!(
                "user namespace: 0 inside is host uid {}, gid {} (rootless: a process may map \
                 only its own ids)",
                uid.outside, gid.outside
            )];
        }
        let slot = Slot { uid: uid.outside, gid: gid.outside };
        let inside = Span { start: 0, count: uid.count };
        let ids = format!("user namespace: {inside} inside are host {slot}");
        let claims = self.claims.dir.display();
        match &self.origin {
            Origin::Free(pool) => vec![
                format!("{ids}, the first slot of {pool}"),
                format!("a run claims the first slot no other container holds, in {claims}"),
            ],
            Origin::Base { force: false } => vec![format!("{ids} (--map-base)")],
            Origin::Base { force: true } => {
                vec![format!("{ids} (--map-base, --map-base-force: not checked against /etc)")]
            }
            Origin::Kept(dir) => {
                vec![format!(
                    "{ids}, which own the files of {} (claimed in {claims})",
                    dir.display()
                )]
            }
            Origin::Rootless => Vec::new(),
        }
    }
}

/// Who holds a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// A live runtime: it holds the claim's `flock`.
    Runtime,
    /// A container whose directory still exists.
    Container(PathBuf),
    /// Nobody: the claim is stale (or there is none).
    Nobody,
}

/// The claims directory: one file per claimed slot, named by its first uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    dir: PathBuf,
}

/// The directory a claim is kept for, if that directory still exists. A claim file says, one
/// `key value` per line, `gid N` and `pid N` (the slot's first gid and the runtime that claimed
/// it, for a reader) and, once kept, `dir PATH`, the only line isolab reads back.
fn live_dir(text: &str) -> Option<PathBuf> {
    let dir = text.lines().rev().find_map(|line| line.strip_prefix("dir "))?;
    Some(PathBuf::from(dir)).filter(|dir| !dir.as_os_str().is_empty() && dir.is_dir())
}

/// How many claim files just below the first slot without one [`Claims::claim_free`] looks
/// into for a stale claim to take over.
const PROBES: usize = 4;

/// Attempts at one claim file before giving up on it: another runtime may be between
/// creating it and locking it, or between unlinking it and closing it.
const ATTEMPTS: u32 = 5;

/// The outcome of trying one slot.
enum Take {
    Taken(Claim),
    Held(Holder),
}

impl Claims {
    /// The claims in `dir`.
    pub fn at(dir: impl Into<PathBuf>) -> Claims {
        Claims { dir: dir.into() }
    }

    /// The host's claims ([`claims_dir`]).
    pub fn host() -> Claims {
        Claims::at(claims_dir())
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, uid: u32) -> PathBuf {
        self.dir.join(uid.to_string())
    }

    /// The first uids of every claim file there is, live or stale (no directory: none).
    pub fn list(&self) -> Result<BTreeSet<u32>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
            Err(error) => return Err(Error::io("opendir", &self.dir, &error)),
        };
        let mut uids = BTreeSet::new();
        for entry in entries {
            let entry = entry.map_err(|error| Error::io("readdir", &self.dir, &error))?;
            if let Some(uid) = entry.file_name().to_str().and_then(|name| name.parse().ok()) {
                uids.insert(uid);
            }
        }
        Ok(uids)
    }

    /// Who holds the claim of the slot from `uid`? Only looks: a shared lock, taken and let go
    /// at once on a file opened read-only.
    pub fn holder(&self, uid: u32) -> Result<Holder> {
        let path = self.path(uid);
        let file = match open_claim(&path, false) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Holder::Nobody),
            Err(error) => return Err(claim_error("open", &path, &error)),
        };
        let mut file = match Flock::lock(file, FlockArg::LockSharedNonblock) {
            Ok(locked) => locked,
            Err((_, Errno::EWOULDBLOCK)) => return Ok(Holder::Runtime),
            Err((_, errno)) => return Err(Error::sys("flock", path.display(), errno)),
        };
        Ok(live_dir(&read_text(&mut file, &path)?).map_or(Holder::Nobody, Holder::Container))
    }

    /// Is a slot overlapping `slot`'s uids held, by a claim file not named `slot.uid`? Only
    /// claims of exact slots (`--map-base`, a kept slot) can overlap one another partly.
    /// Claims are compared by their uids: a slot's gids follow from them (the same numbers in
    /// isolab's pool and for `--map-base`; the n-th gid slot with the n-th uid slot in root's
    /// own ranges).
    fn overlap_held(&self, names: &BTreeSet<u32>, slot: Slot) -> Result<Option<(u32, Holder)>> {
        let low = slot.uid.saturating_sub(SLOT_SIZE - 1);
        let high = slot.uid.saturating_add(SLOT_SIZE - 1);
        for &uid in names.range(low..=high).filter(|&&uid| uid != slot.uid) {
            match self.holder(uid)? {
                Holder::Nobody => {}
                held => return Ok(Some((uid, held))),
            }
        }
        Ok(None)
    }

    // ANCHOR: claim_free
    /// Claims a slot of `pool` that no live claim holds: the first slot without a claim file,
    /// or, lower, one of the [`PROBES`] claims just below it whose claim is stale (taken over
    /// in place), the lowest such first.
    ///
    /// Why only those: every stopped container keeps its claim, and telling a stale claim from
    /// a live one costs an `open`, a `flock` and a `stat` of the container it names. Looking
    /// into all of them made a start with 1,000 stopped containers in the store some 15 ms
    /// slower than with none. Kept claims of old containers pile up at the bottom of the pool;
    /// the stale file of a runtime killed lately is among the last claims made, next to the
    /// first gap. A stale claim further down is taken over when the pool has no slot without a
    /// file left (the second pass below), or removed by `rm` of its container.
    pub fn claim_free(&self, pool: &Pool) -> Result<Claim> {
        self.make_dir()?;
        let names = self.list()?;
        let mut below: VecDeque<Slot> = VecDeque::with_capacity(PROBES);
        for slot in pool.slots() {
            if names.contains(&slot.uid) {
                if below.len() == PROBES {
                    below.pop_front();
                }
                below.push_back(slot);
                continue;
            }
            let candidates: Vec<Slot> = below.drain(..).chain(std::iter::once(slot)).collect();
            if let Some(claim) = self.first_taken(&names, candidates)? {
                return Ok(claim);
            }
        }
        // No slot without a file (or each was taken under us): look into every claim.
        if let Some(claim) = self.first_taken(&names, pool.slots())? {
            return Ok(claim);
        }
        Err(Error::Invalid(format!(
            "no free slot of {SLOT_SIZE} ids left in {pool}: every one is claimed in {} by a \
             running container or a stopped stage 4 one; remove stopped containers \
             (`stage4-overlay rm`) or give root a range in /etc/subuid and /etc/subgid",
            self.dir.display()
        )))
    }
    // ANCHOR_END: claim_free

    /// The claim of the first of `slots` that no live claim holds, if one is free.
    fn first_taken(
        &self,
        names: &BTreeSet<u32>,
        slots: impl IntoIterator<Item = Slot>,
    ) -> Result<Option<Claim>> {
        for slot in slots {
            if self.overlap_held(names, slot)?.is_some() {
                continue;
            }
            if let Take::Taken(claim) = self.take(slot, None)? {
                return Ok(Some(claim));
            }
        }
        Ok(None)
    }

    /// Claims exactly `slot` (`--map-base`, or the slot of the stopped container at
    /// `kept_for`, whose own kept claim does not count as another's).
    pub fn claim_exact(&self, slot: Slot, kept_for: Option<&Path>) -> Result<Claim> {
        self.make_dir()?;
        let names = self.list()?;
        let held = match self.overlap_held(&names, slot)? {
            Some(held) => held,
            None => {
                // A reader that looks ([`Claims::holder`]) holds the lock for an instant:
                // ask again before calling the slot taken.
                let mut last = Holder::Runtime;
                for _ in 0..ATTEMPTS {
                    match self.take(slot, kept_for)? {
                        Take::Taken(claim) => return Ok(claim),
                        Take::Held(Holder::Runtime) => {
                            std::thread::sleep(Duration::from_millis(10))
                        }
                        Take::Held(holder) => {
                            last = holder;
                            break;
                        }
                    }
                }
                (slot.uid, last)
            }
        };
        let (uid, holder) = held;
        let path = self.path(uid);
        Err(Error::Invalid(match holder {
            Holder::Runtime => format!(
                "host {} are taken: a running isolab runtime holds {}, its container runs on \
                 them",
                slot.words(),
                path.display()
            ),
            Holder::Container(dir) => format!(
                "host {} are taken: {} keeps them for the container {}, whose files \
                 they own",
                slot.words(),
                path.display(),
                dir.display()
            ),
            Holder::Nobody => {
                format!("host {} could not be claimed in {}", slot.words(), path.display())
            }
        }))
    }

    /// Removes the claim of the slot from `uid` if nobody holds it any more (its container
    /// was removed): `rm` calls this, so that no claim file outlives its container. Under the
    /// claim's lock, as [`Claim`]'s drop does, so a runtime taking it over at the same moment
    /// sees the file gone and makes its own. Returns whether a file was removed.
    pub fn release_stale(&self, uid: u32) -> Result<bool> {
        let path = self.path(uid);
        let file = match open_claim(&path, true) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(error) => return Err(claim_error("open", &path, &error)),
        };
        let mut locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((_, Errno::EWOULDBLOCK)) => return Ok(false),
            Err((_, errno)) => return Err(Error::sys("flock", path.display(), errno)),
        };
        let same = fs::metadata(&path).ok().map(|meta| (meta.dev(), meta.ino()));
        let ours = locked.metadata().ok().map(|meta| (meta.dev(), meta.ino()));
        if same.is_none() || same != ours || live_dir(&read_text(&mut locked, &path)?).is_some() {
            return Ok(false);
        }
        fs::remove_file(&path).map_err(|error| Error::io("unlink", &path, &error))?;
        Ok(true)
    }

    /// Removes every claim nobody holds any more ([`Claims::release_stale`] for each file):
    /// the full `gc` calls this, for claims whose container went without `rm` (a dead
    /// runtime's, removed by the journal's gc, or a store deleted by hand). Returns how many.
    /// An entry that cannot be looked into (not a regular file, not ours to open) is left
    /// alone and the sweep goes on.
    pub fn release_all_stale(&self) -> Result<usize> {
        let mut released = 0;
        for uid in self.list()? {
            if let Ok(true) = self.release_stale(uid) {
                released += 1;
            }
        }
        Ok(released)
    }

    /// Removes the claim kept for `dir`, a container directory that is gone: for a container
    /// removed before its config (which names its ids) was written. Reads every claim, so only
    /// the clean-up after a dead runtime calls it. Returns whether a file was removed.
    pub fn release_stale_for(&self, dir: &Path) -> Result<bool> {
        let wanted = format!("dir {}", dir.display());
        for uid in self.list()? {
            let Ok(mut file) = open_claim(&self.path(uid), false) else { continue };
            let text = read_text(&mut file, &self.path(uid)).unwrap_or_default();
            if text.lines().any(|line| line == wanted) {
                return self.release_stale(uid);
            }
        }
        Ok(false)
    }

    /// How many slots of `pool` no live claim holds (for `isolab doctor`).
    pub fn free_slots(&self, pool: &Pool) -> Result<usize> {
        let names = self.list()?;
        let mut free = 0;
        for slot in pool.slots() {
            let exact = match names.contains(&slot.uid) {
                true => self.holder(slot.uid)?,
                false => Holder::Nobody,
            };
            if exact == Holder::Nobody && self.overlap_held(&names, slot)?.is_none() {
                free += 1;
            }
        }
        Ok(free)
    }

    /// Makes the directory, 0700: claims are root's business (`man 2 mkdir`; the parents get
    /// the usual 0755, since `/var/lib/isolab` is also the store, which a container's root must
    /// be able to walk through).
    fn make_dir(&self) -> Result<()> {
        if self.dir.is_dir() {
            return Ok(());
        }
        let hint = |error: Error| {
            error.hint(format!(
                "the claims of user namespace ids live there; set {CLAIMS_DIR_VAR} to a directory \
                 root may write"
            ))
        };
        if let Some(parent) = self.dir.parent() {
            fs::create_dir_all(parent).map_err(|error| hint(Error::io("mkdir", parent, &error)))?;
        }
        match fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            Err(error) if error.kind() != io::ErrorKind::AlreadyExists => {
                Err(hint(Error::io("mkdir", &self.dir, &error)))
            }
            _ => Ok(()),
        }
    }

    /// Tries to take the claim of `slot`: creates its file (`O_EXCL`: only one runtime can),
    /// or takes over a stale one; either way under an exclusive `flock` kept by the claim.
    fn take(&self, slot: Slot, kept_for: Option<&Path>) -> Result<Take> {
        let path = self.path(slot.uid);
        for _ in 0..ATTEMPTS {
            let created =
                OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path);
            let (file, fresh) = match created {
                Ok(file) => (file, true),
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                    match open_claim(&path, true) {
                        Ok(file) => (file, false),
                        // Unlinked by its holder since: try to create it again.
                        Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                        Err(error) => return Err(claim_error("open", &path, &error)),
                    }
                }
                Err(error) => return Err(Error::io("open", &path, &error)),
            };
            let mut locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(locked) => locked,
                // A live runtime holds it; or, for a file we just made, another runtime took
                // it over before we locked it (empty and unlocked, it looked stale): theirs.
                Err((_, Errno::EWOULDBLOCK)) => return Ok(Take::Held(Holder::Runtime)),
                Err((_, errno)) => return Err(Error::sys("flock", path.display(), errno)),
            };
            // Locked; but its holder may have unlinked it between our open and our lock (a
            // claim dropped): then we hold a lock on a file no one else will ever open.
            let same = fs::metadata(&path).ok().map(|meta| (meta.dev(), meta.ino()));
            let ours = locked.metadata().ok().map(|meta| (meta.dev(), meta.ino()));
            if same.is_none() || same != ours {
                continue;
            }
            if !fresh {
                if let Some(dir) = live_dir(&read_text(&mut locked, &path)?) {
                    if Some(dir.as_path()) != kept_for {
                        return Ok(Take::Held(Holder::Container(dir)));
                    }
                }
            }
            let mut claim = Claim { file: locked, path, slot, kept_for: None };
            claim.write(kept_for)?;
            return Ok(Take::Taken(claim));
        }
        Ok(Take::Held(Holder::Runtime))
    }
}

/// Opens an existing claim file, never blocking (`O_NONBLOCK`: a FIFO planted under a claim's
/// name would make a read wait for a writer forever): a regular file only, else `EINVAL`.
fn open_claim(path: &Path, write: bool) -> io::Result<File> {
    let file =
        OpenOptions::new().read(true).write(write).custom_flags(libc::O_NONBLOCK).open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(file)
}

/// An error opening a claim file; one that is not a regular file is named as such.
fn claim_error(call: &'static str, path: &Path, error: &io::Error) -> Error {
    let named = Error::io(call, path, error);
    match error.raw_os_error() {
        Some(libc::EINVAL) => named
            .hint("not a regular file: isolab's claims are regular files; remove what is there"),
        _ => named,
    }
}

fn read_text(file: &mut File, path: &Path) -> Result<String> {
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(|error| Error::io("read", path, &error))?;
    Ok(text)
}

/// A claimed slot: ours while this lives (its file's `flock` is held); if kept for a
/// container directory ([`Claim::keep_for`]), for as long as that directory exists too.
#[derive(Debug)]
pub struct Claim {
    file: Flock<File>,
    path: PathBuf,
    slot: Slot,
    kept_for: Option<PathBuf>,
}

impl Claim {
    /// The claimed ids.
    pub fn slot(&self) -> Slot {
        self.slot
    }

    /// The claim file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stage 4: keeps the claim for the container at `dir` after this process ends, since the
    /// container's files on the host (its upper) are owned by these ids. It lapses when `dir`
    /// is removed (`rm`, `--rm`), and the next allocation may take the slot.
    pub fn keep_for(&mut self, dir: &Path) -> Result<()> {
        self.write(Some(dir))
    }

    /// Rewrites the file: `gid`, `pid` and, kept, `dir`. We hold the lock, so nobody reads it
    /// half-written: a reader that looks takes the lock first.
    ///
    /// Written over in place, then cut to its length, never truncated to nothing first: on
    /// ext4 a file truncated to zero and written again is sent to the disk when it is closed
    /// (`auto_da_alloc`, ext4(5), for editors that rewrite files that way), and a `--rm`
    /// container's claim, removed a moment later, would wait for that write.
    fn write(&mut self, dir: Option<&Path>) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let mut text = format!("gid {}\npid {}\n", self.slot.gid, std::process::id());
        if let Some(dir) = dir {
            text.push_str(&format!("dir {}\n", dir.display()));
        }
        let file: &File = &self.file;
        file.write_all_at(text.as_bytes(), 0)
            .and_then(|()| file.set_len(text.len() as u64))
            .map_err(|error| Error::io("write", &self.path, &error))?;
        self.kept_for = dir.map(Path::to_path_buf);
        Ok(())
    }
}

impl Drop for Claim {
    /// Unless kept for a directory that still exists, the file goes; unlinked while we hold
    /// the lock, so that a runtime that opened it before can tell (its inode is gone from the
    /// directory) and creates a new one instead. The lock goes with the file descriptor.
    fn drop(&mut self) {
        if !self.kept_for.as_deref().is_some_and(Path::is_dir) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
                          daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
                          alice:x:1000:1000::/home/alice:/bin/bash\n\
                          nobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\ndaemon:x:1:\nalice:x:1000:\nnogroup:x:65534:\n";

    fn span(start: u32, count: u32) -> Span {
        Span { start, count }
    }

    #[test]
    fn spans_overlap_and_print_as_ranges() {
        assert!(span(10, 10).overlaps(span(19, 1)) && !span(10, 10).overlaps(span(20, 5)));
        assert!(!span(10, 0).overlaps(span(10, 5)));
        assert!(span(u32::MAX - 1, 2).overlaps(span(u32::MAX, 1)));
        assert_eq!(span(100000, 65536).to_string(), "100000-165535");
        assert_eq!(span(1000, 1).to_string(), "1000");
        assert_eq!(POOL.to_string(), "1000000000-1999999999");
    }

    #[test]
    fn subordinate_files_are_parsed_by_name_or_uid_skipping_junk() {
        let text = "alice:100000:65536\n# a comment\n\n0:300000:65536\nbad line\nbob:1:x\n";
        let parsed = parse_subordinate(text);
        assert_eq!(
            parsed,
            [
                Subordinate { owner: "alice".into(), ids: span(100000, 65536) },
                Subordinate { owner: "0".into(), ids: span(300000, 65536) },
            ]
        );
        assert!(!parsed[0].is_root() && parsed[1].is_root());
    }

    #[test]
    fn users_and_groups_come_with_their_names() {
        let host = HostIds::parse(PASSWD, GROUP, "", "");
        assert_eq!(host.users[1], InUse { id: 1, who: "daemon in /etc/passwd".into() });
        assert!(host.groups.iter().any(|group| group.id == 1000));
        // A primary gid not in /etc/group counts too.
        let host = HostIds::parse("web:x:998:4242::/:/bin/false\n", "", "", "");
        assert_eq!(host.groups[0].id, 4242);
        assert_eq!(host.groups[0].who, "primary group of web in /etc/passwd");
    }

    #[test]
    fn conflicts_name_users_groups_and_other_users_ranges_but_not_roots() {
        let host = HostIds::parse(PASSWD, GROUP, "alice:100000:65536\nroot:200000:65536\n", "");
        let low = Slot { uid: 1, gid: 1 };
        let found = host.conflicts(low.uids(), low.gids());
        assert!(found.contains(&"uid 1 (daemon in /etc/passwd)".to_string()), "{found:?}");
        assert!(found.contains(&"gid 65534 (nogroup in /etc/group)".to_string()), "{found:?}");
        let subuid = host.conflicts(span(150000, 65536), span(150000, 65536));
        assert_eq!(subuid, ["100000-165535 (alice's range in /etc/subuid)"]);
        assert!(host.conflicts(span(200000, 65536), span(200000, 65536)).is_empty());
    }

    #[test]
    fn without_roots_entries_the_pool_is_isolabs_minus_what_is_taken() {
        let host = HostIds::parse(PASSWD, GROUP, "", "");
        let pool = Pool::of(&host);
        assert_eq!(pool.source, Source::Isolab { missing: "/etc/subuid" });
        assert_eq!(pool.first().unwrap(), Slot { uid: 1_000_000_000, gid: 1_000_000_000 });
        // 1e9 / 65536 = 15258.8: whole slots only.
        assert_eq!(pool.slots().count(), 15258);
        let last = pool.slots().last().unwrap();
        assert!(u64::from(last.uid) + u64::from(SLOT_SIZE) <= 2_000_000_000);
        assert_eq!(
            pool.to_string(),
            "isolab's pool 1000000000-1999999999 (root has no /etc/subuid entry)"
        );

        // Another user's range over the first slot, a user in the third, a group in the
        // fourth: those slots go, for uids and gids alike (a slot of our pool is both).
        let passwd = format!("{PASSWD}svc:x:1000140000:100::/:/bin/false\n");
        let group = format!("{GROUP}big:x:1000200000:\n");
        let host = HostIds::parse(&passwd, &group, "alice:1000000000:10\n", "");
        let starts: Vec<u32> = Pool::of(&host).slots().take(3).map(|slot| slot.uid).collect();
        let slot = |n: u32| 1_000_000_000 + n * SLOT_SIZE;
        assert_eq!(starts, [slot(1), slot(4), slot(5)]);
    }

    #[test]
    fn roots_own_ranges_are_the_pool_paired_uid_with_gid() {
        let subuid = "alice:100000:65536\nroot:165536:131072\n";
        let subgid = "root:500000:65536\n0:700000:65536\n";
        let pool = Pool::of(&HostIds::parse(PASSWD, GROUP, subuid, subgid));
        assert_eq!(pool.source, Source::Root);
        let slots: Vec<Slot> = pool.slots().collect();
        assert_eq!(slots, [Slot { uid: 165536, gid: 500000 }, Slot { uid: 231072, gid: 700000 }]);
        assert_eq!(slots[0].to_string(), "uids 165536-231071, gids 500000-565535");
        assert_eq!(
            pool.to_string(),
            "root's range in /etc/subuid (165536-296607) and /etc/subgid (500000-565535, \
             700000-765535)"
        );
        // Root's range in only one file: isolab's pool, and why.
        let pool = Pool::of(&HostIds::parse(PASSWD, GROUP, subuid, ""));
        assert_eq!(pool.source, Source::Isolab { missing: "/etc/subgid" });
        // A range too small for one slot, or at the very top of the id space: no slot.
        let pool = Pool::of(&HostIds::parse("", "", "root:100000:1000\n", "root:0:65536\n"));
        assert!(pool.first().unwrap_err().to_string().contains("no slot of 65536 ids"));
        // The last id, 4294967295, is (uid_t) -1: a slot ends before it.
        let top = |start: u32| format!("root:{start}:65536\n");
        let pool = Pool::of(&HostIds::parse("", "", &top(4294901759), &top(4294901759)));
        assert_eq!(pool.slots().count(), 1);
        let pool = Pool::of(&HostIds::parse("", "", &top(4294901760), &top(4294901760)));
        assert_eq!(pool.slots().count(), 0);
    }

    #[test]
    fn map_base_is_checked_against_the_host_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("passwd"), PASSWD).unwrap();
        fs::write(dir.path().join("group"), GROUP).unwrap();
        fs::write(dir.path().join("subuid"), "alice:100000:65536\n").unwrap();
        let claims = Claims::at(dir.path().join("claims"));
        let root = (Uid::from_raw(0), Gid::from_raw(0));
        let plan_base = |base, force| {
            plan(root.0, root.1, &Wanted::Base { base, force }, dir.path(), claims.clone())
        };
        let error = plan_base(1, false).unwrap_err().to_string();
        assert!(error.starts_with("--map-base 1 maps the container onto host ids in use, uid 1 (daemon in /etc/passwd), uid 1000"), "{error}");
        assert!(error.contains("more: leave --map-base out"), "{error}");
        let error = plan_base(120000, false).unwrap_err().to_string();
        assert!(error.contains("100000-165535 (alice's range in /etc/subuid)"), "{error}");
        assert_eq!(plan_base(1, true).unwrap().map, IdMap::root_to(1, 1));
        assert_eq!(plan_base(200000, false).unwrap().map, IdMap::root_to(200000, 200000));

        // Not root: no --map-base, and the caller's own id.
        let user = (Uid::from_raw(1000), Gid::from_raw(1000));
        let base = Wanted::Base { base: 200000, force: false };
        assert!(plan(user.0, user.1, &base, dir.path(), claims.clone()).is_err());
        let rootless = plan(user.0, user.1, &Wanted::Free, dir.path(), claims.clone()).unwrap();
        assert!(rootless.map.is_rootless() && rootless.claim().unwrap().is_none());

        // The default: the pool's first slot, said so in the plan.
        let free = plan(root.0, root.1, &Wanted::Free, dir.path(), claims).unwrap();
        assert_eq!(free.map, IdMap::root_to(1_000_000_000, 1_000_000_000));
        assert_eq!(
            free.describe()[0],
            "user namespace: 0-65535 inside are host 1000000000-1000065535, the first slot of \
             isolab's pool 1000000000-1999999999 (root has no /etc/subuid entry)"
        );
    }

    fn pool() -> Pool {
        Pool::of(&HostIds::parse(PASSWD, GROUP, "", ""))
    }

    fn slot(n: u32) -> Slot {
        let uid = 1_000_000_000 + n * SLOT_SIZE;
        Slot { uid, gid: uid }
    }

    #[test]
    fn two_claims_differ_and_a_dropped_one_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let claims = Claims::at(dir.path().join("userns"));
        let first = claims.claim_free(&pool()).unwrap();
        let second = claims.claim_free(&pool()).unwrap();
        assert_eq!((first.slot(), second.slot()), (slot(0), slot(1)));
        let mode = fs::metadata(claims.dir()).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert_eq!(
            fs::read_to_string(first.path()).unwrap().lines().next(),
            Some("gid 1000000000")
        );
        assert_eq!(claims.holder(slot(0).uid).unwrap(), Holder::Runtime);
        drop(first);
        assert!(!dir.path().join("userns/1000000000").exists(), "a dropped claim's file goes");
        assert_eq!(claims.holder(slot(0).uid).unwrap(), Holder::Nobody);
        assert_eq!(claims.claim_free(&pool()).unwrap().slot(), slot(0));
        drop(second);
    }

    #[test]
    fn a_stale_claim_file_is_taken_over() {
        // A runtime killed with SIGKILL leaves its file; its lock went with it.
        let dir = tempfile::tempdir().unwrap();
        let claims = Claims::at(dir.path());
        fs::write(dir.path().join("1000000000"), "gid 1000000000\npid 1\n").unwrap();
        fs::write(dir.path().join("1000065536"), "gid 1000065536\ndir /nonexistent/c1\n").unwrap();
        assert_eq!(claims.free_slots(&pool()).unwrap(), 15258);
        let claim = claims.claim_free(&pool()).unwrap();
        assert_eq!(claim.slot(), slot(0));
        assert!(fs::read_to_string(claim.path())
            .unwrap()
            .contains(&format!("pid {}", std::process::id())));
        assert_eq!(claims.claim_free(&pool()).unwrap().slot(), slot(1));
    }

    #[test]
    fn the_full_gc_removes_only_the_claims_nobody_holds() {
        let dir = tempfile::tempdir().unwrap();
        let (claims_dir, container) = (dir.path().join("userns"), dir.path().join("c1"));
        fs::create_dir_all(&claims_dir).unwrap();
        fs::create_dir(&container).unwrap();
        let claims = Claims::at(&claims_dir);
        assert_eq!(Claims::at(dir.path().join("none")).release_all_stale().unwrap(), 0);
        // Held by a live runtime (us), kept for a directory that exists, and two stale ones: a
        // killed runtime's and one kept for a directory that is gone. The notes file stays.
        let held = claims.claim_free(&pool()).unwrap();
        let uid = |n: u32| slot(n).uid.to_string();
        let kept = format!("gid {}\ndir {}\n", slot(1).gid, container.display());
        fs::write(claims_dir.join(uid(1)), kept).unwrap();
        fs::write(claims_dir.join(uid(2)), "gid 1000131072\npid 1\n").unwrap();
        fs::write(claims_dir.join(uid(3)), "gid 1000196608\ndir /nonexistent/c2\n").unwrap();
        fs::write(claims_dir.join("idmapped-mounts"), "").unwrap();
        // Entries that are no claim files, lower than the stale ones: a directory and a FIFO
        // (a read of which would wait for a writer forever) are passed over, not fatal.
        fs::create_dir(claims_dir.join("999999998")).unwrap();
        nix::unistd::mkfifo(&claims_dir.join("999999999"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert_eq!(claims.release_all_stale().unwrap(), 2);
        let error = claims.holder(999_999_999).unwrap_err().to_string();
        assert!(error.contains("not a regular file"), "{error}");
        fs::remove_dir(claims_dir.join("999999998")).unwrap();
        fs::remove_file(claims_dir.join("999999999")).unwrap();
        let left: BTreeSet<u32> = claims.list().unwrap();
        assert_eq!(left, BTreeSet::from([slot(0).uid, slot(1).uid]));
        assert!(claims_dir.join("idmapped-mounts").exists());
        drop(held);
        assert_eq!(claims.release_all_stale().unwrap(), 0, "a dropped claim removes its file");
        assert_eq!(claims.list().unwrap(), BTreeSet::from([slot(1).uid]));
        // A container removed before its config named its ids: found by its directory, once
        // the directory is gone (not before: then it is live).
        assert!(!claims.release_stale_for(&container).unwrap());
        fs::remove_dir(&container).unwrap();
        assert!(!claims.release_stale_for(&dir.path().join("c2")).unwrap());
        assert!(claims.release_stale_for(&container).unwrap());
        assert!(claims.list().unwrap().is_empty());
    }

    #[test]
    fn a_start_looks_into_a_few_claims_only_and_into_all_when_the_pool_is_full() {
        // A stale claim at the bottom, then ten kept for containers that exist: the start
        // takes the first slot without a file, not the stale one, which is too far down to be
        // looked into (every claim looked into costs an open, a flock and a stat).
        let dir = tempfile::tempdir().unwrap();
        let (claims_dir, container) = (dir.path().join("userns"), dir.path().join("c1"));
        fs::create_dir_all(&claims_dir).unwrap();
        fs::create_dir(&container).unwrap();
        let claims = Claims::at(&claims_dir);
        let uid = |n: u32| slot(n).uid.to_string();
        fs::write(claims_dir.join(uid(0)), "gid 1000000000\npid 1\n").unwrap();
        for n in 1..=10 {
            let text = format!("gid {}\ndir {}\n", slot(n).gid, container.display());
            fs::write(claims_dir.join(uid(n)), text).unwrap();
        }
        assert_eq!(claims.claim_free(&pool()).unwrap().slot(), slot(11));
        // A stale claim among the last few below the gap is taken over in place.
        fs::write(claims_dir.join(uid(8)), "gid 1000524288\npid 1\n").unwrap();
        assert_eq!(claims.claim_free(&pool()).unwrap().slot(), slot(8));
        // A pool whose every slot has a file: the stale one at the bottom is found after all.
        let three = format!("root:{}:{}\n", slot(0).uid, 3 * SLOT_SIZE);
        let small = Pool::of(&HostIds::parse(PASSWD, GROUP, &three, &three));
        fs::remove_file(claims_dir.join(uid(0))).unwrap();
        fs::write(claims_dir.join(uid(0)), "gid 1000000000\npid 1\n").unwrap();
        assert_eq!(small.slots().count(), 3);
        assert_eq!(claims.claim_free(&small).unwrap().slot(), slot(0));
    }

    #[test]
    fn a_claim_kept_for_an_existing_dir_holds_and_one_for_a_deleted_dir_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let claims = Claims::at(dir.path().join("userns"));
        let container = dir.path().join("containers/c1");
        fs::create_dir_all(&container).unwrap();
        let mut kept = claims.claim_free(&pool()).unwrap();
        kept.keep_for(&container).unwrap();
        drop(kept);
        // The runtime is gone; the directory is not.
        assert_eq!(claims.holder(slot(0).uid).unwrap(), Holder::Container(container.clone()));
        assert_eq!(claims.free_slots(&pool()).unwrap(), 15257);
        let other = claims.claim_free(&pool()).unwrap();
        assert_eq!(other.slot(), slot(1));

        // `start` of that container: its own slot again, and nobody else's.
        let again = claims.claim_exact(slot(0), Some(&container)).unwrap();
        let error = claims.claim_exact(slot(0), Some(&container)).unwrap_err().to_string();
        assert!(error.contains("a running isolab runtime holds"), "{error}");
        drop(again);
        let error = claims.claim_exact(slot(0), None).unwrap_err().to_string();
        assert!(error.contains("keeps them for the container"), "{error}");
        // A --map-base range over part of a held slot.
        let within = Slot { uid: 1_000_000_100, gid: 1_000_000_100 };
        let error = claims.claim_exact(within, None).unwrap_err();
        assert!(error.to_string().contains("host ids 1000000100-1000065635"), "{error}");

        // `rm`: the directory goes, the slot is free again.
        fs::remove_dir(&container).unwrap();
        assert_eq!(claims.holder(slot(0).uid).unwrap(), Holder::Nobody);
        assert_eq!(claims.claim_free(&pool()).unwrap().slot(), slot(0));
        drop(other);
    }

    #[test]
    fn runtimes_claiming_at_once_get_different_slots() {
        let dir = tempfile::tempdir().unwrap();
        let claims = Claims::at(dir.path().join("userns"));
        let held: Vec<Claim> = std::thread::scope(|scope| {
            let threads: Vec<_> =
                (0..8).map(|_| scope.spawn(|| claims.claim_free(&pool()).unwrap())).collect();
            threads.into_iter().map(|thread| thread.join().unwrap()).collect()
        });
        let slots: BTreeSet<Slot> = held.iter().map(Claim::slot).collect();
        assert_eq!(slots.len(), 8, "{slots:?}");
    }

    #[test]
    fn exact_claims_block_the_pool_slots_they_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let claims = Claims::at(dir.path());
        let base = claims.claim_exact(Slot { uid: 1_000_000_100, gid: 1_000_000_100 }, None);
        let base = base.unwrap();
        // Slots 0 and 1 both overlap 1000000100-1000065635.
        assert_eq!(claims.claim_free(&pool()).unwrap().slot(), slot(2));
        drop(base);
    }
}
