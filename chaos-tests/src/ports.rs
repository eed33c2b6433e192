//! Free local ports for a cluster's nodes: bind port 0, note what the OS chose, release it.
//!
//! A port released this way could be taken again before the node binds it; the OS hands out
//! ephemeral ports round-robin-ish, so that is rare, and the harness notices a node that exits
//! at start. Ports already handed out by this process are never handed out twice, so tests
//! running in parallel threads of one test binary do not collide.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::{Mutex, PoisonError};

static HANDED_OUT: Mutex<Option<HashSet<(Protocol, u16)>>> = Mutex::new(None);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// A free 127.0.0.1 port for `protocol` (TCP for HTTP, UDP for QUIC).
///
/// # Panics
/// When the OS cannot bind a port on 127.0.0.1 at all.
pub fn free_port(protocol: Protocol) -> SocketAddr {
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    for _ in 0..64 {
        let addr = match protocol {
            Protocol::Tcp => TcpListener::bind(any).and_then(|l| l.local_addr()),
            Protocol::Udp => UdpSocket::bind(any).and_then(|s| s.local_addr()),
        }
        .unwrap_or_else(|e| panic!("binding a {protocol:?} port on 127.0.0.1: {e}"));
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
        if handed_out
            .get_or_insert_with(HashSet::new)
            .insert((protocol, addr.port()))
        {
            return addr;
        }
    }
    panic!("the OS keeps handing out {protocol:?} ports this process already used")
}
