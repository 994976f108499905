//! Pure builders of the three rtnetlink messages boot needs (link up,
//! IPv4 address, default route), as the bytes iproute2 sends, and the
//! parser that finds a request's acknowledgement in the kernel's answer.
//!
//! Hand-laid rather than built on `netlink-packet-route` (what [`crate::route`]
//! uses): its generic parsers of every link, address and route attribute
//! cost routerd ~300 KiB of its 4 MB budget, and boot only sends three
//! fixed messages and reads one acknowledgement each.

use std::net::Ipv4Addr;

/// A malformed answer from the kernel (a length that does not fit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("netlink: malformed answer")]
pub struct Malformed;

pub(crate) const NLMSG_HDRLEN: usize = 16;
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
const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;

/// Appends one attribute (type, payload), padded to 4 bytes.
fn attr(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = data.len().saturating_add(4);
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// The message: header (with `NLM_F_REQUEST | NLM_F_ACK` and port id 0,
/// the kernel fills in ours), then `body` (family header and attributes).
fn message(ty: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN.saturating_add(body.len());
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(body);
    m
}

/// `ip link set dev IFINDEX up` (or `down`): RTM_NEWLINK that changes only
/// IFF_UP.
pub fn set_link_up(seq: u32, ifindex: u32, up: bool) -> Vec<u8> {
    // struct ifinfomsg: family, pad, type, index, flags, change.
    let mut b = vec![AF_UNSPEC, 0, 0, 0];
    b.extend_from_slice(&ifindex.to_ne_bytes());
    b.extend_from_slice(&(if up { IFF_UP } else { 0 }).to_ne_bytes());
    b.extend_from_slice(&IFF_UP.to_ne_bytes());
    message(RTM_NEWLINK, 0, seq, &b)
}

/// `ip addr add ADDRESS/PREFIX dev IFINDEX`: RTM_NEWADDR, refused with
/// EEXIST if the address is there.
pub fn add_address(seq: u32, ifindex: u32, address: Ipv4Addr, prefix_len: u8) -> Vec<u8> {
    // struct ifaddrmsg: family, prefixlen, flags, scope, index.
    let mut b = vec![AF_INET, prefix_len, 0, RT_SCOPE_UNIVERSE];
    b.extend_from_slice(&ifindex.to_ne_bytes());
    attr(&mut b, IFA_LOCAL, &address.octets());
    attr(&mut b, IFA_ADDRESS, &address.octets());
    message(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, seq, &b)
}

/// `ip route add default via GATEWAY dev IFINDEX`: RTM_NEWROUTE in the main
/// table, refused with EEXIST if a default route is there.
pub fn add_default_route(seq: u32, gateway: Ipv4Addr, ifindex: u32) -> Vec<u8> {
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol,
    // scope, type, flags.
    let mut b = vec![
        AF_INET,
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
    attr(&mut b, RTA_OIF, &ifindex.to_ne_bytes());
    message(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, seq, &b)
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at.checked_add(2)?)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

/// In a datagram of answers: the acknowledgement of `seq` (`Some(0)` done,
/// `Some(-errno)` refused), `None` if it is not in there.
pub fn ack_of(mut b: &[u8], seq: u32) -> Result<Option<i32>, Malformed> {
    while b.len() >= NLMSG_HDRLEN {
        let len = u32_at(b, 0).ok_or(Malformed)? as usize;
        let ty = u16_at(b, 4).ok_or(Malformed)?;
        let s = u32_at(b, 8).ok_or(Malformed)?;
        if len < NLMSG_HDRLEN || len > b.len() {
            return Err(Malformed);
        }
        if ty == NLMSG_ERROR && s == seq {
            let code = u32_at(b, NLMSG_HDRLEN).ok_or(Malformed)? as i32;
            return Ok(Some(code));
        }
        // The next message starts 4-byte aligned; past the end: none left.
        b = b.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(None)
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
        assert_eq!(ack_of(&bad, 4), Err(Malformed));
    }
}

#[cfg(test)]
mod golden {
    //! The bytes iproute2 sends for the same operations (captured with
    //! strace's `-e write=3` hex dump of `ip link|addr|route …` in a
    //! throwaway netns where the link has index 3, see testdata/*.hex) must
    //! equal ours. The whole message is compared, header included; the
    //! sequence number and port id vary per run and are zero in both.
    use super::*;

    const IFINDEX: u32 = 3;

    fn golden(text: &str) -> Vec<u8> {
        let hex: String = text.lines().filter(|l| !l.starts_with('#')).collect();
        hex::decode(hex.trim()).unwrap()
    }

    fn assert_same(ours: &[u8], theirs: &[u8]) {
        assert_eq!(hex::encode(ours), hex::encode(theirs), "ours, then iproute2's");
    }

    #[test]
    fn link_up_matches_iproute2() {
        assert_same(
            &set_link_up(0, IFINDEX, true),
            &golden(include_str!("../../testdata/link_set_up.hex")),
        );
    }

    #[test]
    fn link_down_matches_iproute2() {
        assert_same(
            &set_link_up(0, IFINDEX, false),
            &golden(include_str!("../../testdata/link_set_down.hex")),
        );
    }

    #[test]
    fn address_add_matches_iproute2() {
        assert_same(
            &add_address(0, IFINDEX, Ipv4Addr::new(192, 168, 1, 1), 24),
            &golden(include_str!("../../testdata/addr_add.hex")),
        );
    }

    #[test]
    fn default_route_add_matches_iproute2() {
        assert_same(
            &add_default_route(0, Ipv4Addr::new(192, 168, 1, 254), IFINDEX),
            &golden(include_str!("../../testdata/route_add_default.hex")),
        );
    }
}
