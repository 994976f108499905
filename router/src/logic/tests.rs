use std::collections::BTreeMap;

use ring::rand::SystemRandom;
use vpnnat_datapath::{Datapath, Dir, RecordingDatapath};
use vpnnat_proto::auth::{MemoryNonceStore, ReplayConfig};
use vpnnat_proto::keys::{SecretBytes, SecretId2};
use vpnnat_proto::types::{
    ClaimantLevel, ClaimantName, Phone, RequestContent, Urgency, ROUTER_PART_NAME, SERVER_PART_NAME,
};

use super::*;
use crate::config::tests::sample_config;
use crate::resolve::NoDns;
use crate::testing::{FakeCenter, NOW};

struct World {
    id: Identity,
    secret_id: SecretId,
    statics: BTreeMap<TerminalName, Ipv4Addr>,
    center: FakeCenter,
    state: RouterState,
    rng: SystemRandom,
}

fn n(s: &str) -> TerminalName {
    TerminalName::new(s).unwrap()
}

impl World {
    fn new() -> Self {
        let cfg = sample_config();
        World {
            id: Identity::from_config(&cfg),
            secret_id: cfg.factory_secret.clone(),
            statics: cfg.hosts.clone(),
            center: FakeCenter::new("router-1", cfg.factory_secret.clone()),
            state: RouterState::default(),
            rng: SystemRandom::new(),
        }
    }

    fn resolver(&self) -> Resolver<'_, NoDns> {
        resolver(&self.statics, &self.id.lan)
    }

    fn install(&mut self) {
        let p = begin_install(&self.id, &self.secret_id, &self.state, &self.rng, NOW).unwrap();
        let reply = self.center.answer(&p.outgoing);
        self.state = finish_install(&self.id, &self.secret_id, &self.state, p, &reply, &self.rng).unwrap();
    }

    fn gateway(&mut self) {
        let p = begin_gateway(&self.id, &self.state, &self.rng, NOW).unwrap();
        let reply = self.center.answer(&p.outgoing);
        self.state = finish_gateway(&self.id, &self.state, p, &reply).unwrap();
    }

    fn request(&mut self, names: &[&str]) -> Result<Accepted, ExchangeError> {
        self.request_input(&input(names))
    }

    fn request_input(&mut self, input: &MaintenanceInput) -> Result<Accepted, ExchangeError> {
        let r = resolver(&self.statics, &self.id.lan);
        let p = begin_maintenance(&self.id, &self.state, input, &r, &self.rng, NOW)?;
        let reply = self.center.answer(&p.outgoing);
        let (next, acc) = finish_maintenance(&self.id, &self.state, p, &reply, &r, NOW)?;
        self.state = next;
        Ok(acc)
    }

    fn command(
        &mut self,
        guard: &mut ReplayGuard<MemoryNonceStore>,
        out: &Outgoing,
    ) -> Result<CommandOutcome, CommandError> {
        handle_center_command(
            &self.id,
            &self.state,
            guard,
            IncomingCommand::from_outgoing(out),
            NOW,
            &self.rng,
        )
    }

    fn ready() -> Self {
        let mut w = World::new();
        w.install();
        w.gateway();
        w
    }
}

/// `router_part_address` of the sample configuration (its WAN address).
const ROUTER_PART: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 101);

fn resolver<'a>(statics: &'a BTreeMap<TerminalName, Ipv4Addr>, lan: &'a Interface) -> Resolver<'a, NoDns> {
    Resolver {
        statics,
        leases: crate::resolve::parse_leases("0 aa 192.168.1.60 laptop *\n"),
        now: NOW,
        dns: NoDns,
        lan,
        router_part: ROUTER_PART,
    }
}

fn input(names: &[&str]) -> MaintenanceInput {
    MaintenanceInput {
        claimant_name: ClaimantName::new("Taro").unwrap(),
        claimant_level: ClaimantLevel::General,
        urgency: Urgency::High,
        phone: Phone::new("03-1234-5678").unwrap(),
        content: RequestContent::new("printer is offline").unwrap(),
        terminals: names.iter().map(|s| n(s)).collect(),
        for_failure: None,
    }
}

fn guard() -> ReplayGuard<MemoryNonceStore> {
    ReplayGuard::new(MemoryNonceStore::default(), ReplayConfig::default())
}

fn snapshot(s: &RouterState) -> Vec<u8> {
    s.to_bytes().unwrap().to_vec()
}

#[test]
fn install_stores_secrets_and_maps_own_parts() {
    let mut w = World::new();
    w.install();
    let inst = w.state.installation.as_ref().unwrap();
    assert_eq!(inst.secret_id2.expose_secret(), &[0x22; 32]);
    assert_eq!(inst.psk.expose_secret(), &[0x33; 32]);
    assert!(inst.maintenance_password_hash.verify("maintenance-pw"));
    let d = desired_state(&w.id, &w.state, vec![]);
    let nat = d.nat.unwrap();
    assert_eq!(nat.mappings.len(), 2);
    assert!(nat.mappings.contains(&Mapping {
        vpnnat: inst.server_part_vpnnat,
        real: Ipv4Addr::new(192, 168, 1, 1)
    }));
    // No gateway yet: no policies, and the IKE responder accepts nobody.
    assert!(d.policies.is_empty());
    assert!(ike_settings(&w.id, &w.state).is_none());
}

