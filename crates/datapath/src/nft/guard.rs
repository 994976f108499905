//! The WAN guard of a home router: a pure builder of its own small table.
//!
//! Without it the router forwards whatever a neighbour on the WAN segment
//! routes at it: a LAN host at its real address, or the router's LAN-side
//! pages (its LAN address is local to it, and Linux answers a local address
//! on any interface). The VPNNAT table only judges what came out of the
//! tunnel, so the plain WAN needs its own rule set:
//! ```text
//! table ip vpnnat_wan {
//!   chain input {   filter: iifname WAN ct state established,related accept
//!                           iifname WAN meta ipsec exists accept   # the VPNNAT table judges it
//!                           iifname WAN ip protocol esp accept      # ESP
//!                           iifname WAN udp dport { 500, 4500 } accept  # IKE, NAT-T
//!                           iifname WAN udp dport 68 accept         # DHCP client
//!                           iifname WAN ip protocol icmp accept     # errors, path MTU
//!                           iifname WAN drop }
//!   chain forward { filter: iifname WAN ct state established,related accept
//!                           iifname WAN meta ipsec exists accept
//!                           iifname WAN drop }
//! }
//! ```
//! A separate table so that the VPNNAT table keeps its one job (and its
//! transactions); an `accept` here does not bypass the VPNNAT table's drops
//! (every table's chain on a hook sees the packet).

use std::borrow::Cow;

