//! Pure builders of the nf_tables netlink batch that adds or deletes the
//! elements of VPNNAT mappings, and the parser of the kernel's answers.
//!
//! One mapping is three elements (see [`super::ruleset`]): `dnat4
//! { vpnnat : real }`, `snat4 { real : vpnnat }` and `granted { real }`.
//! A transaction is one batch, `NFNL_MSG_BATCH_BEGIN`, one
//! `NFT_MSG_NEWSETELEM` / `NFT_MSG_DELSETELEM` per element, then
//! `NFNL_MSG_BATCH_END`: the kernel commits all of it or nothing. The
//! messages are laid out as `nft` 1.0.6 lays out the same change (golden
//! bytes below, captured from `nft` on this kind of host), with one element
//! per message instead of one per set, so the kernel's refusal names the
//! element. Hand-laid, like [`crate::rtnl::msg`]: no generic nf_tables
//! parser goes into routerd's firmware.

use std::net::Ipv4Addr;

use crate::model::Mapping;

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFPROTO_IPV4: u8 = 2;
const AF_UNSPEC: u8 = 0;
const NLA_F_NESTED: u16 = 0x8000;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;

/// Add or delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElemOp {
    Add,
    Delete,
}

/// One element of one set or map: `key` alone for a set, `key : value`
/// for a map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Elem {
    pub set: &'static str,
    pub key: Ipv4Addr,
    pub value: Option<Ipv4Addr>,
}

impl std::fmt::Display for Elem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.value {
            Some(v) => write!(f, "{} {{ {} : {v} }}", self.set, self.key),
            None => write!(f, "{} {{ {} }}", self.set, self.key),
        }
    }
}

/// The three elements of each mapping, in the order `nft` sends them for
/// [`super::NatTable::add_mappings`]: the DNAT pair, the SNAT pair, the
/// granted host.
pub fn mapping_elems(mappings: &[Mapping]) -> Vec<Elem> {
    let dnat = mappings.iter().map(|m| Elem {
        set: super::ruleset::DNAT_MAP,
        key: m.vpnnat,
        value: Some(m.real),
    });
    let snat = mappings.iter().map(|m| Elem {
        set: super::ruleset::SNAT_MAP,
        key: m.real,
        value: Some(m.vpnnat),
    });
    let granted = mappings.iter().map(|m| Elem {
        set: super::ruleset::GRANTED_SET,
        key: m.real,
        value: None,
    });
    dnat.chain(snat).chain(granted).collect()
}

/// One batch: its bytes, and the sequence numbers the kernel answers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElemBatch {
    pub bytes: Vec<u8>,
    /// The batch-begin message's: a refusal of the whole batch (no
    /// permission, a failed commit) comes back under it.
    pub begin_seq: u32,
    /// One per element message, in `elems` order.
    pub elem_seqs: Vec<u32>,
}

