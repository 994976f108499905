//! The gateway's tunnel filter (issue 18, item 1): a pure builder of
//! gatewayd's own table.
//!
//! The gateway's XFRM policies let any packet from a router's VPNNAT
//! addresses reach the whole center network, and a granted LAN host may
//! open connections toward the center. This table lets out of a tunnel
//! only replies to what the center side opened, plus an explicit
//! allow-list of center services:
//! ```text
//! table ip vpnnat_gw {
//!   set sources { type ipv4_addr; flags interval }  # the VPNNAT networks (optional)
//!   chain forward { filter: meta secpath exists jump tunnel
//!                           ip saddr @sources jump tunnel }
//!   chain input   { (the same two rules) }
//!   chain tunnel  { ct direction reply ct state established,related accept
//!                   meta secpath exists ip daddr A tcp dport P accept   # one per allow entry
//!                   counter drop }
//! }
//! ```
//! "From a tunnel" is either mark: decapsulated by an SA (`meta secpath`),
//! or a source in the configured VPNNAT networks (which also catches such
//! a source that did not come through an SA, and lets a host test drive
//! the chain with plain packets, the host having no ESP).
//!
//! The table is static: it changes only with the configuration (a
//! restart), never with a grant. "Only from the router's currently granted
//! VPNNAT addresses" is the kernel's XFRM inbound check, which runs on
//! every decapsulated packet (`ip_forward` before the forward hook, the
//! transport's receive after the input hook): a packet that left tunnel T
//! passes only if a policy of T has its source, i.e. one of the addresses
//! T currently carries (gatewayd installs one policy per address and
//! removes it with the grant), and is dropped otherwise
//! (`XfrmInTmplMismatch`/`XfrmInNoPols`). An allow entry therefore asks
//! for `meta secpath exists`: a plain packet with a VPNNAT source (from
//! the center LAN, spoofed) opens nothing. Only reply-direction packets
//! pass as "established": every packet of a connection a tunnel host
//! opened to an allow-listed service meets the allow rule and the XFRM
//! check again, so a revocation cuts it too.
//!
//! Why not a set of granted addresses kept in step with the tunnels (the
//! first version): every grant then cost an `nft` transaction inside
//! gatewayd's command path, serialised, which under load in the VM made
//! commands time out; and it only restated what the XFRM check enforces.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::net::Ipv4Addr;

use nftables::batch::Batch;
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, CT};
use nftables::schema::{Chain, Element, NfListObject, Nftables, Rule, Set, SetFlag, SetType, SetTypeValue, Table};

use crate::model::Ipv4Cidr;
use nftables::stmt::{Counter, JumpTarget, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

/// Default name of gatewayd's table.
pub const GATEWAY_TABLE: &str = "vpnnat_gw";
/// The chain that judges what came out of a tunnel.
pub const TUNNEL_CHAIN: &str = "tunnel";
/// The set of VPNNAT networks.
pub const GW_SOURCES_SET: &str = "sources";

/// A transport protocol of an allow-list entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum L4Proto {
    Tcp,
    Udp,
}

impl L4Proto {
    pub fn name(self) -> &'static str {
        match self {
            L4Proto::Tcp => "tcp",
            L4Proto::Udp => "udp",
        }
    }
}

/// One center service granted hosts may open connections to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TunnelAllow {
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: L4Proto,
}

impl fmt::Display for TunnelAllow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.address, self.port, self.protocol.name())
    }
}

/// gatewayd's filter table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayFilter {
    /// The table's name (tests use others to run side by side).
    pub table: String,
    /// The services granted hosts may open (empty: none).
    pub allow: Vec<TunnelAllow>,
    /// The VPNNAT networks: any source in them is judged as from a tunnel
    /// (empty: only decapsulated packets are).
    pub sources: Vec<Ipv4Cidr>,
}

fn s(v: impl ToString) -> Expression<'static> {
    Expression::String(Cow::Owned(v.to_string()))
}

fn field(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(PayloadField {
        protocol: Cow::Borrowed(protocol),
        field: Cow::Borrowed(field),
    })))
}

fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn ct(key: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: Cow::Borrowed(key),
        family: None,
        dir: None,
    }))
}

/// Decapsulated by an SA: the packet has passed (or, at input, will pass)
/// the XFRM inbound check against its tunnel's policies.
fn through_an_sa() -> Statement<'static> {
    eq(
        Expression::Named(NamedExpression::Meta(Meta { key: MetaKey::Secpath })),
        Expression::Boolean(true),
    )
}

impl GatewayFilter {
    pub fn new(allow: Vec<TunnelAllow>, sources: Vec<Ipv4Cidr>) -> Self {
        Self {
            table: GATEWAY_TABLE.to_string(),
            allow,
            sources,
        }
    }

