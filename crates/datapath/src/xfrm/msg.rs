//! Pure builders for XFRM netlink messages, and parsers of the kernel's
//! answers into the project's model. No I/O: the socket layer sends what
//! these functions return, so the exact bytes can be checked in tests.

use std::net::Ipv4Addr;

use netlink_packet_xfrm::{
    policy::{DelGetMessage as PolicyDelGet, FlushMessage as PolicyFlush, ModifyMessage as PolicyModify},
    state::{
        AllocSpiMessage, DelGetMessage as SaDelGet, FlushMessage as SaFlush, GetDumpMessage, ModifyMessage as SaModify,
    },
    Address, AlgAead, EncapTmpl, Id, LifetimeConfig, ReplayEsn, Selector, UserPolicyId, UserPolicyInfo, UserSaId,
    UserSaInfo, UserSpiInfo, UserTemplate, XfrmAttrs, XfrmMessage, IPPROTO_ESP, UDP_ENCAP_ESPINUDP, XFRM_INF,
    XFRM_MODE_TUNNEL, XFRM_POLICY_ALLOW, XFRM_POLICY_FWD, XFRM_POLICY_IN, XFRM_POLICY_OUT,
};

use netlink_packet_xfrm::policy::{NewSpdInfoMessage, SpdHThresh, SpdInfoAttrs};

use crate::model::{Dir, Encap, Ipv4Cidr, Lifetime, ObservedSa, PolicyId, PolicySpec, SaCounters, SaId, SaSpec};

const AF_INET: u16 = libc::AF_INET as u16;
/// Name the kernel's crypto API knows AES-GCM for ESP by (RFC 4106).
pub const AEAD_NAME: &str = "rfc4106(gcm(aes))";
/// ICV length in bits (the "16" of aes256gcm16).
pub const ICV_BITS: u32 = 128;
/// The legacy replay attribute carries a 32-bit bitmap; wider windows need
/// the ESN replay attribute even without ESN.
const LEGACY_REPLAY_MAX: u32 = 32;

fn addr(ip: Ipv4Addr) -> Address {
    Address::from_ipv4(&ip)
}

fn unlimited() -> LifetimeConfig {
    LifetimeConfig {
        soft_byte_limit: XFRM_INF,
        hard_byte_limit: XFRM_INF,
        soft_packet_limit: XFRM_INF,
        hard_packet_limit: XFRM_INF,
        ..Default::default()
    }
}

fn lifetime_cfg(l: Lifetime) -> LifetimeConfig {
    LifetimeConfig {
        soft_add_expires_seconds: l.soft_secs.unwrap_or(0),
        hard_add_expires_seconds: l.hard_secs.unwrap_or(0),
        ..unlimited()
    }
}

fn selector(src: Ipv4Cidr, dst: Ipv4Cidr) -> Selector {
    Selector {
        daddr: addr(dst.addr()),
        saddr: addr(src.addr()),
        family: AF_INET,
        prefixlen_d: dst.prefix_len(),
        prefixlen_s: src.prefix_len(),
        ..Default::default()
    }
}

fn dir_code(d: Dir) -> u8 {
    match d {
        Dir::In => XFRM_POLICY_IN,
        Dir::Out => XFRM_POLICY_OUT,
        Dir::Fwd => XFRM_POLICY_FWD,
    }
}

fn sa_info(src: Ipv4Addr, dst: Ipv4Addr, spi: u32, reqid: u32) -> UserSaInfo {
    UserSaInfo {
        // Like iproute2, leave the SA selector unspecified: tunnel-mode SAs
        // are bound to traffic by the policies, not by their own selector.
        selector: Selector::default(),
        id: Id {
            daddr: addr(dst),
            // netlink-packet-xfrm writes SPIs and ports in network order itself.
            spi,
            proto: IPPROTO_ESP,
        },
        saddr: addr(src),
        lifetime_cfg: unlimited(),
        reqid,
        family: AF_INET,
        mode: XFRM_MODE_TUNNEL,
        ..Default::default()
    }
}

