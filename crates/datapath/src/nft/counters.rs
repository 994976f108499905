//! The traffic counters of the granted hosts: the pure request that dumps
//! the elements of the VPNNAT table's `granted` set (`NFT_MSG_GETSETELEM`
//! with `NLM_F_DUMP`) and the parser of the kernel's answers.
//!
//! Each element of `granted` carries a `counter` (the set declares it, see
//! [`super::ruleset`]) that the filter rules' lookups advance: the packets
//! and bytes through that host's mapping, both ways. Hand-laid like
//! [`super::setelem`] (golden bytes below, captured from `nft` 1.0.6): no
//! generic nf_tables parser goes into routerd's firmware.

use std::net::Ipv4Addr;

// The netlink attribute and field helpers nf_tables' element batches use.
use super::setelem::{attr, nul_terminated, u16_at, u32_at};

pub use super::setelem::Malformed;

const NLMSG_HDRLEN: usize = 16;
/// Header plus `struct nfgenmsg`.
const NFMSG_HDRLEN: usize = NLMSG_HDRLEN + 4;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFPROTO_IPV4: u8 = 2;
/// Attribute type bits (without NLA_F_NESTED / NLA_F_NET_BYTEORDER).
const NLA_TYPE_MASK: u16 = 0x3fff;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
/// One expression of the element (the kernel's answer when the set has one).
const NFTA_SET_ELEM_EXPR: u16 = 7;
/// A list of them (when the set has several).
const NFTA_SET_ELEM_EXPRESSIONS: u16 = 10;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;

/// What the kernel counted for one granted host since its element was
/// added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostCounter {
    /// The host's real (LAN) address: the element's key.
    pub real: Ipv4Addr,
    pub packets: u64,
    pub bytes: u64,
}

/// The dump request for the elements of set `set` in table `table`
/// (family `ip`), numbered `seq`; the attributes in nft's order (set,
/// then table).
pub fn dump_request(table: &str, set: &str, seq: u32) -> Vec<u8> {
    let mut attrs = Vec::with_capacity(32);
    attr(&mut attrs, NFTA_SET_ELEM_LIST_SET, &nul_terminated(set));
    attr(&mut attrs, NFTA_SET_ELEM_LIST_TABLE, &nul_terminated(table));
    let len = NFMSG_HDRLEN.saturating_add(attrs.len());
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_ne_bytes());
    b.extend_from_slice(&(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETSETELEM).to_ne_bytes());
    b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    // struct nfgenmsg: family, version (NFNETLINK_V0), res_id 0.
    b.extend_from_slice(&[NFPROTO_IPV4, 0, 0, 0]);
    b.extend_from_slice(&attrs);
    b
}

/// What one datagram of answers said.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DumpPart {
    /// The elements with a counter (one without, from a table made before
    /// the counters, is left out).
    pub counters: Vec<HostCounter>,
    /// The dump ended (`NLMSG_DONE`).
    pub done: bool,
    /// The kernel refused the dump (errno, positive): e.g. ENOENT when
    /// the table or the set does not exist.
    pub error: Option<i32>,
}

/// The attributes in `b`: (type without flags, payload).
fn attrs(mut b: &[u8]) -> Result<Vec<(u16, &[u8])>, Malformed> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = usize::from(u16_at(b, 0).ok_or(Malformed)?);
        let ty = u16_at(b, 2).ok_or(Malformed)? & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            return Err(Malformed);
        }
        out.push((ty, b.get(4..len).ok_or(Malformed)?));
        b = b.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(out)
}

fn be64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

/// The counter among an element's expressions, as (packets, bytes).
fn counter_of(expr: &[u8]) -> Result<Option<(u64, u64)>, Malformed> {
    let a = attrs(expr)?;
    let name = a.iter().find(|(t, _)| *t == NFTA_EXPR_NAME).map(|(_, v)| *v);
    if name != Some(b"counter\0".as_slice()) {
        return Ok(None);
    }
    let Some((_, data)) = a.iter().find(|(t, _)| *t == NFTA_EXPR_DATA) else {
        return Ok(None);
    };
    let (mut packets, mut bytes) = (None, None);
    for (t, v) in attrs(data)? {
        match t {
            NFTA_COUNTER_BYTES => bytes = Some(be64(v).ok_or(Malformed)?),
            NFTA_COUNTER_PACKETS => packets = Some(be64(v).ok_or(Malformed)?),
            _ => {}
        }
    }
    Ok(packets.zip(bytes))
}