    fn table(&self) -> Table<'static> {
        Table {
            family: NfFamily::IP,
            name: Cow::Owned(self.table.clone()),
            handle: None,
        }
    }

    /// An interval set of IPv4 networks.
    fn set(&self, name: &'static str) -> Set<'static> {
        Set {
            family: NfFamily::IP,
            table: Cow::Owned(self.table.clone()),
            name: Cow::Borrowed(name),
            set_type: SetTypeValue::Single(SetType::Ipv4Addr),
            flags: Some(HashSet::from([SetFlag::Interval])),
            ..Default::default()
        }
    }

    fn base_chain(&self, name: &'static str, hook: NfHook) -> Chain<'static> {
        Chain {
            family: NfFamily::IP,
            table: Cow::Owned(self.table.clone()),
            name: Cow::Borrowed(name),
            _type: Some(NfChainType::Filter),
            hook: Some(hook),
            prio: Some(0),
            policy: Some(NfChainPolicy::Accept),
            ..Default::default()
        }
    }

    fn rule(&self, chain: &'static str, expr: Vec<Statement<'static>>) -> Rule<'static> {
        Rule {
            family: NfFamily::IP,
            table: Cow::Owned(self.table.clone()),
            chain: Cow::Borrowed(chain),
            expr: Cow::Owned(expr),
            ..Default::default()
        }
    }

    /// Every rule, in order: the two jumps of each hook, then the tunnel
    /// chain.
    fn rules(&self) -> Vec<Rule<'static>> {
        let jump = || {
            Statement::Jump(JumpTarget {
                target: Cow::Borrowed(TUNNEL_CHAIN),
            })
        };
        let mut out = Vec::new();
        for hook in ["forward", "input"] {
            out.push(self.rule(hook, vec![through_an_sa(), jump()]));
            out.push(self.rule(
                hook,
                vec![eq(field("ip", "saddr"), s(format!("@{GW_SOURCES_SET}"))), jump()],
            ));
        }
        out.push(self.rule(
            TUNNEL_CHAIN,
            vec![
                eq(ct("direction"), s("reply")),
                Statement::Match(Match {
                    left: ct("state"),
                    right: Expression::List(vec![s("established"), s("related")]),
                    op: Operator::IN,
                }),
                Statement::Accept(None),
            ],
        ));
        for a in &self.allow {
            out.push(self.rule(
                TUNNEL_CHAIN,
                vec![
                    through_an_sa(),
                    eq(field("ip", "daddr"), s(a.address)),
                    eq(field(a.protocol.name(), "dport"), Expression::Number(u32::from(a.port))),
                    Statement::Accept(None),
                ],
            ));
        }
        out.push(self.rule(
            TUNNEL_CHAIN,
            vec![Statement::Counter(Counter::Anonymous(None)), Statement::Drop(None)],
        ));
        out
    }

    /// One transaction that (re)creates the table: "add table; delete
    /// table; add table …", atomic whether or not it existed (a restarted
    /// gatewayd).
    pub fn create(&self) -> Nftables<'static> {
        let mut b = Batch::new();
        b.add(NfListObject::Table(self.table()));
        b.delete(NfListObject::Table(self.table()));
        b.add(NfListObject::Table(self.table()));
        b.add(NfListObject::Set(Box::new(self.set(GW_SOURCES_SET))));
        b.add(NfListObject::Chain(self.base_chain("forward", NfHook::Forward)));
        b.add(NfListObject::Chain(self.base_chain("input", NfHook::Input)));
        b.add(NfListObject::Chain(Chain {
            family: NfFamily::IP,
            table: Cow::Owned(self.table.clone()),
            name: Cow::Borrowed(TUNNEL_CHAIN),
            ..Default::default()
        }));
        for r in self.rules() {
            b.add(NfListObject::Rule(r));
        }
        if !self.sources.is_empty() {
            b.add(NfListObject::Element(Element {
                family: NfFamily::IP,
                table: Cow::Owned(self.table.clone()),
                name: Cow::Borrowed(GW_SOURCES_SET),
                elem: Cow::Owned(
                    self.sources
                        .iter()
                        .map(|c| {
                            Expression::Named(NamedExpression::Prefix(Prefix {
                                addr: Box::new(s(c.addr())),
                                len: u32::from(c.prefix_len()),
                            }))
                        })
                        .collect(),
                ),
            }));
        }
        b.to_nftables()
    }

    /// Removes the table (idempotent: add, then delete).
    pub fn destroy(&self) -> Nftables<'static> {
        let mut b = Batch::new();
        b.add(NfListObject::Table(self.table()));
        b.delete(NfListObject::Table(self.table()));
        b.to_nftables()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn web() -> TunnelAllow {
        TunnelAllow {
            address: Ipv4Addr::new(172, 16, 0, 50),
            port: 8000,
            protocol: L4Proto::Tcp,
        }
    }

    fn cmds(n: &Nftables) -> Vec<Value> {
        serde_json::to_value(n).unwrap()["nftables"].as_array().unwrap().clone()
    }

    fn rules(n: &Nftables, chain: &str) -> Vec<Value> {
        cmds(n)
            .iter()
            .filter_map(|c| c["add"].get("rule"))
            .filter(|r| r["chain"] == chain)
            .map(|r| r["expr"].clone())
            .collect()
    }

    #[test]
    fn create_replaces_the_table_atomically() {
        let c = cmds(&GatewayFilter::new(vec![], vec!["10.64.0.0/16".parse().unwrap()]).create());
        assert_eq!(c[0], json!({"add": {"table": {"family": "ip", "name": "vpnnat_gw"}}}));
        assert_eq!(
            c[1],
            json!({"delete": {"table": {"family": "ip", "name": "vpnnat_gw"}}})
        );
        assert_eq!(c[2], json!({"add": {"table": {"family": "ip", "name": "vpnnat_gw"}}}));
        assert_eq!(
            c[3],
            json!({"add": {"set": {"family": "ip", "table": "vpnnat_gw", "name": "sources", "type": "ipv4_addr", "flags": ["interval"]}}})
        );
        let hooks: Vec<&Value> = c.iter().filter_map(|c| c["add"].get("chain")).collect();
        assert_eq!(hooks.len(), 3);
        assert!(hooks[..2]
            .iter()
            .all(|c| c["policy"] == "accept" && c["type"] == "filter" && c["prio"] == 0));
        assert_eq!(hooks[0]["hook"], "forward");
        assert_eq!(hooks[1]["hook"], "input");
        assert_eq!(hooks[2].get("hook"), None, "the tunnel chain is a regular chain");
        assert_eq!(
            c[c.len() - 1],
            json!({"add": {"element": {"family": "ip", "table": "vpnnat_gw", "name": "sources", "elem": [{"prefix": {"addr": "10.64.0.0", "len": 16}}]}}})
        );
        assert!(
            !serde_json::to_string(&c).unwrap().contains("granted"),
            "no per-grant state: the table is static"
        );
    }

    #[test]
    fn both_hooks_send_tunnel_traffic_to_the_tunnel_chain() {
        let n = GatewayFilter::new(vec![], vec![]).create();
        for hook in ["forward", "input"] {
            assert_eq!(
                rules(&n, hook),
                vec![
                    json!([{"match": {"op": "==", "left": {"meta": {"key": "secpath"}}, "right": true}}, {"jump": {"target": "tunnel"}}]),
                    json!([{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@sources"}}, {"jump": {"target": "tunnel"}}]),
                ]
            );
        }
    }

    #[test]
    fn without_an_allow_list_only_replies_pass_and_the_rest_is_counted_and_dropped() {
        let r = rules(&GatewayFilter::new(vec![], vec![]).create(), "tunnel");
        assert_eq!(
            r,
            vec![
                json!([
                    {"match": {"op": "==", "left": {"ct": {"key": "direction"}}, "right": "reply"}},
                    {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
                    {"accept": null}
                ]),
                json!([{"counter": null}, {"drop": null}]),
            ]
        );
    }

    #[test]
    fn each_allowed_service_is_open_only_to_packets_out_of_an_sa() {
        let dns = TunnelAllow {
            address: Ipv4Addr::new(172, 16, 0, 51),
            port: 69,
            protocol: L4Proto::Udp,
        };
        let r = rules(&GatewayFilter::new(vec![web(), dns], vec![]).create(), "tunnel");
        assert_eq!(r.len(), 4);
        assert_eq!(
            r[1],
            json!([
                {"match": {"op": "==", "left": {"meta": {"key": "secpath"}}, "right": true}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "172.16.0.50"}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 8000}},
                {"accept": null}
            ])
        );
        assert_eq!(r[2][2]["match"]["left"]["payload"]["protocol"], "udp");
        assert_eq!(r[2][2]["match"]["right"], 69);
        assert_eq!(r[3], json!([{"counter": null}, {"drop": null}]));
        assert_eq!(web().to_string(), "172.16.0.50:8000/tcp");
    }

    #[test]
    fn destroy_is_idempotent() {
        assert_eq!(
            serde_json::to_value(GatewayFilter::new(vec![web()], vec![]).destroy()).unwrap(),
            json!({"nftables": [
                {"add": {"table": {"family": "ip", "name": "vpnnat_gw"}}},
                {"delete": {"table": {"family": "ip", "name": "vpnnat_gw"}}}
            ]})
        );
    }
}