#[test]
fn install_answer_with_wrong_key_or_status_changes_nothing() {
    let mut w = World::new();
    let p = begin_install(&w.id, &w.secret_id, &w.state, &w.rng, NOW).unwrap();
    let mut reply = w.center.answer(&p.outgoing);
    reply.body.push(b' ');
    let e = finish_install(&w.id, &w.secret_id, &w.state, p, &reply, &w.rng).unwrap_err();
    assert!(matches!(e, ExchangeError::BadAnswer(ProtoError::BadMac)), "{e}");

    let p = begin_install(&w.id, &w.secret_id, &w.state, &w.rng, NOW).unwrap();
    w.center.refuse = Some((503, "database down".into()));
    let reply = w.center.answer(&p.outgoing);
    let e = finish_install(&w.id, &w.secret_id, &w.state, p, &reply, &w.rng).unwrap_err();
    assert!(e.is_transient() && e.to_string().contains("database down"), "{e}");
    assert!(w.state.installation.is_none());
}

/// Issue 18, item 5: an installed router proves its current Secret(ID2)
/// in the installation notice (a first installation has nothing to prove),
/// and "pending operator approval" (423) is retried, not given up.
#[test]
fn reinstall_notice_proves_the_current_secret_id2_and_pending_is_retried() {
    use vpnnat_proto::reinstall::ReinstallProof;
    let mut w = World::new();
    let p = begin_install(&w.id, &w.secret_id, &w.state, &w.rng, NOW).unwrap();
    let first: InstallRequest = serde_json::from_slice(&p.outgoing.body).unwrap();
    assert!(first.proof.is_none());
    assert!(
        !String::from_utf8_lossy(&p.outgoing.body).contains("proof"),
        "old centers still parse it"
    );
    w.install();
    let sid2 = w.state.installation.as_ref().unwrap().secret_id2.clone();
    let p = begin_install(&w.id, &w.secret_id, &w.state, &w.rng, NOW).unwrap();
    let again: InstallRequest = serde_json::from_slice(&p.outgoing.body).unwrap();
    let proof: ReinstallProof = again.proof.unwrap();
    assert!(proof.verify(&sid2, &w.id.terminal_id, &again.reply_key));
    w.center.refuse = Some((423, "re-installation pending operator approval".into()));
    let reply = w.center.answer(&p.outgoing);
    let e = finish_install(&w.id, &w.secret_id, &w.state, p, &reply, &w.rng).unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(e.to_string().contains("pending operator approval"), "{e}");
    assert_eq!(
        w.state.installation.as_ref().unwrap().secret_id2.expose_secret(),
        sid2.expose_secret()
    );
}

#[test]
fn exchanges_before_installation_are_refused() {
    let w = World::new();
    assert!(matches!(
        begin_gateway(&w.id, &w.state, &w.rng, NOW),
        Err(ExchangeError::NotInstalled)
    ));
    assert!(matches!(
        begin_failure(&w.id, &w.state, FailureCode::Ipsec, "x", &w.rng, NOW),
        Err(ExchangeError::NotInstalled)
    ));
}

#[test]
fn failure_notice_reaches_the_center_and_is_recorded() {
    let mut w = World::new();
    w.install();
    let p = begin_failure(&w.id, &w.state, FailureCode::Ipsec, "charon\u{7} died", &w.rng, NOW).unwrap();
    let reply = w.center.answer(&p.outgoing);
    w.state = finish_failure(&w.state, p, &reply).unwrap();
    assert_eq!(w.center.failures.len(), 1);
    assert_eq!(w.center.failures[0].detail.as_str(), "charon died");
    assert_eq!(w.state.last_failure.as_ref().unwrap().code, FailureCode::Ipsec);
}

#[test]
fn gateway_request_sets_peer_and_policies() {
    let w = World::ready();
    let gw = w.state.gateway.as_ref().unwrap();
    assert_eq!(gw.ip, FakeCenter::gateway_ip());
    let s = ike_settings(&w.id, &w.state).unwrap();
    assert_eq!(s.peer, FakeCenter::gateway_ip());
    assert_eq!(s.local_ts.len(), 2);
    assert_eq!(s.remote_ts, vec!["172.16.0.0/24".parse::<Ipv4Cidr>().unwrap()]);
    assert!(!format!("{s:?}").contains("51, 51"), "PSK must not print");
    // 2 own addresses x 1 center net x 3 directions
    let d = desired_state(&w.id, &w.state, vec![]);
    assert_eq!(d.policies.len(), 6);
    let out = d.policies.iter().find(|p| p.id.dir == Dir::Out).unwrap();
    assert_eq!(out.tmpl_src, w.id.wan_address);
    assert_eq!(out.tmpl_dst, gw.ip);
    assert_eq!(out.reqid, TUNNEL_REQID);
    assert_eq!(out.id.src.prefix_len(), 32);
}