use nftables::batch::Batch;
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, SetItem, CT};
use nftables::schema::{Chain, NfListObject, Nftables, Rule, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

/// Default name of the guard's table.
pub const GUARD_TABLE: &str = "vpnnat_wan";
/// UDP ports the router itself serves on the WAN: IKE and NAT-T.
pub const IKE_PORTS: [u32; 2] = [500, 4500];
/// The DHCP client's port (a WAN address from the ISP's DHCP server).
pub const DHCP_CLIENT_PORT: u32 = 68;

/// The guard for one WAN interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WanGuard {
    /// The table's name (tests use others to run side by side).
    pub table: String,
    /// The WAN interface's name.
    pub wan: String,
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

impl WanGuard {
    pub fn new(wan: &str) -> Self {
        Self {
            table: GUARD_TABLE.to_string(),
            wan: wan.to_string(),
        }
    }

    fn table(&self) -> Table<'static> {
        Table {
            family: NfFamily::IP,
            name: Cow::Owned(self.table.clone()),
            handle: None,
        }
    }

    fn chain(&self, name: &'static str, hook: NfHook) -> Chain<'static> {
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

    /// `iifname WAN <matches> <verdict>`.
    fn rule(&self, chain: &'static str, matches: Vec<Statement<'static>>, accept: bool) -> Rule<'static> {
        let mut expr = vec![eq(
            Expression::Named(NamedExpression::Meta(Meta { key: MetaKey::Iifname })),
            s(&self.wan),
        )];
        expr.extend(matches);
        expr.push(if accept {
            Statement::Accept(None)
        } else {
            Statement::Drop(None)
        });
        Rule {
            family: NfFamily::IP,
            table: Cow::Owned(self.table.clone()),
            chain: Cow::Borrowed(chain),
            expr: Cow::Owned(expr),
            ..Default::default()
        }
    }

    /// What both chains let in first: packets of connections the router
    /// or its LAN opened, and what came out of the tunnel.
    fn common(&self, chain: &'static str) -> Vec<Rule<'static>> {
        let established = Statement::Match(Match {
            left: Expression::Named(NamedExpression::CT(CT {
                key: Cow::Borrowed("state"),
                family: None,
                dir: None,
            })),
            right: Expression::List(vec![s("established"), s("related")]),
            op: Operator::IN,
        });
        let ipsec = eq(
            Expression::Named(NamedExpression::Meta(Meta { key: MetaKey::Secpath })),
            Expression::Boolean(true),
        );
        vec![
            self.rule(chain, vec![established], true),
            self.rule(chain, vec![ipsec], true),
        ]
    }

    /// One transaction that (re)creates the guard: "add table; delete
    /// table; add table …", atomic whether or not it existed.
    pub fn create(&self) -> Nftables<'static> {
        let mut b = Batch::new();
        b.add(NfListObject::Table(self.table()));
        b.delete(NfListObject::Table(self.table()));
        b.add(NfListObject::Table(self.table()));
        b.add(NfListObject::Chain(self.chain("input", NfHook::Input)));
        b.add(NfListObject::Chain(self.chain("forward", NfHook::Forward)));
        let mut rules = self.common("input");
        let ports = Expression::Named(NamedExpression::Set(
            IKE_PORTS
                .iter()
                .map(|p| SetItem::Element(Expression::Number(*p)))
                .collect(),
        ));
        rules.extend([
            self.rule("input", vec![eq(field("ip", "protocol"), s("esp"))], true),
            self.rule("input", vec![eq(field("udp", "dport"), ports)], true),
            self.rule(
                "input",
                vec![eq(field("udp", "dport"), Expression::Number(DHCP_CLIENT_PORT))],
                true,
            ),
            self.rule("input", vec![eq(field("ip", "protocol"), s("icmp"))], true),
            self.rule("input", vec![], false),
        ]);
        rules.extend(self.common("forward"));
        rules.push(self.rule("forward", vec![], false));
        for r in rules {
            b.add(NfListObject::Rule(r));
        }
        b.to_nftables()
    }

    /// Removes the guard (idempotent: add, then delete).
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

    fn rules(n: &Nftables) -> Vec<(String, Value)> {
        let j = serde_json::to_value(n).unwrap();
        j["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["add"].get("rule"))
            .map(|r| (r["chain"].as_str().unwrap().to_owned(), r["expr"].clone()))
            .collect()
    }

    #[test]
    fn create_replaces_the_table_atomically_with_two_accepting_chains() {
        let j = serde_json::to_value(WanGuard::new("eth0").create()).unwrap();
        let cmds = j["nftables"].as_array().unwrap();
        assert_eq!(
            cmds[0],
            json!({"add": {"table": {"family": "ip", "name": "vpnnat_wan"}}})
        );
        assert_eq!(
            cmds[1],
            json!({"delete": {"table": {"family": "ip", "name": "vpnnat_wan"}}})
        );
        let chains: Vec<&Value> = cmds.iter().filter_map(|c| c["add"].get("chain")).collect();
        assert_eq!(chains.len(), 2);
        assert!(chains
            .iter()
            .all(|c| c["policy"] == "accept" && c["type"] == "filter" && c["prio"] == 0));
    }

    #[test]
    fn every_rule_is_about_the_wan_and_each_chain_ends_in_a_drop() {
        let r = rules(&WanGuard::new("wan0").create());
        assert_eq!(r.len(), 10);
        for (_, expr) in &r {
            assert_eq!(
                expr[0],
                json!({"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "wan0"}})
            );
        }
        for chain in ["input", "forward"] {
            let mine: Vec<&Value> = r.iter().filter(|(c, _)| c == chain).map(|(_, e)| e).collect();
            assert_eq!(
                mine.last().unwrap().as_array().unwrap().last().unwrap(),
                &json!({"drop": null})
            );
            // Established/related first, then what came out of the tunnel.
            assert_eq!(
                mine[0][1],
                json!({"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}})
            );
            assert_eq!(
                mine[1][1],
                json!({"match": {"op": "==", "left": {"meta": {"key": "secpath"}}, "right": true}})
            );
        }
    }

    #[test]
    fn the_router_serves_only_ike_esp_dhcp_and_icmp_on_the_wan() {
        let r = rules(&WanGuard::new("eth0").create());
        let input: Vec<&Value> = r.iter().filter(|(c, _)| c == "input").map(|(_, e)| &e[1]).collect();
        assert_eq!(
            input[2..6],
            [
                &json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "protocol"}}, "right": "esp"}}),
                &json!({"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": {"set": [500, 4500]}}}),
                &json!({"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 68}}),
                &json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "protocol"}}, "right": "icmp"}}),
            ]
        );
        // forward: nothing but established and the tunnel.
        assert_eq!(r.iter().filter(|(c, _)| c == "forward").count(), 3);
    }

    #[test]
    fn destroy_is_idempotent_form() {
        assert_eq!(
            serde_json::to_value(WanGuard::new("eth0").destroy()).unwrap(),
            json!({"nftables": [
                {"add": {"table": {"family": "ip", "name": "vpnnat_wan"}}},
                {"delete": {"table": {"family": "ip", "name": "vpnnat_wan"}}}
            ]})
        );
    }
}
