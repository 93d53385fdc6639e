//! Fixed ports for test processes that must know each other's addresses before they start
//! (static `--peers`, gossip seeds).
//!
//! Binding port 0 and releasing it is racy: the kernel hands the same port out again as the
//! local end of the next outgoing connection, or as another process's port 0. So ports here come
//! from below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`), where nothing is
//! assigned implicitly, are checked free for both TCP and UDP (gossip uses both), and are never
//! handed out twice by one test process.

use std::collections::HashSet;
use std::net::{TcpListener, UdpSocket};
use std::sync::{Mutex, PoisonError};

use rand::Rng;

/// The lowest port handed out: above the well-known and most registered service ports.
const LOWEST: u16 = 10_000;

/// Ports handed out by this process so far.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback port free for TCP and UDP now, outside the ephemeral range, not handed out before
/// by this process. Panics when none can be found (a test set-up failure).
pub fn free_port() -> u16 {
    let (highest, implicit) = below_ephemeral();
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    let mut rng = rand::rng();
    for _ in 0..10_000 {
        let port = if implicit {
            match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
                Ok(addr) => addr.port(),
                Err(_) => continue,
            }
        } else {
            rng.random_range(LOWEST..highest)
        };
        if !handed_out.contains(&port) && is_free(port) {
            handed_out.insert(port);
            return port;
        }
    }
    panic!("no free loopback port found for a test process");
}

/// Whether `port` can be bound on loopback for both TCP and UDP now.
pub fn is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok() && UdpSocket::bind(("127.0.0.1", port)).is_ok()
}

/// The first port of the ephemeral range, and whether that leaves too little room below it (then
/// ports come from the kernel's port 0 as a fallback).
fn below_ephemeral() -> (u16, bool) {
    let first = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    (first, first < LOWEST + 2_000)
}