#[test]
fn maintenance_grants_install_mappings() {
    let mut w = World::ready();
    let acc = w.request(&["pc1", "laptop"]).unwrap();
    assert_eq!(acc.acceptance_number.get(), 101);
    assert_eq!(acc.grants.len(), 2);
    let pc1 = &w.state.hosts[&n("pc1")];
    assert_eq!(pc1.real, Ipv4Addr::new(192, 168, 1, 10));
    assert_eq!(w.state.hosts[&n("laptop")].real, Ipv4Addr::new(192, 168, 1, 60));
    assert_eq!(w.state.requests[&101].state, RequestState::Waiting);

    let mut dp = RecordingDatapath::new();
    dp.reconcile(&desired_state(&w.id, &w.state, vec![])).unwrap();
    let nat = dp.state.nat.clone().unwrap();
    assert_eq!(nat.mappings.len(), 4);
    assert!(nat.mappings.contains(&Mapping {
        vpnnat: pc1.vpnnat,
        real: pc1.real
    }));
    assert_eq!(dp.state.policies.len(), 12);
    // A second reconcile of the same state changes nothing.
    assert!(dp
        .reconcile(&desired_state(&w.id, &w.state, vec![]))
        .unwrap()
        .is_empty());
}

#[test]
fn unknown_name_is_refused_before_anything_is_sent() {
    let mut w = World::ready();
    let before = snapshot(&w.state);
    let seen = w.center.seen.len();
    let e = w.request(&["pc1", "ghost"]).unwrap_err();
    assert!(e.to_string().contains("unknown extension terminal \"ghost\""), "{e}");
    assert_eq!(w.center.seen.len(), seen, "nothing sent to the center");
    assert_eq!(snapshot(&w.state), before);
}

#[test]
fn grant_for_a_name_not_asked_installs_nothing() {
    let mut w = World::ready();
    w.center.grant_extra = Some(n("printer"));
    let before = snapshot(&w.state);
    let e = w.request(&["pc1"]).unwrap_err();
    assert!(matches!(e, ExchangeError::GrantMismatch(_)), "{e}");
    assert_eq!(snapshot(&w.state), before);
}

#[test]
fn name_gone_between_request_and_grant_installs_nothing() {
    let mut w = World::ready();
    let input = input(&["pc1", "printer"]);
    let r = w.resolver();
    let p = begin_maintenance(&w.id, &w.state, &input, &r, &w.rng, NOW).unwrap();
    let reply = w.center.answer(&p.outgoing);
    let mut fewer = w.statics.clone();
    fewer.remove(&n("printer"));
    let r2 = Resolver {
        statics: &fewer,
        leases: vec![],
        now: NOW,
        dns: NoDns,
        lan: &w.id.lan,
        router_part: w.id.router_part_address,
    };
    let e = finish_maintenance(&w.id, &w.state, p, &reply, &r2, NOW).unwrap_err();
    assert!(matches!(e, ExchangeError::Resolve(_)), "{e}");
    assert!(w.state.hosts.is_empty() && w.state.requests.is_empty());
}

#[test]
fn maintenance_needs_a_gateway() {
    let mut w = World::new();
    w.install();
    assert!(matches!(w.request(&["pc1"]), Err(ExchangeError::NoGateway)));
}

#[test]
fn end_marks_request_ended_and_keeps_the_mapping() {
    let mut w = World::ready();
    w.request(&["pc1"]).unwrap();
    let mut g = guard();
    let cmd = w.center.end(101);
    let o = w.command(&mut g, &cmd).unwrap();
    assert_eq!(o.next.requests[&101].state, RequestState::Ended);
    assert_eq!(o.next.hosts.len(), 1, "release is a separate command");
    // The answer authenticates against the command.
    let ack = decode_response::<EndCommand>(
        &cmd,
        &w.center.secret_id2.mac_key(),
        &o.response.headers,
        &o.response.body,
    )
    .unwrap();
    assert_eq!(ack, Ack {});
}

#[test]
fn release_removes_exactly_one_host() {
    let mut w = World::ready();
    w.request(&["pc1", "printer"]).unwrap();
    let mut g = guard();
    let o = w.command(&mut g, &w.center.release("pc1")).unwrap();
    w.state = o.next;
    assert_eq!(w.state.hosts.keys().collect::<Vec<_>>(), [&n("printer")]);
    let mut dp = RecordingDatapath::new();
    dp.reconcile(&desired_state(&w.id, &w.state, vec![])).unwrap();
    assert_eq!(dp.state.nat.unwrap().mappings.len(), 3);
}

#[test]
fn vpn_end_clears_hosts_and_gateway_but_keeps_own_parts() {
    let mut w = World::ready();
    w.request(&["pc1", "printer"]).unwrap();
    let mut dp = RecordingDatapath::new();
    dp.reconcile(&desired_state(&w.id, &w.state, vec![])).unwrap();
    let mut g = guard();
    let o = w.command(&mut g, &w.center.vpn_end()).unwrap();
    w.state = o.next;
    assert!(w.state.hosts.is_empty() && w.state.gateway.is_none());
    assert!(w.state.requests.values().all(|r| r.state == RequestState::Ended));
    dp.reconcile(&desired_state(&w.id, &w.state, vec![])).unwrap();
    assert_eq!(dp.state.nat.unwrap().mappings.len(), 2);
    assert!(dp.state.policies.is_empty());
}

