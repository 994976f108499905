//! Pure builders of the nftables transactions for the VPNNAT table.
//!
//! The table (family `ip`, one per namespace, owned by the project):
//! ```text
//! table ip vpnnat {
//!   map dnat4 { type ipv4_addr : ipv4_addr }   # VPNNAT -> real (from the tunnel)
//!   map snat4 { type ipv4_addr : ipv4_addr }   # real -> VPNNAT (toward the center)
//!   set granted { type ipv4_addr; counter }    # real hosts the tunnel may reach
//!   set center { type ipv4_addr; flags interval }  # the center's networks
//!   chain prerouting  { nat dstnat:  meta ipsec exists dnat ip to ip daddr map @dnat4 }
//!   chain postrouting { nat srcnat:  ct status dnat ip daddr @granted oifname LAN ip saddr LANPREFIX masquerade  # a router's, see LanSide
//!                                    ip daddr @center snat ip to ip saddr map @snat4 }
//!   chain forward { filter: meta ipsec exists tcp option maxseg size > 1360 tcp option maxseg size set 1360
//!                           meta ipsec exists ct status dnat ip daddr @granted accept
//!                           meta ipsec exists ct direction reply ct status snat ip daddr @granted accept
//!                           meta ipsec exists drop
//!                           ip daddr @center ip saddr @granted }
//!   chain input   { filter: (the same rules but the last) }
//! }
//! ```
//! Each element of `granted` carries a counter (the set's `counter`, which
//! the kernel copies into every element however it is added): every
//! lookup that finds the host counts the packet. The filter rules look it
//! up for each packet out of the tunnel to the host, and the last forward
//! rule for each packet from the host toward the center (its answers and
//! its own connections, both SNAT'd into the tunnel), so the counter is
//! the traffic through that host's mapping both ways, which the router's
//! LAN page shows ([`super::counters`]).
//! Rules never change after creation: granting or revoking a host only adds
//! or deletes elements of the two maps and the set, in one transaction, so a
//! change costs the same with ten mappings or a hundred thousand.

use std::borrow::Cow;
use std::collections::HashSet;

use nftables::batch::Batch;
use nftables::expr::{
    Expression, Map as MapExpr, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, TcpOption, CT,
};
use nftables::schema::{
    Chain, Element, Map, NfCmd, NfListObject, Nftables, Rule, Set, SetFlag, SetType, SetTypeValue, Table,
};
use nftables::stmt::{Mangle, Match, Operator, Statement, NAT};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::model::{Ipv4Cidr, Mapping};

/// Default name of the project's table.
pub const TABLE: &str = "vpnnat";
pub const DNAT_MAP: &str = "dnat4";
pub const SNAT_MAP: &str = "snat4";
pub const GRANTED_SET: &str = "granted";
pub const CENTER_SET: &str = "center";
/// TCP MSS for connections through the tunnel: 1500 (WAN MTU) - 20 (outer
/// IP) - 8 (UDP, when NAT-T) - 8 (ESP header) - 8 (GCM IV) - 16 (ICV) - 2
/// (trailer) - 3 (padding) - 40 (inner IP + TCP) = 1395, rounded down.
pub const TUNNEL_MSS: u32 = 1360;

/// Names the project's table; tests use other names to run side by side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatTable {
    pub name: String,
    /// The home LAN, when the table is a router's: its connections from a
    /// center address that lies inside the LAN itself are masqueraded
    /// (see [`LanSide`]).
    pub lan: Option<LanSide>,
}

/// A router's LAN interface and prefix (issue 17 item 6).
///
/// Homes number their LANs as they like, some with the very range the
/// operators sit in. A LAN host that gets a connection from an operator
/// address inside its own prefix answers on-link (ARP) and never through
/// the router. So a connection that came out of the tunnel through DNAT
/// and leaves on the LAN interface with a source inside the LAN prefix
/// leaves from the router's LAN address instead (masquerade); conntrack
/// turns the replies back. Decided per packet from the prefix, so a LAN
/// that overlaps no center network is never touched, and a partial
/// overlap masquerades only the overlapping sources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LanSide {
    pub interface: String,
    pub prefix: Ipv4Cidr,
}

