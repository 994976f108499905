//! The three rtnetlink requests PID 1 needs at boot (link up, IPv4 address,
//! default route), built by hand on a raw `NETLINK_ROUTE` socket.
//!
//! The datapath crate's `route` module does the same on
//! `netlink-packet-route`, whose generic parsers of every link, address and
//! route attribute cost routerd ~300 KiB of its 4 MB budget; boot only needs
//! to send three fixed messages and read the kernel's acknowledgement.

use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use thiserror::Error;

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
    #[error("netlink: malformed answer")]
    Malformed,
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

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;
const IFF_UP: u32 = 0x1;

/// A `NETLINK_ROUTE` socket.
#[derive(Debug)]
pub struct Rtnl {
    fd: OwnedFd,
    seq: u32,
}

/// Appends one attribute (type, payload), padded to 4 bytes.
fn attr(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// The message: header, then `body` (family header and attributes).
fn message(ty: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + body.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(body);
    m
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// In a datagram of answers: the acknowledgement of `seq` (`Some(0)` done,
/// `Some(-errno)` refused), `None` if it is not in there.
fn ack_of(mut b: &[u8], seq: u32) -> Result<Option<i32>, RtnlError> {
    while b.len() >= NLMSG_HDRLEN {
        let len = u32_at(b, 0).ok_or(RtnlError::Malformed)? as usize;
        let ty = u16_at(b, 4).ok_or(RtnlError::Malformed)?;
        let s = u32_at(b, 8).ok_or(RtnlError::Malformed)?;
        if len < NLMSG_HDRLEN || len > b.len() {
            return Err(RtnlError::Malformed);
        }
        if ty == NLMSG_ERROR && s == seq {
            let code = u32_at(b, NLMSG_HDRLEN).ok_or(RtnlError::Malformed)? as i32;
            return Ok(Some(code));
        }
        b = &b[len.next_multiple_of(4).min(b.len())..];
    }
    Ok(None)
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

    /// Sends one request and waits for its acknowledgement.
    fn request(&mut self, op: String, ty: u16, flags: u16, body: &[u8]) -> Result<(), RtnlError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let m = message(ty, flags, seq, body);
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
            let got = buf.get(..n as usize).ok_or(RtnlError::Malformed)?;
            match ack_of(got, seq)? {
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
        // struct ifinfomsg: family, pad, type, index, flags, change.
        let mut b = vec![libc::AF_UNSPEC as u8, 0, 0, 0];
        b.extend_from_slice(&index.to_ne_bytes());
        b.extend_from_slice(&(if up { IFF_UP } else { 0 }).to_ne_bytes());
        b.extend_from_slice(&IFF_UP.to_ne_bytes());
        self.request(format!("link {ifname} up"), RTM_NEWLINK, 0, &b)
    }

    /// `ip addr add ADDRESS/PREFIX dev IFNAME` (EEXIST if present).
    pub fn add_address(&mut self, ifname: &str, address: Ipv4Addr, prefix_len: u8) -> Result<(), RtnlError> {
        let index = index_of(ifname)?;
        // struct ifaddrmsg: family, prefixlen, flags, scope, index.
        let mut b = vec![libc::AF_INET as u8, prefix_len, 0, RT_SCOPE_UNIVERSE];
        b.extend_from_slice(&index.to_ne_bytes());
        attr(&mut b, IFA_LOCAL, &address.octets());
        attr(&mut b, IFA_ADDRESS, &address.octets());
        self.request(
            format!("address {address}/{prefix_len} on {ifname}"),
            RTM_NEWADDR,
            NLM_F_CREATE | NLM_F_EXCL,
            &b,
        )
    }

    /// `ip route add default via GATEWAY dev IFNAME` (EEXIST if present).
    pub fn add_default_route(&mut self, gateway: Ipv4Addr, ifname: &str) -> Result<(), RtnlError> {
        let index = index_of(ifname)?;
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol,
        // scope, type, flags.
        let mut b = vec![
            libc::AF_INET as u8,
            0,
            0,
            0,
            RT_TABLE_MAIN,
            RTPROT_BOOT,
            RT_SCOPE_UNIVERSE,
            RTN_UNICAST,
        ];
        b.extend_from_slice(&0u32.to_ne_bytes());
        attr(&mut b, RTA_GATEWAY, &gateway.octets());
        attr(&mut b, RTA_OIF, &index.to_ne_bytes());
        self.request(
            format!("default route via {gateway} dev {ifname}"),
            RTM_NEWROUTE,
            NLM_F_CREATE | NLM_F_EXCL,
            &b,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_laid_out_as_the_kernel_expects() {
        let mut b = vec![2, 24, 0, 0, 7, 0, 0, 0];
        attr(&mut b, IFA_LOCAL, &[192, 168, 1, 1]);
        let m = message(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, 9, &b);
        assert_eq!(m.len(), 16 + 8 + 8);
        assert_eq!(u32_at(&m, 0), Some(32));
        assert_eq!(u16_at(&m, 4), Some(RTM_NEWADDR));
        assert_eq!(u16_at(&m, 6), Some(0x605));
        assert_eq!(u32_at(&m, 8), Some(9));
        assert_eq!(&m[24..], &[8, 0, 2, 0, 192, 168, 1, 1]);
        // Attribute payloads are padded to 4 bytes.
        let mut b = Vec::new();
        attr(&mut b, 1, &[1, 2, 3]);
        assert_eq!(b, [7, 0, 1, 0, 1, 2, 3, 0]);
    }

    #[test]
    fn acks_are_found_by_sequence_number() {
        let ack = |seq: u32, code: i32| {
            let mut m = Vec::new();
            m.extend_from_slice(&36u32.to_ne_bytes());
            m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            m.extend_from_slice(&0u16.to_ne_bytes());
            m.extend_from_slice(&seq.to_ne_bytes());
            m.extend_from_slice(&0u32.to_ne_bytes());
            m.extend_from_slice(&code.to_ne_bytes());
            m.extend_from_slice(&[0; 16]);
            m
        };
        let mut two = ack(3, 0);
        two.extend(ack(4, -17));
        assert_eq!(ack_of(&two, 4).unwrap(), Some(-17));
        assert_eq!(ack_of(&two, 3).unwrap(), Some(0));
        assert_eq!(ack_of(&two, 5).unwrap(), None);
        let mut bad = ack(4, 0);
        bad[0] = 200;
        assert!(matches!(ack_of(&bad, 4), Err(RtnlError::Malformed)));
        assert!(matches!(index_of("no-such-if0"), Err(RtnlError::NoInterface(_))));
    }
}