/// Issue 19, item 2: the router's server part and router part are
/// requested by name; the grant is the installation's addresses, so the
/// host table and the NAT rows stay as the installation made them, and
/// neither the request's end nor the VPN end removes them.
#[test]
fn the_router_itself_is_granted_its_installation_addresses_and_keeps_them() {
    let mut w = World::ready();
    let inst = w.state.installation.clone().unwrap();
    let before = mappings(&w.id, &w.state);
    let acc = w.request(&[SERVER_PART_NAME, ROUTER_PART_NAME]).unwrap();
    assert_eq!(
        acc.grants,
        vec![
            (n(SERVER_PART_NAME), w.id.lan.address, inst.server_part_vpnnat),
            (n(ROUTER_PART_NAME), ROUTER_PART, inst.router_part_vpnnat),
        ]
    );
    assert!(w.state.hosts.is_empty(), "no host row for the router itself");
    assert_eq!(
        mappings(&w.id, &w.state),
        before,
        "no NAT row beyond the installation's"
    );
    let n1 = acc.acceptance_number.get();
    assert_eq!(w.state.requests[&n1].state, RequestState::Waiting);
    // Beside a LAN host in one request.
    let acc2 = w.request(&[SERVER_PART_NAME, "pc1"]).unwrap();
    assert_eq!(w.state.hosts.len(), 1);
    let mut g = guard();
    let o = w.command(&mut g, &w.center.end(n1)).unwrap();
    w.state = o.next;
    assert_eq!(w.state.requests[&n1].state, RequestState::Ended);
    assert_eq!(mappings(&w.id, &w.state).len(), 3);
    let o = w.command(&mut g, &w.center.end(acc2.acceptance_number.get())).unwrap();
    w.state = o.next;
    let o = w.command(&mut g, &w.center.vpn_end()).unwrap();
    w.state = o.next;
    assert_eq!(mappings(&w.id, &w.state), before, "the router's own mappings stay");
}

/// A center that grants the router's own part another address than the
/// installation's is in error: nothing is installed.
#[test]
fn another_address_for_the_router_itself_is_refused() {
    let mut w = World::ready();
    let (s, r) = w.center.own_parts.unwrap();
    w.center.own_parts = Some((r, s));
    let before = snapshot(&w.state);
    let e = w.request(&[SERVER_PART_NAME]).unwrap_err();
    assert!(matches!(e, ExchangeError::GrantMismatch(_)), "{e}");
    assert!(e.to_string().contains("installation address"), "{e}");
    assert_eq!(snapshot(&w.state), before);
}

#[test]
fn tunnel_lost_is_due_from_gateway_to_vpn_end() {
    let mut w = World::new();
    assert!(!tunnel_may_be_lost(&w.state));
    assert!(matches!(
        begin_tunnel_lost(&w.id, &w.state, &w.rng, NOW),
        Err(ExchangeError::NotInstalled)
    ));
    w.install();
    assert!(!tunnel_may_be_lost(&w.state), "no gateway: no tunnel to lose");
    w.gateway();
    assert!(tunnel_may_be_lost(&w.state));
    for answer in [TunnelRebuild::Up, TunnelRebuild::Connecting, TunnelRebuild::NotDue] {
        w.center.tunnel_lost_answer = answer;
        let p = begin_tunnel_lost(&w.id, &w.state, &w.rng, NOW).unwrap();
        let reply = w.center.answer(&p.outgoing);
        assert_eq!(finish_tunnel_lost(&w.state, p, &reply).unwrap(), answer);
    }
    // An answer that does not verify (another request's) is refused.
    let p1 = begin_tunnel_lost(&w.id, &w.state, &w.rng, NOW).unwrap();
    let p2 = begin_tunnel_lost(&w.id, &w.state, &w.rng, NOW).unwrap();
    let reply2 = w.center.answer(&p2.outgoing);
    assert!(finish_tunnel_lost(&w.state, p1, &reply2).is_err());
    w.request(&["pc1"]).unwrap();
    let mut g = guard();
    let o = w.command(&mut g, &w.center.vpn_end()).unwrap();
    w.state = o.next;
    assert!(
        !tunnel_may_be_lost(&w.state),
        "after VPN end the gateway holds nothing of ours"
    );
}

#[test]
fn rejected_commands_change_nothing() {
    let mut w = World::ready();
    w.request(&["pc1"]).unwrap();
    let mut g = guard();

    // Unknown acceptance number.
    let e = w.command(&mut g, &w.center.end(999)).unwrap_err();
    assert!(
        matches!(e, CommandError::UnknownRequest(999)) && e.http_status() == 404,
        "{e}"
    );
    // Release of a terminal without a grant.
    let e = w.command(&mut g, &w.center.release("printer")).unwrap_err();
    assert_eq!(e.http_status(), 404);

    // Bad MAC: signed with another Secret(ID2).
    let mut other = FakeCenter::new("router-1", w.secret_id.clone());
    other.secret_id2 = SecretId2::from_array([0x99; 32]);
    let e = w.command(&mut g, &other.end(101)).unwrap_err();
    assert!(matches!(e, CommandError::Proto(ProtoError::BadMac)), "{e}");
    assert_eq!(e.http_status(), 401);

    // Another terminal's command.
    let stranger = FakeCenter::new("router-2", w.secret_id.clone());
    let e = w.command(&mut g, &stranger.vpn_end()).unwrap_err();
    assert!(matches!(e, CommandError::Proto(ProtoError::UnknownTerminal)), "{e}");

    // Malformed body (correctly MAC'd by a center with a bug).
    let mut cmd = w.center.end(101);
    cmd.body = br#"{"acceptance_number":0}"#.to_vec();
    let headers = vpnnat_proto::auth::sign_request(
        &w.center.secret_id2.mac_key(),
        vpnnat_proto::auth::Direction::CenterToRouter,
        "router-1",
        vpnnat_proto::paths::router::END,
        &cmd.body,
        NOW,
        &w.rng,
    )
    .unwrap();
    cmd.headers = headers;
    let e = w.command(&mut g, &cmd).unwrap_err();
    assert!(matches!(e, CommandError::Proto(ProtoError::Malformed { .. })), "{e}");
    assert_eq!(e.http_status(), 400);

    // Replay of an accepted command.
    let ok = w.center.end(101);
    w.command(&mut g, &ok).unwrap();
    let e = w.command(&mut g, &ok).unwrap_err();
    assert!(matches!(e, CommandError::Proto(ProtoError::Replayed)), "{e}");

    // Wrong path.
    let e = handle_center_command(
        &w.id,
        &w.state,
        &mut g,
        IncomingCommand {
            path: "/v1/center/reboot",
            headers: &ok.headers,
            body: &ok.body,
        },
        NOW,
        &w.rng,
    )
    .unwrap_err();
    assert_eq!(e.http_status(), 404);
    // Every rejection left the state as it was (handle_* never mutates).
    assert_eq!(w.state.requests[&101].state, RequestState::Waiting);
    assert_eq!(w.state.hosts.len(), 1);
}