/// XFRM_MSG_NEWSA (or UPDSA when `update`) for an ESP tunnel-mode SA.
pub fn new_sa(spec: &SaSpec, update: bool) -> XfrmMessage {
    let mut info = sa_info(spec.src, spec.dst, spec.spi, spec.reqid);
    info.lifetime_cfg = lifetime_cfg(spec.lifetime);
    let key = spec.key.as_bytes();
    let mut name = [0u8; 64];
    for (d, s) in name.iter_mut().zip(AEAD_NAME.as_bytes()) {
        *d = *s;
    }
    let mut nlas = vec![XfrmAttrs::EncryptionAlgAead(AlgAead {
        alg_name: name,
        // A validated AEAD key (16 or 32 bytes): the product is small.
        alg_key_len: (key.len() as u32).saturating_mul(8),
        alg_icv_len: ICV_BITS,
        alg_key: key.to_vec(),
    })];
    if spec.replay_window > LEGACY_REPLAY_MAX {
        let words = spec.replay_window.div_ceil(32);
        nlas.push(XfrmAttrs::ReplayStateEsn(ReplayEsn {
            bmp_len: words,
            replay_window: spec.replay_window,
            bmp: vec![0; words as usize],
            ..Default::default()
        }));
    } else {
        info.replay_window = spec.replay_window as u8;
    }
    if let Some(Encap { sport, dport }) = spec.encap {
        nlas.push(XfrmAttrs::EncapsulationTemplate(EncapTmpl {
            encap_type: UDP_ENCAP_ESPINUDP,
            encap_sport: sport,
            encap_dport: dport,
            encap_oa: Address::default(),
        }));
    }
    let msg = SaModify {
        user_sa_info: info,
        nlas,
    };
    if update {
        XfrmMessage::UpdateSa(msg)
    } else {
        XfrmMessage::AddSa(msg)
    }
}

fn sa_id(id: SaId) -> UserSaId {
    UserSaId {
        daddr: addr(id.dst),
        spi: id.spi,
        family: AF_INET,
        proto: IPPROTO_ESP,
    }
}

/// XFRM_MSG_DELSA.
pub fn del_sa(id: SaId, src: Option<Ipv4Addr>) -> XfrmMessage {
    XfrmMessage::DeleteSa(SaDelGet {
        user_sa_id: sa_id(id),
        nlas: src.map(|s| vec![XfrmAttrs::SrcAddr(addr(s))]).unwrap_or_default(),
    })
}

/// XFRM_MSG_GETSA for one SA.
pub fn get_sa(id: SaId) -> XfrmMessage {
    XfrmMessage::GetSa(SaDelGet {
        user_sa_id: sa_id(id),
        nlas: vec![],
    })
}

/// XFRM_MSG_GETSA with NLM_F_DUMP.
pub fn dump_sa() -> XfrmMessage {
    XfrmMessage::GetDumpSa(GetDumpMessage { nlas: vec![] })
}

/// XFRM_MSG_FLUSHSA for ESP.
pub fn flush_sa() -> XfrmMessage {
    XfrmMessage::FlushSa(SaFlush { protocol: IPPROTO_ESP })
}

/// XFRM_MSG_ALLOCSPI: the kernel picks a free SPI in `min..=max` and creates
/// a larval SA for it, which a later UPDSA with the same SPI completes.
pub fn alloc_spi(src: Ipv4Addr, dst: Ipv4Addr, reqid: u32, min: u32, max: u32) -> XfrmMessage {
    XfrmMessage::AllocSpi(AllocSpiMessage {
        spi_info: UserSpiInfo {
            info: sa_info(src, dst, 0, reqid),
            min,
            max,
        },
        nlas: vec![],
    })
}

fn policy_info(id: &PolicyId, priority: u32) -> UserPolicyInfo {
    UserPolicyInfo {
        selector: selector(id.src, id.dst),
        lifetime_cfg: unlimited(),
        priority,
        direction: dir_code(id.dir),
        action: XFRM_POLICY_ALLOW,
        ..Default::default()
    }
}

/// XFRM_MSG_NEWPOLICY (or UPDPOLICY) with one ESP tunnel template.
pub fn new_policy(spec: &PolicySpec, update: bool) -> XfrmMessage {
    let tmpl = UserTemplate {
        id: Id {
            daddr: addr(spec.tmpl_dst),
            spi: 0,
            proto: IPPROTO_ESP,
        },
        family: AF_INET,
        saddr: addr(spec.tmpl_src),
        reqid: spec.reqid,
        mode: XFRM_MODE_TUNNEL,
        share: 0,
        optional: 0,
        aalgos: u32::MAX,
        ealgos: u32::MAX,
        calgos: u32::MAX,
    };
    let msg = PolicyModify {
        user_policy_info: policy_info(&spec.id, spec.priority),
        nlas: vec![XfrmAttrs::Template(vec![tmpl])],
    };
    if update {
        XfrmMessage::UpdatePolicy(msg)
    } else {
        XfrmMessage::AddPolicy(msg)
    }
}

/// XFRM_MSG_DELPOLICY by selector and direction.
pub fn del_policy(id: &PolicyId) -> XfrmMessage {
    XfrmMessage::DeletePolicy(PolicyDelGet {
        user_policy_id: UserPolicyId {
            selector: selector(id.src, id.dst),
            index: 0,
            direction: dir_code(id.dir),
        },
        nlas: vec![],
    })
}