/// Appends one attribute (type, payload), padded to 4 bytes.
pub(super) fn attr(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = data.len().saturating_add(4);
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// A nested attribute holding one `NFTA_DATA_VALUE` (an IPv4 address, in
/// network order as nf_tables stores `ipv4_addr`).
fn data_value(buf: &mut Vec<u8>, ty: u16, ip: Ipv4Addr) {
    let mut inner = Vec::with_capacity(8);
    attr(&mut inner, NFTA_DATA_VALUE, &ip.octets());
    attr(buf, ty | NLA_F_NESTED, &inner);
}

pub(super) fn nul_terminated(s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(s.len().saturating_add(1));
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    v
}

/// Header (port id 0: the kernel fills in ours), `nfgenmsg`, attributes.
fn message(buf: &mut Vec<u8>, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &[u8]) {
    let len = NLMSG_HDRLEN.saturating_add(4).saturating_add(attrs.len());
    buf.extend_from_slice(&(len as u32).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    // struct nfgenmsg: family, version (NFNETLINK_V0), res_id (big endian).
    buf.extend_from_slice(&[family, 0]);
    buf.extend_from_slice(&res_id.to_be_bytes());
    buf.extend_from_slice(attrs);
}

/// The batch that adds (or deletes) `elems` of table `table` (family `ip`)
/// as one transaction. Messages are numbered from `seq`. With `ack`, every
/// element message asks for an acknowledgement, so success and failure of
/// each are known (`nft` 1.0.6 asks for none; the tests compare both).
/// A delete carries only the key: the kernel finds a map element by it.
pub fn batch(table: &str, op: ElemOp, elems: &[Elem], seq: u32, ack: bool) -> ElemBatch {
    let table = nul_terminated(table);
    let mut bytes = Vec::with_capacity(elems.len().saturating_mul(88).saturating_add(40));
    let begin_seq = seq;
    message(
        &mut bytes,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        begin_seq,
        AF_UNSPEC,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    let (ty, flags) = match op {
        ElemOp::Add => (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_CREATE),
        ElemOp::Delete => (NFT_MSG_DELSETELEM, NLM_F_REQUEST),
    };
    let flags = if ack { flags | NLM_F_ACK } else { flags };
    let mut elem_seqs = Vec::with_capacity(elems.len());
    let mut next = seq;
    let mut attrs = Vec::with_capacity(96);
    for e in elems {
        next = next.wrapping_add(1);
        attrs.clear();
        attr(&mut attrs, NFTA_SET_ELEM_LIST_TABLE, &table);
        attr(&mut attrs, NFTA_SET_ELEM_LIST_SET, &nul_terminated(e.set));
        if op == ElemOp::Add {
            // nft's own id of the set within its batch (the message's
            // position); the kernel looks a set up by name first and uses
            // the id only for a set created in the same batch, so it is
            // inert here, and sent to stay byte-for-byte what nft sends.
            let id = next.wrapping_sub(seq);
            attr(&mut attrs, NFTA_SET_ELEM_LIST_SET_ID, &id.to_be_bytes());
        }
        let mut elem = Vec::with_capacity(32);
        data_value(&mut elem, NFTA_SET_ELEM_KEY, e.key);
        if let (ElemOp::Add, Some(v)) = (op, e.value) {
            data_value(&mut elem, NFTA_SET_ELEM_DATA, v);
        }
        let mut list = Vec::with_capacity(36);
        attr(&mut list, NFTA_LIST_ELEM | NLA_F_NESTED, &elem);
        attr(&mut attrs, NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, &list);
        message(
            &mut bytes,
            NFNL_SUBSYS_NFTABLES << 8 | ty,
            flags,
            next,
            NFPROTO_IPV4,
            0,
            &attrs,
        );
        elem_seqs.push(next);
    }
    next = next.wrapping_add(1);
    message(
        &mut bytes,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        next,
        AF_UNSPEC,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    ElemBatch {
        bytes,
        begin_seq,
        elem_seqs,
    }
}

/// A malformed answer from the kernel (a length that does not fit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("nf_tables netlink: malformed answer")]
pub struct Malformed;

pub(super) fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at.checked_add(2)?)?.try_into().ok()?))
}

pub(super) fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