#[test]
fn commands_before_installation_are_unknown_terminal() {
    let w = World::new();
    let mut g = guard();
    let cmd = w.center.vpn_end();
    let e = handle_center_command(
        &w.id,
        &w.state,
        &mut g,
        IncomingCommand::from_outgoing(&cmd),
        NOW,
        &w.rng,
    )
    .unwrap_err();
    assert!(matches!(e, CommandError::Proto(ProtoError::UnknownTerminal)));
}

#[test]
fn two_names_for_one_host_collide() {
    let mut w = World::ready();
    w.statics.insert(n("pc1-alias"), Ipv4Addr::new(192, 168, 1, 10));
    w.request(&["pc1"]).unwrap();
    let before = snapshot(&w.state);
    let e = w.request(&["pc1-alias"]).unwrap_err();
    assert!(matches!(e, ExchangeError::GrantMismatch(_)), "{e}");
    assert_eq!(snapshot(&w.state), before);
}

#[test]
fn same_host_in_two_requests_keeps_one_row() {
    let mut w = World::ready();
    w.center.next_vpnnat = 0x0a40_0100;
    w.request(&["pc1"]).unwrap();
    let first = w.state.hosts[&n("pc1")].clone();
    w.center.next_vpnnat = 0x0a40_0100; // the center reuses the address
    w.request(&["pc1"]).unwrap();
    let h = &w.state.hosts[&n("pc1")];
    assert_eq!(h.vpnnat, first.vpnnat);
    assert_eq!(h.requests.len(), 2);
}

#[test]
fn reconcile_recovers_from_a_partial_apply() {
    let mut w = World::ready();
    w.request(&["pc1", "printer"]).unwrap();
    let desired = desired_state(&w.id, &w.state, vec![]);
    let mut dp = RecordingDatapath::new();
    dp.fail_at = Some(1);
    assert!(dp.reconcile(&desired).is_err());
    dp.fail_at = None;
    dp.reconcile(&desired).unwrap();
    assert!(dp.reconcile(&desired).unwrap().is_empty());
    assert_eq!(dp.state.policies.len(), 12);
}

#[test]
fn ended_requests_are_pruned() {
    let mut w = World::ready();
    let mut g = guard();
    for _ in 0..(MAX_ENDED_REQUESTS + 5) {
        let acc = w.request(&["pc1"]).unwrap();
        let o = w.command(&mut g, &w.center.end(acc.acceptance_number.get())).unwrap();
        w.state = o.next;
    }
    assert_eq!(w.state.requests.len(), MAX_ENDED_REQUESTS);
    assert!(!w.state.requests.contains_key(&101), "oldest forgotten");
    assert_eq!(w.state.hosts[&n("pc1")].requests.len(), MAX_ENDED_REQUESTS);
}

#[test]
fn planning_against_the_assumed_state_matches_a_read_back() {
    let mut w = World::ready();
    let mut dp = RecordingDatapath::new();
    let before = desired_state(&w.id, &w.state, vec![]);
    dp.reconcile(&before).unwrap();
    let sorted = |mut o: vpnnat_datapath::ObservedState| {
        o.policies.sort_by_key(|p| p.id);
        o
    };
    assert_eq!(sorted(assumed_observed(&before, &[])), sorted(dp.observe().unwrap()));
    w.request(&["pc1", "printer"]).unwrap();
    let after = desired_state(&w.id, &w.state, vec![]);
    let incremental = vpnnat_datapath::plan(&after, &assumed_observed(&before, &[]));
    assert_eq!(incremental, vpnnat_datapath::plan(&after, &dp.observe().unwrap()));
    dp.apply(&incremental).unwrap();
    assert!(dp.reconcile(&after).unwrap().is_empty());
}

// -- settle: a restart after an end a crash cut short ---------------------