impl Default for NatTable {
    fn default() -> Self {
        Self {
            name: TABLE.to_string(),
            lan: None,
        }
    }
}

fn s(v: impl ToString) -> Expression<'static> {
    Expression::String(Cow::Owned(v.to_string()))
}

fn payload(field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(PayloadField {
        protocol: Cow::Borrowed("ip"),
        field: Cow::Borrowed(field),
    })))
}

fn ipsec_exists() -> Statement<'static> {
    // `meta ipsec exists`: the packet was decapsulated by an XFRM SA.
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::Meta(Meta { key: MetaKey::Secpath })),
        right: Expression::Boolean(true),
        op: Operator::EQ,
    })
}

fn map_elem(k: impl ToString, v: impl ToString) -> Expression<'static> {
    Expression::List(vec![s(k), s(v)])
}

fn cidr_elem(c: &Ipv4Cidr) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(s(c.addr())),
        len: u32::from(c.prefix_len()),
    }))
}

impl NatTable {
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_string(),
            lan: None,
        }
    }

    /// The same table on a router whose LAN is `lan`.
    #[must_use]
    pub fn with_lan(self, lan: LanSide) -> Self {
        Self { lan: Some(lan), ..self }
    }

    /// `ct status dnat ip daddr @granted oifname LAN ip saddr PREFIX
    /// masquerade`: see [`LanSide`].
    fn lan_overlap_rule(&self) -> Option<Rule<'static>> {
        let lan = self.lan.as_ref()?;
        // No `meta ipsec exists` here: the kernel accepts secpath matches
        // only in prerouting, input and forward. A DNAT'd connection to a
        // granted host is the tunnel's (the only DNAT of this table).
        Some(self.rule(
            "postrouting",
            vec![
                Statement::Match(Match {
                    left: Expression::Named(NamedExpression::CT(CT {
                        key: Cow::Borrowed("status"),
                        family: None,
                        dir: None,
                    })),
                    right: s("dnat"),
                    op: Operator::IN,
                }),
                Statement::Match(Match {
                    left: payload("daddr"),
                    right: s(format!("@{GRANTED_SET}")),
                    op: Operator::EQ,
                }),
                Statement::Match(Match {
                    left: Expression::Named(NamedExpression::Meta(Meta { key: MetaKey::Oifname })),
                    right: s(&lan.interface),
                    op: Operator::EQ,
                }),
                Statement::Match(Match {
                    left: payload("saddr"),
                    right: cidr_elem(&lan.prefix),
                    op: Operator::EQ,
                }),
                Statement::Masquerade(None),
            ],
        ))
    }

    fn table(&self) -> Table<'static> {
        Table {
            family: NfFamily::IP,
            name: Cow::Owned(self.name.clone()),
            handle: None,
        }
    }

    fn map(&self, name: &'static str) -> Map<'static> {
        Map {
            family: NfFamily::IP,
            table: Cow::Owned(self.name.clone()),
            name: Cow::Borrowed(name),
            set_type: SetTypeValue::Single(SetType::Ipv4Addr),
            map: SetTypeValue::Single(SetType::Ipv4Addr),
            ..Default::default()
        }
    }

    fn set(&self, name: &'static str, interval: bool) -> Set<'static> {
        Set {
            family: NfFamily::IP,
            table: Cow::Owned(self.name.clone()),
            name: Cow::Borrowed(name),
            set_type: SetTypeValue::Single(SetType::Ipv4Addr),
            flags: interval.then(|| HashSet::from([SetFlag::Interval])),
            ..Default::default()
        }
    }

    fn chain(&self, name: &'static str, ty: NfChainType, hook: NfHook, prio: i32) -> Chain<'static> {
        Chain {
            family: NfFamily::IP,
            table: Cow::Owned(self.name.clone()),
            name: Cow::Borrowed(name),
            _type: Some(ty),
            hook: Some(hook),
            prio: Some(prio),
            policy: Some(NfChainPolicy::Accept),
            ..Default::default()
        }
    }

    fn rule(&self, chain: &'static str, expr: Vec<Statement<'static>>) -> Rule<'static> {
        Rule {
            family: NfFamily::IP,
            table: Cow::Owned(self.name.clone()),
            chain: Cow::Borrowed(chain),
            expr: Cow::Owned(expr),
            ..Default::default()
        }
    }

    fn element(&self, set: &'static str, elems: Vec<Expression<'static>>) -> Element<'static> {
        Element {
            family: NfFamily::IP,
            table: Cow::Owned(self.name.clone()),
            name: Cow::Borrowed(set),
            elem: Cow::Owned(elems),
        }
    }

    /// The filter rules shared by forward and input: from the tunnel, only
    /// traffic to a granted host passes, and only as part of a connection
    /// the NAT table made: one the center opened through DNAT, or the reply
    /// to one a granted host opened toward the center through SNAT. A packet
    /// aimed at a real LAN address (never DNAT'd) is dropped even if some
    /// IPsec policy let it in.
    fn tunnel_filter(&self, chain: &'static str) -> Vec<Rule<'static>> {
        let ct = |key: &'static str| {
            Expression::Named(NamedExpression::CT(CT {
                key: Cow::Borrowed(key),
                family: None,
                dir: None,
            }))
        };
        let to_granted = || {
            Statement::Match(Match {
                left: payload("daddr"),
                right: s(format!("@{GRANTED_SET}")),
                op: Operator::EQ,
            })
        };
        let maxseg = || {
            Expression::Named(NamedExpression::TcpOption(TcpOption {
                name: Cow::Borrowed("maxseg"),
                field: Some(Cow::Borrowed("size")),
            }))
        };
        vec![
            // MSS clamp for connections through the tunnel: a full-size
            // segment plus the ESP tunnel overhead exceeds the WAN MTU, and
            // for the router's own sockets (server part, reached after
            // DNAT) the kernel's "too big" after the post-SNAT policy
            // lookup never reaches TCP, so large answers would black-hole.
            // SYN and SYN-ACK are the segments that carry the option.
            self.rule(
                chain,
                vec![
                    ipsec_exists(),
                    Statement::Match(Match {
                        left: maxseg(),
                        right: Expression::Number(TUNNEL_MSS),
                        // nftables 0.6 swaps the names: its `LT` is ">"
                        // (the test below pins the JSON, so a fixed crate
                        // shows up there).
                        op: Operator::LT,
                    }),
                    Statement::Mangle(Mangle {
                        key: maxseg(),
                        value: Expression::Number(TUNNEL_MSS),
                    }),
                ],
            ),
            self.rule(
                chain,
                vec![
                    ipsec_exists(),
                    Statement::Match(Match {
                        left: ct("status"),
                        right: s("dnat"),
                        op: Operator::IN,
                    }),
                    to_granted(),
                    Statement::Accept(None),
                ],
            ),
            self.rule(
                chain,
                vec![
                    ipsec_exists(),
                    Statement::Match(Match {
                        left: ct("direction"),
                        right: s("reply"),
                        op: Operator::EQ,
                    }),
                    Statement::Match(Match {
                        left: ct("status"),
                        right: s("snat"),
                        op: Operator::IN,
                    }),
                    to_granted(),
                    Statement::Accept(None),
                ],
            ),
            self.rule(chain, vec![ipsec_exists(), Statement::Drop(None)]),
        ]
    }

    /// `ip daddr @center ip saddr @granted`, no verdict: only its lookup
    /// counts, in the host's element, what the host sends toward the
    /// center. The center test comes first, so a granted host's other
    /// traffic (the home's Internet) is not counted.
    fn count_from_granted(&self) -> Rule<'static> {
        self.rule(
            "forward",
            vec![
                Statement::Match(Match {
                    left: payload("daddr"),
                    right: s(format!("@{CENTER_SET}")),
                    op: Operator::EQ,
                }),
                Statement::Match(Match {
                    left: payload("saddr"),
                    right: s(format!("@{GRANTED_SET}")),
                    op: Operator::EQ,
                }),
            ],
        )
    }

    /// One transaction that (re)creates the whole table with `center` and
    /// `mappings` in it. "add table; delete table; add table …" makes it
    /// work whether or not the table exists, atomically: readers see the old
    /// table or the new one, never none.
    ///
    /// JSON rather than the crate's types: the `granted` set's `counter`
    /// (`"stmt"`) has no field there (nftables 0.6), `nft` 1.0.6 takes it.
    pub fn create(&self, center: &[Ipv4Cidr], mappings: &[Mapping]) -> serde_json::Value {
        let mut v = serde_json::to_value(self.create_typed(center, mappings)).unwrap_or_default();
        if let Some(cmds) = v.get_mut("nftables").and_then(|c| c.as_array_mut()) {
            for c in cmds {
                if let Some(set) = c.pointer_mut("/add/set").and_then(|s| s.as_object_mut()) {
                    if set.get("name").and_then(|n| n.as_str()) == Some(GRANTED_SET) {
                        set.insert("stmt".into(), serde_json::json!([{ "counter": null }]));
                    }
                }
            }
        }
        v
    }

    fn create_typed(&self, center: &[Ipv4Cidr], mappings: &[Mapping]) -> Nftables<'static> {
        let mut b = Batch::new();
        b.add(NfListObject::Table(self.table()));
        b.delete(NfListObject::Table(self.table()));
        b.add(NfListObject::Table(self.table()));
        b.add(NfListObject::Map(Box::new(self.map(DNAT_MAP))));
        b.add(NfListObject::Map(Box::new(self.map(SNAT_MAP))));
        b.add(NfListObject::Set(Box::new(self.set(GRANTED_SET, false))));
        b.add(NfListObject::Set(Box::new(self.set(CENTER_SET, true))));
        b.add(NfListObject::Chain(self.chain(
            "prerouting",
            NfChainType::NAT,
            NfHook::Prerouting,
            -100,
        )));
        b.add(NfListObject::Chain(self.chain(
            "postrouting",
            NfChainType::NAT,
            NfHook::Postrouting,
            100,
        )));
        b.add(NfListObject::Chain(self.chain(
            "forward",
            NfChainType::Filter,
            NfHook::Forward,
            0,
        )));
        b.add(NfListObject::Chain(self.chain(
            "input",
            NfChainType::Filter,
            NfHook::Input,
            0,
        )));
        b.add(NfListObject::Rule(self.rule(
            "prerouting",
            vec![
                ipsec_exists(),
                Statement::DNAT(Some(NAT {
                    addr: Some(Expression::Named(NamedExpression::Map(Box::new(MapExpr {
                        key: payload("daddr"),
                        data: s(format!("@{DNAT_MAP}")),
                    })))),
                    family: None,
                    port: None,
                    flags: None,
                })),
            ],
        )));
        if let Some(r) = self.lan_overlap_rule() {
            b.add(NfListObject::Rule(r));
        }
        b.add(NfListObject::Rule(self.rule(
            "postrouting",
            vec![
                Statement::Match(Match {
                    left: payload("daddr"),
                    right: s(format!("@{CENTER_SET}")),
                    op: Operator::EQ,
                }),
                Statement::SNAT(Some(NAT {
                    addr: Some(Expression::Named(NamedExpression::Map(Box::new(MapExpr {
                        key: payload("saddr"),
                        data: s(format!("@{SNAT_MAP}")),
                    })))),
                    family: None,
                    port: None,
                    flags: None,
                })),
            ],
        )));
        for r in self
            .tunnel_filter("forward")
            .into_iter()
            .chain([self.count_from_granted()])
            .chain(self.tunnel_filter("input"))
        {
            b.add(NfListObject::Rule(r));
        }
        if !center.is_empty() {
            b.add(NfListObject::Element(
                self.element(CENTER_SET, center.iter().map(cidr_elem).collect()),
            ));
        }
        self.push_mappings(&mut b, mappings, true);
        b.to_nftables()
    }

    fn push_mappings(&self, b: &mut Batch<'static>, mappings: &[Mapping], add: bool) {
        if mappings.is_empty() {
            return;
        }
        let dnat = self.element(DNAT_MAP, mappings.iter().map(|m| map_elem(m.vpnnat, m.real)).collect());
        let snat = self.element(SNAT_MAP, mappings.iter().map(|m| map_elem(m.real, m.vpnnat)).collect());
        let granted = self.element(GRANTED_SET, mappings.iter().map(|m| s(m.real)).collect());
        for e in [dnat, snat, granted] {
            if add {
                b.add(NfListObject::Element(e));
            } else {
                b.delete(NfListObject::Element(e));
            }
        }
    }

    /// One transaction adding `mappings` (elements only).
    pub fn add_mappings(&self, mappings: &[Mapping]) -> Nftables<'static> {
        let mut b = Batch::new();
        self.push_mappings(&mut b, mappings, true);
        b.to_nftables()
    }

    /// One transaction deleting `mappings` (elements only). Deleting an
    /// element that is absent fails the whole transaction, which is what
    /// keeps the three containers in step.
    pub fn remove_mappings(&self, mappings: &[Mapping]) -> Nftables<'static> {
        let mut b = Batch::new();
        self.push_mappings(&mut b, mappings, false);
        b.to_nftables()
    }

    /// One transaction replacing the center networks.
    pub fn set_center(&self, center: &[Ipv4Cidr]) -> Nftables<'static> {
        let mut b = Batch::new();
        b.add_cmd(NfCmd::Flush(nftables::schema::FlushObject::Set(Box::new(
            self.set(CENTER_SET, true),
        ))));
        if !center.is_empty() {
            b.add(NfListObject::Element(
                self.element(CENTER_SET, center.iter().map(cidr_elem).collect()),
            ));
        }
        b.to_nftables()
    }

    /// One transaction removing the table (and with it every mapping).
    /// "add; delete" makes it succeed when the table is already gone.
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

    fn m(v: &str, r: &str) -> Mapping {
        Mapping {
            vpnnat: v.parse().unwrap(),
            real: r.parse().unwrap(),
        }
    }

    fn to_json(n: &impl serde::Serialize) -> Value {
        serde_json::to_value(n).unwrap()
    }

    fn postrouting(t: &NatTable) -> Vec<Value> {
        to_json(&t.create(&[], &[]))["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["add"].get("rule"))
            .filter(|r| r["chain"] == "postrouting")
            .map(|r| r["expr"].clone())
            .collect()
    }

    /// Issue 17 item 6: a router's table masquerades, toward its LAN, the
    /// tunnel's DNAT'd connections whose source lies in the LAN prefix,
    /// before the SNAT rule; without a LAN (a plain table) nothing changes.
    #[test]
    fn a_routers_table_masquerades_sources_inside_its_lan_first() {
        let plain = postrouting(&NatTable::default());
        assert_eq!(plain.len(), 1);
        let t = NatTable::default().with_lan(LanSide {
            interface: "br-lan".into(),
            prefix: "172.16.0.0/24".parse().unwrap(),
        });
        let rules = postrouting(&t);
        assert_eq!(rules.len(), 2);
        assert_eq!(
            rules[0],
            json!([
                {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@granted"}},
                {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "br-lan"}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "172.16.0.0", "len": 24}}}},
                {"masquerade": null}
            ])
        );
        assert_eq!(rules[1], plain[0], "the SNAT rule follows unchanged");
    }

    #[test]
    fn add_mapping_touches_only_elements() {
        let t = NatTable::default();
        let j = to_json(&t.add_mappings(&[m("10.64.0.5", "192.168.1.10")]));
        assert_eq!(
            j,
            json!({"nftables": [
                {"add": {"element": {"family": "ip", "table": "vpnnat", "name": "dnat4", "elem": [["10.64.0.5", "192.168.1.10"]]}}},
                {"add": {"element": {"family": "ip", "table": "vpnnat", "name": "snat4", "elem": [["192.168.1.10", "10.64.0.5"]]}}},
                {"add": {"element": {"family": "ip", "table": "vpnnat", "name": "granted", "elem": ["192.168.1.10"]}}}
            ]})
        );
    }

    #[test]
    fn remove_mapping_deletes_the_same_elements() {
        let t = NatTable::named("t1");
        let j = to_json(&t.remove_mappings(&[m("10.64.0.5", "192.168.1.10"), m("10.64.0.6", "192.168.1.11")]));
        let cmds = j["nftables"].as_array().unwrap();
        assert_eq!(cmds.len(), 3);
        for c in cmds {
            assert!(c.get("delete").is_some(), "{c}");
            assert_eq!(c["delete"]["element"]["table"], "t1");
            assert_eq!(c["delete"]["element"]["elem"].as_array().unwrap().len(), 2);
        }
    }

    #[test]
    fn empty_change_is_an_empty_transaction() {
        let t = NatTable::default();
        assert_eq!(to_json(&t.add_mappings(&[])), json!({"nftables": []}));
    }

    #[test]
    fn create_builds_the_documented_table() {
        let t = NatTable::default();
        let j = to_json(&t.create(&["172.16.0.0/24".parse().unwrap()], &[m("10.64.0.5", "192.168.1.10")]));
        let cmds = j["nftables"].as_array().unwrap();
        // add/delete/add table first, so the transaction replaces atomically.
        assert!(cmds[0]["add"]["table"].is_object());
        assert!(cmds[1]["delete"]["table"].is_object());
        let rules: Vec<&Value> = cmds.iter().filter_map(|c| c["add"].get("rule")).collect();
        assert_eq!(rules.len(), 11);
        // The granted hosts' elements count their traffic, both ways.
        let granted = cmds
            .iter()
            .find_map(|c| c["add"].get("set").filter(|s| s["name"] == "granted"))
            .unwrap();
        assert_eq!(granted["stmt"], json!([{"counter": null}]));
        let last_forward = rules.iter().rev().find(|r| r["chain"] == "forward").unwrap();
        assert_eq!(
            last_forward["expr"],
            json!([
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@center"}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@granted"}}
            ])
        );
        // The MSS clamp comes first in both filter chains.
        for chain in ["forward", "input"] {
            let first = rules.iter().find(|r| r["chain"] == chain).unwrap();
            assert_eq!(
                first["expr"],
                json!([
                    {"match": {"op": "==", "left": {"meta": {"key": "secpath"}}, "right": true}},
                    {"match": {"op": ">", "left": {"tcp option": {"name": "maxseg", "field": "size"}}, "right": 1360}},
                    {"mangle": {"key": {"tcp option": {"name": "maxseg", "field": "size"}}, "value": 1360}}
                ])
            );
        }
        let pre = rules.iter().find(|r| r["chain"] == "prerouting").unwrap();
        assert_eq!(
            pre["expr"],
            json!([
                {"match": {"op": "==", "left": {"meta": {"key": "secpath"}}, "right": true}},
                {"dnat": {"addr": {"map": {"key": {"payload": {"protocol": "ip", "field": "daddr"}}, "data": "@dnat4"}}}}
            ])
        );
        let post = rules.iter().find(|r| r["chain"] == "postrouting").unwrap();
        assert_eq!(post["expr"][1]["snat"]["addr"]["map"]["data"], "@snat4");
        let center = cmds
            .iter()
            .find_map(|c| c["add"].get("element").filter(|e| e["name"] == "center"))
            .unwrap();
        assert_eq!(center["elem"], json!([{"prefix": {"addr": "172.16.0.0", "len": 24}}]));
        let chains: Vec<&Value> = cmds.iter().filter_map(|c| c["add"].get("chain")).collect();
        assert_eq!(chains.len(), 4);
        assert!(chains.iter().all(|c| c["policy"] == "accept"));
    }

    #[test]
    fn destroy_is_idempotent_form() {
        let j = to_json(&NatTable::default().destroy());
        assert_eq!(
            j,
            json!({"nftables": [
                {"add": {"table": {"family": "ip", "name": "vpnnat"}}},
                {"delete": {"table": {"family": "ip", "name": "vpnnat"}}}
            ]})
        );
    }
}
