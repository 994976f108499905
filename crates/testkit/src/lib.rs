//! Test helpers shared by the VM scenarios and the browser tests.
//!
//! [`webdriver`] drives headless Chromium; [`netns`] gives a kernel test its
//! own network namespace (or skips it without root). The rest is the probe
//! protocol.
//!
//! The probe protocol is one line each way, so a test can check exactly who
//! talked to whom through the NAT:
//! - the server answers every connection with `TOKEN <token> PEER <ip:port> LOCAL <ip:port>`
//!   (the addresses as the server sees them) and closes;
//! - the client prints that line followed by ` CLIENT_PEER <ip:port>` (the
//!   address the client believes it talked to).

use std::net::SocketAddr;

pub mod chatter;
pub mod flood;
pub mod fuzz_corpus;
pub mod netns;
pub mod systemd;
pub mod webdriver;

/// The server's answer line for one connection.
pub fn answer_line(token: &str, peer: SocketAddr, local: SocketAddr) -> String {
    format!("TOKEN {token} PEER {peer} LOCAL {local}\n")
}

/// Parses a server answer into (token, peer as seen by the server).
pub fn parse_answer(line: &str) -> Option<(String, SocketAddr)> {
    let mut it = line.split_whitespace();
    if it.next()? != "TOKEN" {
        return None;
    }
    let token = it.next()?.to_string();
    if it.next()? != "PEER" {
        return None;
    }
    let peer = it.next()?.parse().ok()?;
    Some((token, peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_round_trips() {
        let peer: SocketAddr = "172.16.0.100:40000".parse().unwrap();
        let local: SocketAddr = "192.168.1.10:7000".parse().unwrap();
        let line = answer_line("home1-pc0", peer, local);
        assert_eq!(parse_answer(&line), Some(("home1-pc0".to_string(), peer)));
        assert_eq!(parse_answer("garbage"), None);
    }
}