fn settle_state(requests: &[(u64, &str, RequestState)], hosts: &[&str]) -> RouterState {
    let mut s = crate::state::tests::installed();
    s.gateway = Some(crate::state::Gateway {
        ip: Ipv4Addr::new(198, 51, 100, 21),
        ike_id: "gw1.center.example".into(),
        center_networks: Vec::new(),
        initiation: Default::default(),
    });
    for (i, h) in hosts.iter().enumerate() {
        s.hosts.insert(
            n(h),
            crate::state::HostGrant {
                real: Ipv4Addr::new(192, 168, 1, 10 + i as u8),
                vpnnat: Ipv4Addr::new(10, 64, 0, 10 + i as u8),
                requests: [1].into(),
            },
        );
    }
    for (num, names, st) in requests {
        s.requests.insert(
            *num,
            crate::state::RequestRecord {
                claimant_name: "A".into(),
                claimant_level: ClaimantLevel::General,
                urgency: Urgency::High,
                terminals: names.split(' ').map(n).collect(),
                accepted_at: 1,
                state: *st,
                failure: None,
                ends_at: None,
                idle_timeout_secs: None,
                end_unsent: false,
            },
        );
    }
    s
}

#[test]
fn settle_keeps_a_consistent_state() {
    let s = settle_state(&[(1, "pc1 pc2", RequestState::Waiting)], &["pc1", "pc2"]);
    assert!(settle(&s).is_none());
    assert!(settle(&crate::state::tests::installed()).is_none());
}

#[test]
fn settle_releases_hosts_of_ended_requests_only() {
    // request 1 (pc1, pc2) ended, its releases lost; request 2 keeps pc2
    let s = settle_state(
        &[(1, "pc1 pc2", RequestState::Ended), (2, "pc2", RequestState::Waiting)],
        &["pc1", "pc2"],
    );
    let next = settle(&s).unwrap();
    assert_eq!(next.hosts.keys().map(|k| k.to_string()).collect::<Vec<_>>(), ["pc2"]);
    assert!(next.gateway.is_some(), "an open request keeps the VPN");
}

#[test]
fn settle_ends_the_vpn_when_no_request_is_open() {
    // "end" saved, then a crash: release and VPN end never arrived
    let s = settle_state(&[(1, "pc1", RequestState::Ended)], &["pc1"]);
    let next = settle(&s).unwrap();
    assert!(next.hosts.is_empty());
    assert!(next.gateway.is_none());
    assert_eq!(next.installation.is_some(), s.installation.is_some());
    assert!(settle(&next).is_none(), "settling is idempotent");
    // a gateway from exchange 3 without the request that should follow
    let s = settle_state(&[], &[]);
    assert!(settle(&s).unwrap().gateway.is_none());
}

/// Issue 17: the router tells the center what it wants and what its WAN
/// address is, and keeps the mode the center answered.
#[test]
fn gateway_request_reports_the_wan_and_keeps_the_answered_mode() {
    use vpnnat_proto::initiation::{InitiationMode, InitiationPreference, WanAddress};
    let mut w = World::new();
    w.install();
    let wan = WanAddress::Ipv4(Ipv4Addr::new(192, 0, 2, 2));
    for (source, pref, want) in [
        (
            Ipv4Addr::new(203, 0, 113, 9),
            InitiationPreference::Auto,
            InitiationMode::Router,
        ),
        (
            Ipv4Addr::new(192, 0, 2, 2),
            InitiationPreference::Auto,
            InitiationMode::Gateway,
        ),
        (
            Ipv4Addr::new(203, 0, 113, 9),
            InitiationPreference::Gateway,
            InitiationMode::Gateway,
        ),
    ] {
        w.center.source = Some(source);
        let p = begin_gateway_as(&w.id, &w.state, &w.rng, NOW, pref, Some(wan)).unwrap();
        let sent: GatewayAddressRequest = serde_json::from_slice(&p.outgoing.body).unwrap();
        assert_eq!((sent.initiation, sent.wan), (pref, Some(wan)));
        let reply = w.center.answer(&p.outgoing);
        w.state = finish_gateway(&w.id, &w.state, p, &reply).unwrap();
        assert_eq!(w.state.gateway.as_ref().unwrap().initiation, want, "{source} {pref:?}");
    }
    // The seed's mode is not written to the state file (older routerd
    // versions read it back after a downgrade).
    let json = serde_json::to_string(w.state.gateway.as_ref().unwrap()).unwrap();
    assert!(!json.contains("initiation"), "{json}");
}

/// Issue 19, item 3, through the real exchanges with the fake center: the
/// request after a failure is tagged with the failing part, suppresses
/// only that part's next failure, survives the state file, and stops
/// suppressing once the center ended it.
#[test]
fn failure_requests_are_suppressed_per_part_until_the_center_ends_them() {
    use crate::health::Problem;
    use failure_request::{failure_request, FailureRequest};
    let cfg = sample_config();
    let button = cfg.button.as_ref();
    let mut w = World::ready();
    let ask = |w: &World, key: &str| {
        let p = Problem {
            key: key.into(),
            code: vpnnat_proto::types::FailureCode::Other,
            detail: String::new(),
        };
        failure_request(&w.id, button, &w.state, &p).unwrap()
    };
    let FailureRequest::Request(ike) = ask(&w, "ike") else {
        panic!("nothing open: the first ike failure asks")
    };
    let first = w.request_input(&ike).unwrap().acceptance_number.get();
    assert_eq!(w.state.requests[&first].failure.as_deref(), Some("ike"));
    // The tag is durable: a restarted routerd suppresses as well.
    w.state = RouterState::from_bytes(&snapshot(&w.state), std::path::Path::new("state.json")).unwrap();
    assert_eq!(ask(&w, "ike"), FailureRequest::Suppressed { acceptance: first });
    // Another part asks for its own request although the first is open.
    let FailureRequest::Request(dp) = ask(&w, "datapath") else {
        panic!("another part is not suppressed")
    };
    let second = w.request_input(&dp).unwrap().acceptance_number.get();
    assert_ne!(first, second);
    assert_eq!(ask(&w, "ike"), FailureRequest::Suppressed { acceptance: first });
    // The center ends the ike request: the next ike failure asks again,
    // the datapath's request still suppresses its own part.
    let mut g = guard();
    let o = w.command(&mut g, &w.center.end(first)).unwrap();
    w.state = o.next;
    assert!(matches!(ask(&w, "ike"), FailureRequest::Request(_)));
    assert_eq!(ask(&w, "datapath"), FailureRequest::Suppressed { acceptance: second });
}

