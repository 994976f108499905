//! The three rtnetlink requests routerd needs as PID 1 at boot (link up,
//! IPv4 address, default route): the messages of [`msg`] on a raw
//! `NETLINK_ROUTE` socket, one request at a time.
//!
//! [`crate::route`] does the same and more on `netlink-packet-route`, which
//! routerd cannot afford (see [`msg`]); this is the small path.

pub mod msg;

use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use thiserror::Error;

pub use msg::Malformed;

#[derive(Debug, Error)]
pub enum RtnlError {
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    #[error("no interface named {0:?}")]
    NoInterface(String),
    #[error("{op}: {source}")]
    Kernel {
        op: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Malformed(#[from] Malformed),
}

impl RtnlError {
    /// The kernel's errno, if the kernel refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            RtnlError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// A `NETLINK_ROUTE` socket.
#[derive(Debug)]
pub struct Rtnl {
    fd: OwnedFd,
    seq: u32,
}

fn index_of(ifname: &str) -> Result<u32, RtnlError> {
    let c = CString::new(ifname).map_err(|_| RtnlError::NoInterface(ifname.into()))?;
    // SAFETY: c is a valid NUL-terminated string for the call's duration.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(RtnlError::NoInterface(ifname.into()));
    }
    Ok(i)
}

impl Rtnl {
    pub fn open() -> Result<Rtnl, RtnlError> {
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error().into());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Rtnl { fd, seq: 1 })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends request `m` (built with sequence number `seq`) and waits for
    /// its acknowledgement.
    fn request(&mut self, op: String, seq: u32, m: &[u8]) -> Result<(), RtnlError> {
        // SAFETY: m is a valid buffer of m.len() bytes; the kernel is the
        // default destination of an unconnected netlink socket.
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), m.as_ptr().cast(), m.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error().into());
        }
        let mut buf = vec![0u8; 8192];
        loop {
            // SAFETY: buf is a valid writable buffer of buf.len() bytes.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            let got = buf.get(..n as usize).ok_or(Malformed)?;
            match msg::ack_of(got, seq)? {
                Some(0) => return Ok(()),
                Some(code) => {
                    return Err(RtnlError::Kernel {
                        op,
                        source: io::Error::from_raw_os_error(code.saturating_neg()),
                    })
                }
                None => continue,
            }
        }
    }

    /// `ip link set IFNAME up` (or down).
    pub fn set_up(&mut self, ifname: &str, up: bool) -> Result<(), RtnlError> {
        let index = index_of(ifname)?;
        let seq = self.next_seq();
        self.request(format!("link {ifname} up"), seq, &msg::set_link_up(seq, index, up))
    }

    /// `ip addr add ADDRESS/PREFIX dev IFNAME` (EEXIST if present).
    pub fn add_address(&mut self, ifname: &str, address: Ipv4Addr, prefix_len: u8) -> Result<(), RtnlError> {
        let index = index_of(ifname)?;
        let seq = self.next_seq();
        self.request(
            format!("address {address}/{prefix_len} on {ifname}"),
            seq,
            &msg::add_address(seq, index, address, prefix_len),
        )
    }

    /// `ip route add default via GATEWAY dev IFNAME` (EEXIST if present).
    pub fn add_default_route(&mut self, gateway: Ipv4Addr, ifname: &str) -> Result<(), RtnlError> {
        let index = index_of(ifname)?;
        let seq = self.next_seq();
        self.request(
            format!("default route via {gateway} dev {ifname}"),
            seq,
            &msg::add_default_route(seq, gateway, index),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_interfaces_are_named() {
        assert!(matches!(index_of("no-such-if0"), Err(RtnlError::NoInterface(_))));
    }
}
