//! Pure builders for XFRM netlink messages, and parsers of the kernel's
//! answers into the project's model. No I/O: the socket layer sends what
//! these functions return, so the exact bytes can be checked in tests.

use std::net::Ipv4Addr;

use netlink_packet_xfrm::{
    policy::{
        DelGetMessage as PolicyDelGet, FlushMessage as PolicyFlush, ModifyMessage as PolicyModify,
    },
    state::{
        AllocSpiMessage, DelGetMessage as SaDelGet, FlushMessage as SaFlush, GetDumpMessage,
        ModifyMessage as SaModify,
    },
    Address, AlgAead, EncapTmpl, Id, LifetimeConfig, ReplayEsn, Selector, UserPolicyId,
    UserPolicyInfo, UserSaId, UserSaInfo, UserSpiInfo, UserTemplate, XfrmAttrs, XfrmMessage,
    IPPROTO_ESP, UDP_ENCAP_ESPINUDP, XFRM_INF, XFRM_MODE_TUNNEL, XFRM_POLICY_ALLOW,
    XFRM_POLICY_FWD, XFRM_POLICY_IN, XFRM_POLICY_OUT,
};

use crate::model::{
    Dir, Encap, Ipv4Cidr, Lifetime, ObservedSa, PolicyId, PolicySpec, SaCounters, SaId, SaSpec,
};

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
        selector: Selector {
            family: AF_INET,
            ..Default::default()
        },
        id: Id {
            daddr: addr(dst),
            spi: spi.to_be(),
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
        alg_key_len: (key.len() as u32) * 8,
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
            encap_sport: sport.to_be(),
            encap_dport: dport.to_be(),
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
        spi: id.spi.to_be(),
        family: AF_INET,
        proto: IPPROTO_ESP,
    }
}

/// XFRM_MSG_DELSA.
pub fn del_sa(id: SaId, src: Option<Ipv4Addr>) -> XfrmMessage {
    XfrmMessage::DeleteSa(SaDelGet {
        user_sa_id: sa_id(id),
        nlas: src
            .map(|s| vec![XfrmAttrs::SrcAddr(addr(s))])
            .unwrap_or_default(),
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
    XfrmMessage::FlushSa(SaFlush {
        protocol: IPPROTO_ESP,
    })
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
            sport: u16::from_be(e.encap_sport),
            dport: u16::from_be(e.encap_dport),
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
            spi: u32::from_be(i.id.spi),
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
