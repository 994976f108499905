//! When a policy last carried a packet (issue 19, item 8: the idle
//! timeout). The kernel stamps a policy's `curlft.use_time` (Unix seconds)
//! each time a packet matches it: an `in` or `fwd` policy on every packet
//! checked against it (a decapsulated one, or a plain one it then drops),
//! an `out` policy when a forwarded packet is routed through its SAs (a
//! local socket's cached route skips that lookup; the gateway forwards,
//! and its `in`/`fwd` stamps move with every packet). So the latest
//! stamp over a tunnel's policies is when the tunnel last carried traffic,
//! as the gateway's own kernel saw it; no router has to be believed.
//!
//! Pure: the kernel's NEWPOLICY answers (already decoded by the netlink
//! layer) in, the stamps out. The dump itself is [`super::Xfrm::policy_uses`].

use std::collections::BTreeMap;

use netlink_packet_xfrm::policy::ModifyMessage as PolicyModify;

use super::msg::parse_policy;
use crate::model::{Dir, PolicyId};

/// One policy's last use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyUse {
    pub id: PolicyId,
    pub reqid: u32,
    /// Unix seconds of the last packet that matched it; None: none since
    /// it was installed (the kernel's 0).
    pub last_use: Option<u64>,
}

/// The stamp of one policy of the project's shape (IPv4, one ESP tunnel
/// template, see [`parse_policy`]); `None` for any other policy.
pub fn parse_policy_use(msg: &PolicyModify) -> Option<PolicyUse> {
    let p = parse_policy(msg)?;
    let t = msg.user_policy_info.lifetime_cur.use_time;
    Some(PolicyUse {
        id: p.id,
        reqid: p.reqid,
        last_use: (t != 0).then_some(t),
    })
}

/// The latest use per reqid (one reqid is one tunnel): a reqid whose
/// policies never matched a packet maps to None.
pub fn last_use_by_reqid(uses: &[PolicyUse]) -> BTreeMap<u32, Option<u64>> {
    let mut out: BTreeMap<u32, Option<u64>> = BTreeMap::new();
    for u in uses {
        let e = out.entry(u.reqid).or_insert(None);
        *e = (*e).max(u.last_use);
    }
    out
}

/// Whether the policy is one a packet arriving from the tunnel matches
/// (for tests and diagnostics: the direction that moves without SAs).
pub fn is_inbound(u: &PolicyUse) -> bool {
    matches!(u.id.dir, Dir::In | Dir::Fwd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{NetlinkDeserializable, NetlinkHeader};
    use netlink_packet_xfrm::XfrmMessage;

    /// XFRM_MSG_NEWPOLICY.
    const NEWPOLICY: u16 = 19;

    /// The kernel's answers to a policy dump, captured on the host (see
    /// the file's header): fwd, in, out of one tunnel; a plain packet from
    /// the router's side matched the in policy at 1796677931.
    fn captured() -> Vec<PolicyModify> {
        include_str!("../../testdata/policy_dump_use.hex")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let payload = hex::decode(l.trim()).unwrap();
                let mut h = NetlinkHeader::default();
                h.message_type = NEWPOLICY;
                match XfrmMessage::deserialize(&h, &payload).unwrap() {
                    XfrmMessage::AddPolicy(m) => m,
                    other => panic!("not a policy: {other:?}"),
                }
            })
            .collect()
    }

    #[test]
    fn a_kernel_dump_gives_each_policys_last_use_and_none_for_unused_ones() {
        let uses: Vec<PolicyUse> = captured().iter().filter_map(parse_policy_use).collect();
        let got: Vec<(Dir, u32, Option<u64>)> = uses.iter().map(|u| (u.id.dir, u.reqid, u.last_use)).collect();
        assert_eq!(
            got,
            vec![
                (Dir::Fwd, 0x5650_0001, None),
                (Dir::In, 0x5650_0001, Some(1_796_677_931)),
                (Dir::Out, 0x5650_0001, None),
            ]
        );
        assert_eq!(
            uses[1].id.to_string(),
            PolicyId {
                src: "10.64.0.5/32".parse().unwrap(),
                dst: "172.16.0.0/24".parse().unwrap(),
                dir: Dir::In,
            }
            .to_string()
        );
        assert!(is_inbound(&uses[1]) && !is_inbound(&uses[2]));
    }

    #[test]
    fn a_tunnels_last_use_is_the_latest_over_its_policies() {
        let u = |reqid, dir, last_use| PolicyUse {
            id: PolicyId {
                src: "10.64.0.5/32".parse().unwrap(),
                dst: "172.16.0.0/24".parse().unwrap(),
                dir,
            },
            reqid,
            last_use,
        };
        let m = last_use_by_reqid(&[
            u(1, Dir::In, Some(100)),
            u(1, Dir::Out, Some(250)),
            u(1, Dir::Fwd, None),
            u(2, Dir::In, None),
            u(2, Dir::Out, None),
        ]);
        assert_eq!(m, BTreeMap::from([(1, Some(250)), (2, None)]));
        let mut captured_uses: Vec<PolicyUse> = captured().iter().filter_map(parse_policy_use).collect();
        assert_eq!(last_use_by_reqid(&captured_uses)[&0x5650_0001], Some(1_796_677_931));
        captured_uses.retain(|u| !is_inbound(u));
        assert_eq!(last_use_by_reqid(&captured_uses)[&0x5650_0001], None);
    }
}