/// XFRM_MSG_GETPOLICY with NLM_F_DUMP.
pub fn dump_policy() -> XfrmMessage {
    XfrmMessage::GetPolicy(PolicyDelGet::default())
}

/// XFRM_MSG_NEWSPDINFO setting the IPv4 policy hash thresholds.
///
/// The kernel hashes a policy only when its selector prefixes are at least
/// this long; others go to the "inexact" lists, where every insert scans the
/// policies sharing a prefix. The project's policies pair a VPNNAT /32 with a
/// center network (e.g. a /24), so with the default 32/32 thresholds all of
/// them would share one inexact bin and adding N policies would cost O(N^2).
pub fn set_hash_thresholds(lbits: u8, rbits: u8) -> XfrmMessage {
    XfrmMessage::NewSpdInfo(NewSpdInfoMessage {
        // iproute2 sends all ones here; the kernel ignores the value.
        flags: u32::MAX,
        nlas: vec![SpdInfoAttrs::SpdIpv4HThresh(SpdHThresh { lbits, rbits })],
    })
}

/// XFRM_MSG_FLUSHPOLICY (main policy type).
pub fn flush_policy() -> XfrmMessage {
    XfrmMessage::FlushPolicy(PolicyFlush::default())
}

fn cidr_of(a: &Address, len: u8) -> Option<Ipv4Cidr> {
    Ipv4Cidr::new(a.to_ipv4(), len).ok()
}

/// The kernel's NEWSA answer (to GETSA or a dump) as an [`ObservedSa`];
/// `None` for non-IPv4 or non-ESP SAs, which the project never creates.
pub fn parse_sa(msg: &SaModify) -> Option<ObservedSa> {
    let i = &msg.user_sa_info;
    if i.family != AF_INET || i.id.proto != IPPROTO_ESP {
        return None;
    }
    let encap = msg.nlas.iter().find_map(|n| match n {
        XfrmAttrs::EncapsulationTemplate(e) => Some(Encap {
            sport: e.encap_sport,
            dport: e.encap_dport,
        }),
        _ => None,
    });
    // The kernel counts packets outside the window and replayed packets
    // apart; for an operator both are "replay errors".
    let replay_errors = i.stats.replay.saturating_add(i.stats.replay_window);
    let integrity_failures = i.stats.integrity_failed;
    Some(ObservedSa {
        id: SaId {
            dst: i.id.daddr.to_ipv4(),
            spi: i.id.spi,
        },
        src: i.saddr.to_ipv4(),
        reqid: i.reqid,
        encap,
        counters: SaCounters {
            bytes: i.lifetime_cur.bytes,
            packets: i.lifetime_cur.packets,
            replay_errors,
            integrity_failures,
        },
    })
}

/// The kernel's NEWPOLICY answer as a [`PolicySpec`]; `None` for policies
/// that are not IPv4 tunnel policies with exactly one ESP template.
pub fn parse_policy(msg: &PolicyModify) -> Option<PolicySpec> {
    let i = &msg.user_policy_info;
    if i.selector.family != AF_INET {
        return None;
    }
    let dir = match i.direction {
        XFRM_POLICY_IN => Dir::In,
        XFRM_POLICY_OUT => Dir::Out,
        XFRM_POLICY_FWD => Dir::Fwd,
        _ => return None,
    };
    let tmpl = msg.nlas.iter().find_map(|n| match n {
        XfrmAttrs::Template(t) if t.len() == 1 => t.first().cloned(),
        _ => None,
    })?;
    Some(PolicySpec {
        id: PolicyId {
            src: cidr_of(&i.selector.saddr, i.selector.prefixlen_s)?,
            dst: cidr_of(&i.selector.daddr, i.selector.prefixlen_d)?,
            dir,
        },
        priority: i.priority,
        tmpl_src: tmpl.saddr.to_ipv4(),
        tmpl_dst: tmpl.id.daddr.to_ipv4(),
        reqid: tmpl.reqid,
    })
}

#[cfg(test)]
mod golden {
    //! The bytes iproute2 sends for the same operations (captured with
    //! `strace -xx` on `ip xfrm …`, see testdata/*.hex) must equal ours.
    use super::*;
    use crate::model::{Lifetime, SaKey, REQID_BASE};
    use crate::netlink::{encode, F_CHANGE};

    fn golden(text: &str) -> Vec<u8> {
        let hex: String = text.lines().filter(|l| !l.starts_with('#')).collect();
        hex::decode(hex.trim()).unwrap()
    }

    fn payload(m: XfrmMessage) -> Vec<u8> {
        encode(m, F_CHANGE, 1)[16..].to_vec()
    }