/// One `NFTA_LIST_ELEM`: its key and counter, if it has one.
fn element(elem: &[u8]) -> Result<Option<HostCounter>, Malformed> {
    let mut key = None;
    let mut counter = None;
    for (t, v) in attrs(elem)? {
        match t {
            NFTA_SET_ELEM_KEY => {
                let data = attrs(v)?;
                if let Some((_, ip)) = data.iter().find(|(t, _)| *t == NFTA_DATA_VALUE) {
                    let o: [u8; 4] = (*ip).try_into().map_err(|_| Malformed)?;
                    key = Some(Ipv4Addr::from(o));
                }
            }
            NFTA_SET_ELEM_EXPR => counter = counter.or(counter_of(v)?),
            NFTA_SET_ELEM_EXPRESSIONS => {
                for (_, e) in attrs(v)? {
                    counter = counter.or(counter_of(e)?);
                }
            }
            _ => {}
        }
    }
    Ok(key
        .zip(counter)
        .map(|(real, (packets, bytes))| HostCounter { real, packets, bytes }))
}

/// Parses one datagram of answers to the dump numbered `seq` (answers to
/// other requests are skipped).
pub fn parse_dump(mut b: &[u8], seq: u32) -> Result<DumpPart, Malformed> {
    let mut part = DumpPart::default();
    while b.len() >= NLMSG_HDRLEN {
        let len = u32_at(b, 0).ok_or(Malformed)? as usize;
        let ty = u16_at(b, 4).ok_or(Malformed)?;
        let s = u32_at(b, 8).ok_or(Malformed)?;
        if len < NLMSG_HDRLEN || len > b.len() {
            return Err(Malformed);
        }
        let msg = b.get(..len).ok_or(Malformed)?;
        b = b.get(len.next_multiple_of(4)..).unwrap_or_default();
        if s != seq {
            continue;
        }
        match ty {
            NLMSG_DONE => part.done = true,
            NLMSG_ERROR => {
                let code = u32_at(msg, NLMSG_HDRLEN).ok_or(Malformed)? as i32;
                if code != 0 {
                    part.error = Some(code.saturating_neg());
                }
                // An error ends the dump; 0 is a plain acknowledgement.
                part.done = true;
            }
            t if t == NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWSETELEM => {
                let body = msg.get(NFMSG_HDRLEN..).ok_or(Malformed)?;
                for (t, v) in attrs(body)? {
                    if t != NFTA_SET_ELEM_LIST_ELEMENTS {
                        continue;
                    }
                    for (t, e) in attrs(v)? {
                        if t != NFTA_LIST_ELEM {
                            continue;
                        }
                        if let Some(c) = element(e)? {
                            part.counters.push(c);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(part)
}

#[cfg(test)]
mod golden {
    //! What `nft` 1.0.6 sends and what the kernel answers, for `nft list
    //! set ip vpnnat granted` in a scratch network namespace whose
    //! `granted` set (with `counter`) holds 192.168.1.10 after one refused
    //! TCP connection to it (SYN and RST: 2 packets, 100 bytes). Captured
    //! with `strace -e trace=sendto,recvmsg -e read=3 -e write=3 -xx nft
    //! list set ip vpnnat granted`. See testdata/getsetelem_*.hex.
    use super::*;

    fn golden(text: &str) -> Vec<u8> {
        let hex: String = text.lines().filter(|l| !l.starts_with('#')).collect();
        hex::decode(hex.trim()).unwrap()
    }

    #[test]
    fn request_matches_nft() {
        assert_eq!(
            hex::encode(dump_request("vpnnat", "granted", 0)),
            hex::encode(golden(include_str!("../../testdata/getsetelem_dump.hex"))),
            "ours, then nft's"
        );
    }

    #[test]
    fn the_kernels_answer_gives_the_counts() {
        let first = golden(include_str!("../../testdata/getsetelem_answer1.hex"));
        let p = parse_dump(&first, 0).unwrap();
        assert_eq!(
            p.counters,
            [HostCounter {
                real: Ipv4Addr::new(192, 168, 1, 10),
                packets: 2,
                bytes: 100
            }]
        );
        assert!(!p.done);
        // The last datagram: an empty element message, then the end.
        let last = golden(include_str!("../../testdata/getsetelem_answer2.hex"));
        let p = parse_dump(&last, 0).unwrap();
        assert_eq!(
            p,
            DumpPart {
                counters: vec![],
                done: true,
                error: None
            }
        );
        // Answers to another request are not ours.
        assert_eq!(parse_dump(&first, 7).unwrap(), DumpPart::default());
        // Cut short: malformed, not a panic.
        for n in 1..first.len() {
            let _ = parse_dump(&first[..n], 0);
        }
        let mut bad = first.clone();
        bad[0] = 200;
        assert_eq!(parse_dump(&bad, 0), Err(Malformed));
    }

    #[test]
    fn a_refused_dump_says_why() {
        // NLMSG_ERROR, ENOENT (no such table), seq 3.
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&3u32.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&(-2i32).to_ne_bytes());
        m.extend_from_slice(&[0; 16]);
        assert_eq!(
            parse_dump(&m, 3).unwrap(),
            DumpPart {
                counters: vec![],
                done: true,
                error: Some(2)
            }
        );
    }
}
