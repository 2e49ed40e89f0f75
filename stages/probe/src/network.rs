//! Network isolation: is 127.0.0.1 in here the host's loopback?
//!
//! Network devices, addresses, routes and ports belong to a network namespace
//! (`man 7 network_namespaces`). Without one of its own, a sandboxed process reaches every
//! service the host listens to on 127.0.0.1 — databases, admin consoles — that trust
//! "local" connections. `isolab compare` listens on a random port of the host's 127.0.0.1 and
//! writes the run's token to each connection; the probe connects and reads.

use std::io::{ErrorKind, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use crate::{io_errno, Check, CheckId, Inputs, Status};

/// How long the probe waits to connect, and then for the token.
pub const TIMEOUT: Duration = Duration::from_secs(1);

/// `network`: connect to the host's listener and read the token.
pub fn network(inputs: &Inputs) -> Check {
    let id = CheckId::Network;
    let Some(port) = inputs.port else {
        return Check::not_applicable(id, "no --port given");
    };
    let Some(token) = &inputs.token else {
        return Check::not_applicable(id, "no --token given");
    };
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = match TcpStream::connect_timeout(&address, TIMEOUT) {
        Ok(stream) => stream,
        Err(error) => return connect_failed(address, &error),
    };
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    let mut answer = Vec::new();
    // The listener writes the token and closes; read until then (or the timeout).
    let _ = stream.by_ref().take(256).read_to_end(&mut answer);
    if String::from_utf8_lossy(&answer).contains(token.as_str()) {
        Check::new(
            id,
            Status::Leaks,
            format!("connected to {address} and read this run's token: the host's loopback"),
        )
    } else {
        Check::new(
            id,
            Status::Isolated,
            format!("{address} answered, but not with this run's token: another loopback"),
        )
    }
}

fn connect_failed(address: SocketAddr, error: &std::io::Error) -> Check {
    let id = CheckId::Network;
    let why = match error.kind() {
        // A fresh network namespace has its own loopback, where nothing listens (or which is
        // still down: ENETUNREACH).
        ErrorKind::ConnectionRefused => "nothing listens there",
        ErrorKind::TimedOut | ErrorKind::WouldBlock => "no answer",
        _ if error.raw_os_error() == Some(libc::ENETUNREACH) => "no route: loopback is down",
        _ => {
            return Check::not_applicable(
                id,
                format!("connect {address} failed: {}", io_errno(error)),
            )
        }
    };
    Check::new(
        id,
        Status::Isolated,
        format!("connect {address} failed: {} ({why})", io_errno(error)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    fn inputs(port: u16, token: &str) -> Inputs {
        Inputs { port: Some(port), token: Some(token.into()), ..Inputs::default() }
    }

    #[test]
    fn reading_the_token_means_the_loopback_is_shared() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for token in ["t0k3n\n", "other\n"] {
                let (mut stream, _) = listener.accept().unwrap();
                stream.write_all(token.as_bytes()).unwrap();
            }
        });
        assert_eq!(network(&inputs(port, "t0k3n")).status, Status::Leaks);
        assert_eq!(network(&inputs(port, "t0k3n")).status, Status::Isolated);
        server.join().unwrap();
    }

    #[test]
    fn refused_means_isolated() {
        // Bind and close: the port is (almost certainly) free again and refuses.
        let port =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
        let check = network(&inputs(port, "t"));
        assert_eq!(check.status, Status::Isolated, "{check:?}");
        assert!(check.evidence.contains("ECONNREFUSED"), "{check:?}");
    }
}