// -- site end (issue 19, item 7) ------------------------------------------

#[test]
fn site_end_removes_only_hosts_no_other_open_request_names() {
    use super::site_end::{end_locally, unsent_ends, LocalEndError};
    let mut w = World::ready();
    w.request(&["pc1", "printer"]).unwrap(); // 101
    w.request(&["pc1"]).unwrap(); // 102
    let before = snapshot(&w.state);
    let (next, gone) = end_locally(&w.state, 101).unwrap();
    assert_eq!(gone, [n("printer")], "pc1 is still named by 102");
    assert_eq!(next.hosts.keys().collect::<Vec<_>>(), [&n("pc1")]);
    assert_eq!(next.requests[&101].state, RequestState::Ended);
    assert!(next.requests[&101].end_unsent);
    assert!(next.gateway.is_some(), "the center's VPN end closes the tunnel");
    assert_eq!(unsent_ends(&next), [101]);
    // The NAT row of printer goes; own parts and pc1 stay.
    let mut dp = RecordingDatapath::new();
    dp.reconcile(&desired_state(&w.id, &next, vec![])).unwrap();
    assert_eq!(dp.state.nat.unwrap().mappings.len(), 3);
    // The input state is untouched (pure).
    assert_eq!(snapshot(&w.state), before);
    // Refusals change nothing.
    let ended = next.clone();
    assert_eq!(end_locally(&ended, 101).unwrap_err(), LocalEndError::NotOpen(101));
    assert_eq!(end_locally(&ended, 999).unwrap_err(), LocalEndError::Unknown(999));
    assert_eq!(LocalEndError::Unknown(1).http_status(), 404);
    assert_eq!(LocalEndError::NotOpen(1).http_status(), 409);
    // Ending 102 too removes pc1.
    let (last, gone) = end_locally(&ended, 102).unwrap();
    assert_eq!(gone, [n("pc1")]);
    assert!(last.hosts.is_empty());
    assert_eq!(unsent_ends(&last), [101, 102]);
    // The flag survives the state file.
    let back = RouterState::from_bytes(&last.to_bytes().unwrap(), std::path::Path::new("s")).unwrap();
    assert_eq!(unsent_ends(&back), [101, 102]);
}

#[test]
fn site_end_exchange_acknowledged_or_refused_for_good() {
    use super::site_end::{begin_site_end, end_locally, finish_site_end, refused_for_good, unsent_ends};
    use vpnnat_proto::messages::SiteEndOutcome;
    let mut w = World::ready();
    w.request(&["pc1"]).unwrap(); // 101
    let (next, _) = end_locally(&w.state, 101).unwrap();
    w.state = next;
    // Answered: no longer due; a repeat says "already ended".
    for want in [SiteEndOutcome::Ended, SiteEndOutcome::AlreadyEnded] {
        let p = begin_site_end(&w.id, &w.state, 101, &w.rng, NOW).unwrap();
        let reply = w.center.answer(&p.outgoing);
        let (next, outcome) = finish_site_end(&w.state, p, &reply).unwrap();
        assert_eq!(outcome, want);
        assert!(unsent_ends(&next).is_empty());
    }
    // The center unreachable/failing: an error that is retried, state kept.
    w.center.refuse = Some((503, "busy".into()));
    let p = begin_site_end(&w.id, &w.state, 101, &w.rng, NOW).unwrap();
    let reply = w.center.answer(&p.outgoing);
    let e = finish_site_end(&w.state, p, &reply).unwrap_err();
    assert!(!refused_for_good(&e) && e.is_transient(), "{e}");
    // Not this router's request (403): refused for good.
    w.center.refuse = Some((403, "request 101 is not one of this router's requests".into()));
    let p = begin_site_end(&w.id, &w.state, 101, &w.rng, NOW).unwrap();
    let reply = w.center.answer(&p.outgoing);
    let e = finish_site_end(&w.state, p, &reply).unwrap_err();
    assert!(refused_for_good(&e), "{e}");
    // An answer signed with another key does not count as an answer.
    w.center.refuse = None;
    let p = begin_site_end(&w.id, &w.state, 101, &w.rng, NOW).unwrap();
    let mut reply = w.center.answer(&p.outgoing);
    reply.body = br#"{"outcome":"ended"} "#.to_vec();
    let e = finish_site_end(&w.state, p, &reply).unwrap_err();
    assert!(matches!(e, ExchangeError::BadAnswer(_)) && !refused_for_good(&e), "{e}");
}

