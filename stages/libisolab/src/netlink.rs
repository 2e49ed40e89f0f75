//! A small, synchronous rtnetlink client: send one request, read its acknowledgement.
//!
//! `ip link add …` does nothing magic: it sends a message over a `NETLINK_ROUTE` socket
//! (`man 7 netlink`, `man 7 rtnetlink`) and the kernel answers with an ack or an errno. The
//! messages are built and parsed by the `netlink-packet-route` crate; this module only sends
//! them and waits for the answer, one at a time, so there is no async runtime and no thread.

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::errno::Errno;

use crate::error::{Error, Result};

/// A `NETLINK_ROUTE` socket in the calling process's network namespace.
pub struct Netlink {
    socket: Socket,
    sequence: u32,
}

/// What a request asks of the kernel beyond "do it and tell me".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Create something new, failing if it exists (`NLM_F_CREATE|NLM_F_EXCL`).
    Create,
    /// Change or delete something that exists.
    Change,
}

impl Netlink {
    /// Opens the socket; it talks to the network namespace we are in *now*.
    pub fn open() -> Result<Netlink> {
        let mut socket =
            Socket::new(NETLINK_ROUTE).map_err(|e| Error::io("socket", "NETLINK_ROUTE", &e))?;
        socket.bind_auto().map_err(|e| Error::io("bind", "NETLINK_ROUTE", &e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| Error::io("connect", "NETLINK_ROUTE", &e))?;
        Ok(Netlink { socket, sequence: 0 })
    }

    // ANCHOR: request
    /// Sends `message` and waits for the kernel's acknowledgement; `what` names it in errors.
    pub fn request(
        &mut self,
        message: RouteNetlinkMessage,
        intent: Intent,
        what: &str,
    ) -> Result<()> {
        self.sequence += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK;
        if intent == Intent::Create {
            header.flags |= NLM_F_CREATE | NLM_F_EXCL;
        }
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut buffer = vec![0; packet.buffer_len()];
        packet.serialize(&mut buffer);
        self.socket.send(&buffer, 0).map_err(|e| Error::io("sendmsg", what, &e))?;

        // The answer is an NLMSG_ERROR message: error code 0 is the ack, otherwise -errno.
        loop {
            let (bytes, _) =
                self.socket.recv_from_full().map_err(|e| Error::io("recvmsg", what, &e))?;
            let mut offset = 0;
            while offset < bytes.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[offset..])
                    .map_err(|_| Error::sys("recvmsg", what, Errno::EBADMSG))?;
                offset += reply.header.length as usize;
                if reply.header.sequence_number != self.sequence {
                    continue;
                }
                if let NetlinkPayload::Error(error) = reply.payload {
                    return match error.code {
                        None => Ok(()),
                        Some(code) => {
                            Err(Error::sys("netlink", what, Errno::from_raw(-code.get())))
                        }
                    };
                }
                if reply.header.length == 0 {
                    break;
                }
            }
        }
    }
    // ANCHOR_END: request
}