    fn assert_same(ours: &[u8], theirs: &[u8]) {
        if ours != theirs {
            let first = ours.iter().zip(theirs).position(|(a, b)| a != b);
            panic!(
                "bytes differ (ours {} theirs {}), first difference at {:?}\nours:   {}\ntheirs: {}",
                ours.len(),
                theirs.len(),
                first,
                hex::encode(ours),
                hex::encode(theirs)
            );
        }
    }

    fn policy() -> PolicySpec {
        PolicySpec {
            id: PolicyId {
                src: "172.16.0.0/24".parse().unwrap(),
                dst: "10.64.0.5/32".parse().unwrap(),
                dir: Dir::Out,
            },
            priority: 1000,
            tmpl_src: Ipv4Addr::new(198, 51, 100, 21),
            tmpl_dst: Ipv4Addr::new(198, 51, 100, 101),
            reqid: REQID_BASE + 1,
        }
    }

    #[test]
    fn policy_add_matches_iproute2() {
        assert_same(
            &payload(new_policy(&policy(), false)),
            &golden(include_str!("../../testdata/policy_add_out.hex")),
        );
    }

    #[test]
    fn policy_del_matches_iproute2() {
        assert_same(
            &payload(del_policy(&policy().id)),
            &golden(include_str!("../../testdata/policy_del_out.hex")),
        );
    }

    fn sa(spi: u32, key: Vec<u8>, encap: Option<Encap>) -> SaSpec {
        SaSpec {
            src: Ipv4Addr::new(198, 51, 100, 21),
            dst: Ipv4Addr::new(198, 51, 100, 101),
            spi,
            reqid: REQID_BASE + 1,
            key: SaKey::new(key).unwrap(),
            replay_window: 32,
            encap,
            lifetime: Lifetime::default(),
        }
    }

    #[test]
    fn sa_add_aes256_matches_iproute2() {
        let mut key = vec![1u8; 32];
        key.extend([2, 2, 2, 2]);
        assert_same(
            &payload(new_sa(&sa(0x1000, key, None), false)),
            &golden(include_str!("../../testdata/sa_add_aes256.hex")),
        );
    }

    #[test]
    fn sa_add_aes128_with_encap_matches_iproute2() {
        let mut key = vec![3u8; 16];
        key.extend([4, 4, 4, 4]);
        let encap = Some(Encap {
            sport: 4500,
            dport: 4500,
        });
        assert_same(
            &payload(new_sa(&sa(0x1001, key, encap), false)),
            &golden(include_str!("../../testdata/sa_add_aes128_encap.hex")),
        );
    }

    #[test]
    fn sa_update_of_the_encapsulation_matches_iproute2() {
        // The peer's NAT moved its port (issue 17 item 4): the same SA
        // again as XFRM_MSG_UPDSA, with the new destination port. The
        // kernel copies the encapsulation of a valid SA and keeps its
        // keys, sequence numbers and replay state.
        let mut key = vec![3u8; 16];
        key.extend([4, 4, 4, 4]);
        let encap = Some(Encap {
            sport: 4500,
            dport: 40777,
        });
        assert_same(
            &payload(new_sa(&sa(0x1001, key, encap), true)),
            &golden(include_str!("../../testdata/sa_update_encap.hex")),
        );
    }

    #[test]
    fn hash_thresholds_match_iproute2() {
        // `ip xfrm policy set hthresh4 24 24`
        assert_same(
            &payload(set_hash_thresholds(24, 24)),
            &hex::decode("ffffffff0600030018180000").unwrap(),
        );
    }

    #[test]
    fn wide_replay_window_uses_esn_attribute() {
        let mut s = sa(0x1002, vec![5; 20], None);
        s.replay_window = 1024;
        let XfrmMessage::AddSa(m) = new_sa(&s, false) else {
            panic!()
        };
        assert_eq!(m.user_sa_info.replay_window, 0);
        let esn = m
            .nlas
            .iter()
            .find_map(|n| match n {
                XfrmAttrs::ReplayStateEsn(e) => Some(e.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!((esn.replay_window, esn.bmp_len, esn.bmp.len()), (1024, 32, 32));
    }

    #[test]
    fn parse_round_trips_policy() {
        let XfrmMessage::AddPolicy(m) = new_policy(&policy(), false) else {
            panic!()
        };
        assert_eq!(parse_policy(&m), Some(policy()));
    }

    #[test]
    fn parse_round_trips_sa_without_key() {
        let s = sa(
            0x1003,
            vec![6; 36],
            Some(Encap {
                sport: 4500,
                dport: 1234,
            }),
        );
        let XfrmMessage::AddSa(m) = new_sa(&s, false) else {
            panic!()
        };
        let o = parse_sa(&m).unwrap();
        assert_eq!((o.id, o.src, o.reqid, o.encap), (s.id(), s.src, s.reqid, s.encap));
    }
}