#[test]
fn the_centers_release_after_a_site_end_is_acknowledged() {
    use super::site_end::{end_locally, end_sent};
    let mut w = World::ready();
    w.request(&["pc1"]).unwrap(); // 101
    let (next, _) = end_locally(&w.state, 101).unwrap();
    w.state = next;
    let mut g = guard();
    // The end and the release the center sends for it: both acknowledged.
    let o = w.command(&mut g, &w.center.end(101)).unwrap();
    w.state = o.next;
    let o = w.command(&mut g, &w.center.release("pc1")).unwrap();
    assert!(o.summary.contains("already"), "{}", o.summary);
    // Once the center acknowledged the end, a stray release is refused as
    // before (nothing is granted).
    w.state = end_sent(&w.state, 101);
    let e = w.command(&mut g, &w.center.release("pc1")).unwrap_err();
    assert_eq!(e.http_status(), 404);
}

#[test]
fn ended_requests_awaiting_the_center_are_not_pruned() {
    let mut w = World::ready();
    w.request(&["pc1"]).unwrap(); // 101
    let (next, _) = super::site_end::end_locally(&w.state, 101).unwrap();
    w.state = next;
    for _ in 0..MAX_ENDED_REQUESTS + 2 {
        let acc = w.request(&["printer"]).unwrap();
        let mut g = guard();
        let o = w.command(&mut g, &w.center.end(acc.acceptance_number.get())).unwrap();
        w.state = o.next;
    }
    assert!(w.state.requests.contains_key(&101), "still to be told to the center");
    assert_eq!(super::site_end::unsent_ends(&w.state), [101]);
}

#[test]
fn request_states_end_here_what_the_center_ended_while_the_tunnel_was_down() {
    use super::request_states::{begin_request_states, finish_request_states, open_requests};
    let mut w = World::ready();
    w.request(&["pc1", "printer"]).unwrap(); // 101
    w.request(&["pc1"]).unwrap(); // 102
    assert!(w.state.gateway.is_some());
    assert_eq!(open_requests(&w.state), [101, 102]);
    // The center ended 101; its end, release and VPN-end commands never
    // arrived (the tunnel was down).
    w.center.ended_unseen.push(101);
    let before = snapshot(&w.state);
    let p = begin_request_states(&w.id, &w.state, &w.rng, NOW).unwrap().unwrap();
    let reply = w.center.answer(&p.outgoing);
    let (next, ended) = finish_request_states(&w.state, p, &reply).unwrap();
    let next = next.unwrap();
    assert_eq!(ended, [101]);
    assert_eq!(w.center.state_queries, [vec![101, 102]]);
    assert_eq!(next.requests[&101].state, RequestState::Ended);
    assert_eq!(next.requests[&102].state, RequestState::Waiting);
    // Judgment 1 here: printer goes (no waiting request names it), pc1
    // stays (102 names it); 102 still waits, so the gateway stays.
    assert_eq!(next.hosts.keys().collect::<Vec<_>>(), [&n("pc1")]);
    assert!(next.gateway.is_some());
    assert_eq!(snapshot(&w.state), before, "pure: the input state is untouched");
    w.state = next;
    // Nothing more ended: no change.
    let p = begin_request_states(&w.id, &w.state, &w.rng, NOW).unwrap().unwrap();
    let reply = w.center.answer(&p.outgoing);
    let (next, ended) = finish_request_states(&w.state, p, &reply).unwrap();
    assert!(next.is_none() && ended.is_empty());
    // The center ended 102 too: every host goes, and the gateway with them
    // (judgment 3 here: the next request asks for a gateway anew).
    w.center.ended_unseen.push(102);
    let p = begin_request_states(&w.id, &w.state, &w.rng, NOW).unwrap().unwrap();
    let reply = w.center.answer(&p.outgoing);
    let (next, ended) = finish_request_states(&w.state, p, &reply).unwrap();
    let next = next.unwrap();
    assert_eq!(ended, [102]);
    assert!(next.hosts.is_empty());
    assert!(next.gateway.is_none());
    // Only the router's own two parts stay mapped.
    let mut dp = RecordingDatapath::new();
    dp.reconcile(&desired_state(&w.id, &next, vec![])).unwrap();
    assert_eq!(dp.state.nat.unwrap().mappings.len(), 2);
    // Nothing open: nothing to ask.
    assert!(begin_request_states(&w.id, &next, &w.rng, NOW).unwrap().is_none());
}

#[test]
fn request_states_answers_that_do_not_verify_or_name_other_numbers_change_nothing() {
    use super::request_states::{apply_ended, begin_request_states, finish_request_states};
    let mut w = World::ready();
    w.request(&["pc1"]).unwrap(); // 101
                                  // A number the router does not hold open is ignored.
    let (next, ended) = apply_ended(&w.state, [555]);
    assert!(next.is_none() && ended.is_empty());
    // An answer not signed by the center: an error, nothing changes.
    w.center.ended_unseen.push(101);
    let p = begin_request_states(&w.id, &w.state, &w.rng, NOW).unwrap().unwrap();
    let mut reply = w.center.answer(&p.outgoing);
    reply.body = br#"{"ended":[101]} "#.to_vec();
    let e = finish_request_states(&w.state, p, &reply).unwrap_err();
    assert!(matches!(e, ExchangeError::BadAnswer(_)), "{e}");
    // The center unreachable or failing: a transient error.
    w.center.refuse = Some((503, "busy".into()));
    let p = begin_request_states(&w.id, &w.state, &w.rng, NOW).unwrap().unwrap();
    let reply = w.center.answer(&p.outgoing);
    let e = finish_request_states(&w.state, p, &reply).unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_eq!(w.state.requests[&101].state, RequestState::Waiting);
}