/// The acknowledgements in one datagram of answers: (sequence number,
/// 0 or -errno). Other messages are skipped.
pub fn acks(mut b: &[u8]) -> Result<Vec<(u32, i32)>, Malformed> {
    let mut out = Vec::new();
    while b.len() >= NLMSG_HDRLEN {
        let len = u32_at(b, 0).ok_or(Malformed)? as usize;
        let ty = u16_at(b, 4).ok_or(Malformed)?;
        let seq = u32_at(b, 8).ok_or(Malformed)?;
        if len < NLMSG_HDRLEN || len > b.len() {
            return Err(Malformed);
        }
        if ty == NLMSG_ERROR {
            out.push((seq, u32_at(b, NLMSG_HDRLEN).ok_or(Malformed)? as i32));
        }
        b = b.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(out)
}

/// What the acknowledgements of `batch` say, once all answers are read:
/// `Ok` when every element message was acknowledged with 0 and the batch
/// itself was not refused; otherwise the first refusal, as (index of the
/// element, or `None` for the whole batch; errno), or a missing answer.
pub fn verdict(batch: &ElemBatch, acks: &[(u32, i32)]) -> Result<(), Refusal> {
    if let Some((_, code)) = acks.iter().find(|(s, c)| *s == batch.begin_seq && *c != 0) {
        return Err(Refusal::Batch(code.saturating_neg()));
    }
    // Element messages are numbered on from the batch begin; index the
    // answers by that offset (batches have thousands of elements).
    let mut answer: Vec<Option<i32>> = vec![None; batch.elem_seqs.len()];
    for (s, c) in acks {
        let off = s.wrapping_sub(batch.begin_seq) as usize;
        if let Some(slot) = off.checked_sub(1).and_then(|i| answer.get_mut(i)) {
            slot.get_or_insert(*c);
        }
    }
    for (i, a) in answer.iter().enumerate() {
        match a {
            Some(0) => {}
            Some(code) => return Err(Refusal::Elem(i, code.saturating_neg())),
            None => return Err(Refusal::Unanswered(i)),
        }
    }
    Ok(())
}

/// Why a batch was not applied (errnos positive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The kernel refused the whole batch (e.g. EPERM, or its commit failed).
    Batch(i32),
    /// The kernel refused the element with this index; the batch was aborted.
    Elem(usize, i32),
    /// No answer for the element with this index.
    Unanswered(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(v: &str, r: &str) -> Mapping {
        Mapping {
            vpnnat: v.parse().unwrap(),
            real: r.parse().unwrap(),
        }
    }

    #[test]
    fn a_mapping_is_three_elements_named_as_nft_prints_them() {
        let e = mapping_elems(&[m("10.64.0.5", "192.168.1.10")]);
        let shown: Vec<String> = e.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            shown,
            [
                "dnat4 { 10.64.0.5 : 192.168.1.10 }",
                "snat4 { 192.168.1.10 : 10.64.0.5 }",
                "granted { 192.168.1.10 }"
            ]
        );
        // Two mappings: each set's elements together, as nft orders them.
        let two = mapping_elems(&[m("10.64.0.5", "192.168.1.10"), m("10.64.0.6", "192.168.1.11")]);
        let sets: Vec<&str> = two.iter().map(|e| e.set).collect();
        assert_eq!(sets, ["dnat4", "dnat4", "snat4", "snat4", "granted", "granted"]);
    }

    #[test]
    fn ack_asks_for_an_answer_per_element_and_changes_nothing_else() {
        let e = mapping_elems(&[m("10.64.0.5", "192.168.1.10")]);
        let quiet = batch("vpnnat", ElemOp::Add, &e, 7, false);
        let acked = batch("vpnnat", ElemOp::Add, &e, 7, true);
        assert_eq!(acked.begin_seq, 7);
        assert_eq!(acked.elem_seqs, [8, 9, 10]);
        assert_eq!(quiet.bytes.len(), acked.bytes.len());
        let differ: Vec<usize> = (0..quiet.bytes.len())
            .filter(|&i| quiet.bytes[i] != acked.bytes[i])
            .collect();
        // The low flag byte of the three element messages (20, 104, 188).
        assert_eq!(differ, [20 + 6, 20 + 84 + 6, 20 + 168 + 6]);
        assert!(differ
            .iter()
            .all(|&i| acked.bytes[i] == quiet.bytes[i] | NLM_F_ACK as u8));
    }

    fn ack(seq: u32, code: i32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&code.to_ne_bytes());
        m.extend_from_slice(&[0; 16]);
        m
    }

    #[test]
    fn verdict_names_the_refused_element_or_the_batch() {
        let b = batch(
            "t",
            ElemOp::Delete,
            &mapping_elems(&[m("10.64.0.5", "192.168.1.10")]),
            1,
            true,
        );
        let mut all = ack(2, 0);
        all.extend(ack(3, 0));
        all.extend(ack(4, 0));
        assert_eq!(verdict(&b, &acks(&all).unwrap()), Ok(()));
        let mut one_bad = ack(2, 0);
        one_bad.extend(ack(3, -2));
        one_bad.extend(ack(4, 0));
        assert_eq!(verdict(&b, &acks(&one_bad).unwrap()), Err(Refusal::Elem(1, 2)));
        assert_eq!(verdict(&b, &acks(&ack(1, -1)).unwrap()), Err(Refusal::Batch(1)));
        assert_eq!(verdict(&b, &acks(&ack(2, 0)).unwrap()), Err(Refusal::Unanswered(1)));
        let mut bad = ack(2, 0);
        bad[0] = 200;
        assert_eq!(acks(&bad), Err(Malformed));
    }
}

#[cfg(test)]
mod golden {
    //! What `nft` 1.0.6 sends for the same change must equal ours (built
    //! without acks, as nft asks for none). Captured in a scratch network
    //! namespace holding the VPNNAT table's two maps and the granted set:
    //! `strace -e trace=sendmsg -e write=3 -xx -s 4096 nft -j -f F`, with F
    //! the JSON of [`crate::nft::NatTable::add_mappings`] (or
    //! `remove_mappings`) for the mapping 10.64.0.5 -> 192.168.1.10; the
    //! whole sendmsg payload (the batch; nft numbers it from 0, as we do
    //! here). See testdata/setelem_*.hex.
    use super::*;

    fn golden(text: &str) -> Vec<u8> {
        let hex: String = text.lines().filter(|l| !l.starts_with('#')).collect();
        hex::decode(hex.trim()).unwrap()
    }

    fn elems() -> Vec<Elem> {
        mapping_elems(&[Mapping {
            vpnnat: [10, 64, 0, 5].into(),
            real: [192, 168, 1, 10].into(),
        }])
    }

    #[test]
    fn add_matches_nft() {
        assert_eq!(
            hex::encode(batch("vpnnat", ElemOp::Add, &elems(), 0, false).bytes),
            hex::encode(golden(include_str!("../../testdata/setelem_add.hex"))),
            "ours, then nft's"
        );
    }

    #[test]
    fn delete_matches_nft() {
        assert_eq!(
            hex::encode(batch("vpnnat", ElemOp::Delete, &elems(), 0, false).bytes),
            hex::encode(golden(include_str!("../../testdata/setelem_del.hex"))),
            "ours, then nft's"
        );
    }
}
