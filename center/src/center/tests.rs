use super::*;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use vpnnat_proto::initiation::{InitiationPreference, WanAddress};
use vpnnat_proto::keys::SecretId;
use vpnnat_proto::messages::{
    FailureNotice, GatewayAddressRequest, GatewayAddressResponse, GatewayInfo, Grant, InstallRequest, InstallResponse,
    InstallSecrets, MaintenanceDetails, MaintenanceRequest, MaintenanceResponse, TunnelEvent, TunnelLostAnswer,
    TunnelLostNotice, TunnelRebuild,
};
use vpnnat_proto::seal::ReplyKeyPair;
use vpnnat_proto::types::{
    ClaimantLevel, ClaimantName, FailureCode, FailureDetail, Phone, RequestContent, TerminalNames, Urgency,
};
use vpnnat_proto::{decode_response, encode_request};

use crate::storage::{PoolUsage, RequestState, ROUTER_PART_NAME, SERVER_PART_NAME};

pub(crate) const NOW: u64 = 1_800_000_000;

/// (slot, router address, addresses) of a fake gateway's tunnel.
pub(crate) type FakeTunnel = (u16, Ipv4Addr, BTreeSet<Ipv4Addr>);

/// Records every gateway command; gateways in `dead` do not answer;
/// `fail` makes every command fail.
#[derive(Debug, Default)]
pub(crate) struct FakeGateways {
    pub log: Mutex<Vec<String>>,
    pub dead: Mutex<HashSet<String>>,
    pub fail: Mutex<bool>,
    /// What the gateways carry: (gateway, terminal) -> (slot, router, addresses).
    pub tunnels: Mutex<BTreeMap<(String, String), FakeTunnel>>,
    /// Terminals whose tunnel the fake reports up.
    pub up: Mutex<HashSet<String>>,
    /// The last traffic the fake reports per terminal's tunnel (absent:
    /// left out of the report, as a gateway from before does).
    pub last_use: Mutex<BTreeMap<String, u64>>,
}

impl FakeGateways {
    fn push(&self, s: String) -> Result<(), CommandError> {
        self.log.lock().unwrap().push(s);
        if *self.fail.lock().unwrap() {
            return Err(CommandError::Unreachable {
                target: "gw".into(),
                reason: "test".into(),
            });
        }
        Ok(())
    }

    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

impl GatewayCommands for Arc<FakeGateways> {
    async fn probe(&self, gateway: &str) -> bool {
        !self.dead.lock().unwrap().contains(gateway)
    }
    async fn setup_tunnel(
        &self,
        gateway: &str,
        terminal: &TerminalId,
        router_ip: Ipv4Addr,
        slot: u16,
        _psk: &Psk,
    ) -> Result<(), CommandError> {
        self.push(format!("setup {gateway} {terminal} {router_ip} {slot}"))?;
        let mut t = self.tunnels.lock().unwrap();
        let e = t
            .entry((gateway.to_owned(), terminal.to_string()))
            .or_insert((slot, router_ip, BTreeSet::new()));
        e.0 = slot;
        e.1 = router_ip;
        Ok(())
    }
    async fn setup_tunnel_as(
        &self,
        gateway: &str,
        terminal: &TerminalId,
        router_ip: Ipv4Addr,
        slot: u16,
        psk: &Psk,
        mode: InitiationMode,
    ) -> Result<(), CommandError> {
        if mode == InitiationMode::Router {
            // Logged apart so the tests see which mode was commanded.
            self.push(format!("await {gateway} {terminal}"))?;
        }
        self.setup_tunnel(gateway, terminal, router_ip, slot, psk).await
    }
    async fn add_addresses(&self, gateway: &str, terminal: &TerminalId, a: &[Ipv4Addr]) -> Result<(), CommandError> {
        self.push(format!("add {gateway} {terminal} {a:?}"))?;
        if let Some(e) = self
            .tunnels
            .lock()
            .unwrap()
            .get_mut(&(gateway.to_owned(), terminal.to_string()))
        {
            e.2.extend(a.iter().copied());
        }
        Ok(())
    }
    async fn remove_addresses(&self, gateway: &str, terminal: &TerminalId, a: &[Ipv4Addr]) -> Result<(), CommandError> {
        self.push(format!("remove {gateway} {terminal} {a:?}"))?;
        if let Some(e) = self
            .tunnels
            .lock()
            .unwrap()
            .get_mut(&(gateway.to_owned(), terminal.to_string()))
        {
            for x in a {
                e.2.remove(x);
            }
        }
        Ok(())
    }
    async fn tear_down(&self, gateway: &str, terminal: &TerminalId) -> Result<(), CommandError> {
        self.push(format!("teardown {gateway} {terminal}"))?;
        self.tunnels
            .lock()
            .unwrap()
            .remove(&(gateway.to_owned(), terminal.to_string()));
        Ok(())
    }
    async fn restart_tunnel(&self, gateway: &str, terminal: &TerminalId) -> Result<(), CommandError> {
        self.push(format!("restart {gateway} {terminal}"))
    }
    async fn report(&self, gateway: &str) -> Result<StateReport, CommandError> {
        if self.dead.lock().unwrap().contains(gateway) {
            return Err(CommandError::Unreachable {
                target: gateway.into(),
                reason: "dead".into(),
            });
        }
        let up = self.up.lock().unwrap();
        let last_use = self.last_use.lock().unwrap();
        let v = self
            .tunnels
            .lock()
            .unwrap()
            .iter()
            .filter(|((g, _), _)| g == gateway)
            .map(|((_, t), (slot, ip, addrs))| vpnnat_proto::messages::TunnelState {
                terminal_id: tid(t),
                slot: *slot,
                router_ip: UnicastAddr::new(*ip).unwrap(),
                status: if up.contains(t) {
                    TunnelStatus::Up
                } else {
                    TunnelStatus::Connecting
                },
                addresses: BoundedSet::new(addrs.iter().map(|a| UnicastAddr::new(*a).unwrap()).collect()).unwrap(),
                last_use: last_use.get(t).copied(),
            })
            .collect();
        Ok(StateReport::new(v).unwrap())
    }
}

#[derive(Debug, Default)]
pub(crate) struct FakeRouters {
    pub log: Mutex<Vec<String>>,
    pub offline: Mutex<bool>,
}

impl FakeRouters {
    fn push(&self, s: String) -> Result<(), CommandError> {
        self.log.lock().unwrap().push(s);
        if *self.offline.lock().unwrap() {
            return Err(CommandError::Unreachable {
                target: "router".into(),
                reason: "offline".into(),
            });
        }
        Ok(())
    }

    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

impl RouterCommands for Arc<FakeRouters> {
    async fn end(&self, to: &RouterTarget, n: AcceptanceNumber) -> Result<(), CommandError> {
        self.push(format!("end {} {} {n}", to.terminal_id, to.address))
    }
    async fn release(&self, to: &RouterTarget, name: &TerminalName) -> Result<(), CommandError> {
        self.push(format!("release {} {name}", to.terminal_id))
    }
    async fn vpn_end(&self, to: &RouterTarget) -> Result<(), CommandError> {
        self.push(format!("vpn-end {}", to.terminal_id))
    }
}

pub(crate) type TestCenter = Center<Arc<FakeGateways>, Arc<FakeRouters>>;

pub(crate) fn master() -> FactoryMasterKey {
    FactoryMasterKey::from_array([9; 32])
}

pub(crate) fn gw_key(i: u8) -> GatewayApiKey {
    GatewayApiKey::from_array([0x40 + i; 32])
}

pub(crate) fn settings(slots: &[u16]) -> CenterSettings {
    CenterSettings {
        factory_master_key: master(),
        maintenance_password: MaintenancePassword::new("maint-pass-1").unwrap(),
        maintenance_password_hash: "pbkdf2-sha256$1$00$00".into(),
        center_networks: BoundedSet::new(vec!["172.16.0.0/24".parse().unwrap()]).unwrap(),
        gateways: slots
            .iter()
            .enumerate()
            .map(|(i, &n)| GatewayEntry {
                name: GatewayName::new(format!("gw{}", i + 1)).unwrap(),
                global_ip: UnicastAddr::new(Ipv4Addr::new(198, 51, 100, 11 + i as u8)).unwrap(),
                ike_id: IkeIdentity::new(format!("gw{}.center.example", i + 1)).unwrap(),
                api_key: gw_key(i as u8 + 1),
                slots: n,
                next_hop: Some(Ipv4Addr::new(172, 16, 0, 21 + i as u8)),
            })
            .collect(),
        replay: ReplayConfig::default(),
        tunnel_up_timeout: Duration::ZERO,
        max_open_requests: crate::center::DEFAULT_MAX_OPEN_REQUESTS,
        max_grant_lifetime_secs: crate::limits::DEFAULT_MAX_LIFETIME_SECS,
        idle_timeout_secs: None,
    }
}

pub(crate) fn center_with(pool: &str, slots: &[u16]) -> (TestCenter, Arc<FakeGateways>, Arc<FakeRouters>) {
    center_with_settings(pool, settings(slots))
}

pub(crate) fn center_with_settings(
    pool: &str,
    settings: CenterSettings,
) -> (TestCenter, Arc<FakeGateways>, Arc<FakeRouters>) {
    let mut st = Storage::open_in_memory().unwrap();
    st.init_pool(&pool.parse().unwrap()).unwrap();
    let g = Arc::new(FakeGateways::default());
    let r = Arc::new(FakeRouters::default());
    let c = Center::new(st, settings, g.clone(), r.clone()).unwrap();
    (c, g, r)
}

fn rng() -> SystemRandom {
    SystemRandom::new()
}

pub(crate) fn tid(s: &str) -> TerminalId {
    TerminalId::new(s).unwrap()
}

/// A router as the tests drive it: installs and keeps its secrets.
pub(crate) struct TestRouter {
    pub id: TerminalId,
    pub sid2: Option<SecretId2>,
    pub secrets: Option<InstallSecrets>,
    /// The source address its gateway address requests come from (issue
    /// 17; `None`: unknown, as before).
    pub seen: Option<Ipv4Addr>,
    /// What it reports about its WAN and wants.
    pub wan: Option<WanAddress>,
    pub initiation: InitiationPreference,
}

impl TestRouter {
    pub fn new(id: &str) -> Self {
        TestRouter {
            id: tid(id),
            sid2: None,
            secrets: None,
            seen: None,
            wan: None,
            initiation: InitiationPreference::Auto,
        }
    }

    /// The installation notice as routerd sends it: with the proof of its
    /// current Secret(ID2) once it has one.
    pub fn install_request(&self, now: u64) -> (Outgoing, ReplyKeyPair) {
        self.install_request_proving(now, self.sid2.as_ref())
    }

    /// The installation notice with the proof made from `sid2` (`None`: a
    /// router without state, or someone who holds only Secret(ID)).
    pub fn install_request_proving(&self, now: u64, sid2: Option<&SecretId2>) -> (Outgoing, ReplyKeyPair) {
        let kp = ReplyKeyPair::generate(&rng()).unwrap();
        let key = SecretId::derive(&master(), &self.id).mac_key();
        let reply_key = kp.public_key();
        let out = encode_request(
            &InstallRequest {
                reply_key,
                proof: sid2.map(|s| vpnnat_proto::reinstall::ReinstallProof::compute(s, &self.id, &reply_key)),
            },
            &self.id,
            &key,
            now,
            &rng(),
        )
        .unwrap();
        (out, kp)
    }

    pub fn install(&mut self, c: &TestCenter) -> InstallSecrets {
        let (out, kp) = self.install_request(NOW);
        self.finish_install(c, out, kp, NOW)
    }

    /// Sends `out` and opens the answer (which must be a success).
    pub fn finish_install(&mut self, c: &TestCenter, out: Outgoing, kp: ReplyKeyPair, now: u64) -> InstallSecrets {
        let resp = c.install(out.path, &out.headers, &out.body, now).unwrap();
        let key = SecretId::derive(&master(), &self.id).mac_key();
        let r: InstallResponse = decode_response::<InstallRequest>(&out, &key, &resp.headers, &resp.body).unwrap();
        let s = r.open(kp, &self.id).unwrap();
        self.sid2 = Some(s.secret_id2().clone());
        self.secrets = Some(s.clone());
        s
    }

    pub fn key(&self) -> MacKey {
        self.sid2.as_ref().unwrap().mac_key()
    }

    pub fn sign<C: Command<Principal = TerminalId>>(&self, cmd: &C, now: u64) -> Outgoing {
        encode_request(cmd, &self.id, &self.key(), now, &rng()).unwrap()
    }

    pub fn maintenance_request(&self, names: &[&str], level: ClaimantLevel) -> (MaintenanceRequest, ReplyKeyPair) {
        let kp = ReplyKeyPair::generate(&rng()).unwrap();
        let details = MaintenanceDetails {
            claimant_name: ClaimantName::new("Taro Yamada").unwrap(),
            terminal_names: TerminalNames::new(names.iter().map(|n| TerminalName::new(*n).unwrap()).collect()).unwrap(),
            phone: Phone::new("+81 3-1234-5678").unwrap(),
            content: RequestContent::new("the printer is offline").unwrap(),
        };
        let req = MaintenanceRequest::new(
            &rng(),
            self.sid2.as_ref().unwrap(),
            &self.id,
            kp.public_key(),
            level,
            Urgency::High,
            &details,
        )
        .unwrap();
        (req, kp)
    }

    pub async fn maintenance(&self, c: &TestCenter, names: &[&str]) -> Result<(u64, Vec<Grant>), CenterError> {
        let (req, kp) = self.maintenance_request(names, ClaimantLevel::General);
        let out = self.sign(&req, NOW);
        let resp = c
            .maintenance(out.path, &out.headers, &out.body, Ipv4Addr::new(203, 0, 113, 5), NOW)
            .await?;
        let r: MaintenanceResponse =
            decode_response::<MaintenanceRequest>(&out, &self.key(), &resp.headers, &resp.body).unwrap();
        let grants = r.open(kp, &self.id).unwrap();
        Ok((r.acceptance_number.get(), grants.as_slice().to_vec()))
    }

    pub async fn tunnel_lost(&self, c: &TestCenter) -> Result<TunnelRebuild, CenterError> {
        let out = self.sign(&TunnelLostNotice {}, NOW);
        let resp = c
            .tunnel_lost(
                out.path,
                &out.headers,
                &out.body,
                NOW,
                Some(Ipv4Addr::new(203, 0, 113, 5)),
            )
            .await?;
        let a: TunnelLostAnswer =
            decode_response::<TunnelLostNotice>(&out, &self.key(), &resp.headers, &resp.body).unwrap();
        Ok(a.tunnel)
    }

    pub async fn gateway_address(&self, c: &TestCenter) -> Result<GatewayInfo, CenterError> {
        let kp = ReplyKeyPair::generate(&rng()).unwrap();
        let out = self.sign(
            &GatewayAddressRequest {
                reply_key: kp.public_key(),
                initiation: self.initiation,
                wan: self.wan,
            },
            NOW,
        );
        let resp = c
            .gateway_address(out.path, &out.headers, &out.body, NOW, self.seen)
            .await?;
        let r: GatewayAddressResponse =
            decode_response::<GatewayAddressRequest>(&out, &self.key(), &resp.headers, &resp.body).unwrap();
        Ok(r.open(kp, &self.id).unwrap())
    }
}

/// Everything a rejected message must leave untouched.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    terminals: u64,
    pool: PoolUsage,
    requests: usize,
    failures: usize,
    nonces: u64,
    slots: Vec<(String, u64)>,
}

fn snapshot(c: &TestCenter) -> Snapshot {
    let st = c.store().unwrap();
    Snapshot {
        terminals: st.count_terminals().unwrap(),
        pool: st.pool_usage().unwrap(),
        requests: st.list_requests(1000).unwrap().len(),
        failures: st.failures(None, 1000).unwrap().len(),
        nonces: st.nonce_count().unwrap(),
        slots: st
            .gateway_usage()
            .unwrap()
            .into_iter()
            .map(|g| (g.name, g.used))
            .collect(),
    }
}

fn status(e: &CenterError) -> u16 {
    e.http_status()
}

#[test]
fn install_hands_out_secrets_and_two_addresses() {
    let (c, _, _) = center_with("10.64.0.0/24", &[2]);
    let mut r = TestRouter::new("router-1");
    let s = r.install(&c);
    // Issue 18, item 3: its own random password, not the configured one.
    assert_ne!(s.maintenance_password().expose_secret(), "maint-pass-1");
    assert_ne!(s.server_part_vpnnat(), s.router_part_vpnnat());
    let row = c.store().unwrap().terminal("router-1").unwrap().unwrap();
    assert_eq!(row.psk_hex, *s.psk().to_hex());
    assert_eq!(row.secret_id2_hex, *s.secret_id2().to_hex());
    assert_eq!(row.server_part_vpnnat, s.server_part_vpnnat().get());
    assert_eq!(
        c.store().unwrap().maintenance_password("router-1").unwrap().as_deref(),
        Some(s.maintenance_password().expose_secret()),
        "the center keeps what it shows the operator"
    );
    // Reinstall: new secrets, same addresses.
    let s2 = r.install(&c);
    assert_ne!(s2.psk().expose_secret(), s.psk().expose_secret());
    assert_ne!(s2.secret_id2().expose_secret(), s.secret_id2().expose_secret());
    assert_eq!(s2.server_part_vpnnat(), s.server_part_vpnnat());
    assert_eq!(s2.router_part_vpnnat(), s.router_part_vpnnat());
    assert_eq!(c.store().unwrap().pool_usage().unwrap().allocated, 2);
}

/// Issue 18, item 3: every router gets its own random maintenance
/// password, a new one at each installation; an operator is shown it, and
/// each showing is audited.
#[test]
fn each_router_gets_its_own_maintenance_password_shown_only_with_an_audit_row() {
    let (c, _, _) = center_with("10.64.0.0/24", &[2]);
    let mut r1 = TestRouter::new("router-1");
    let mut r2 = TestRouter::new("router-2");
    let p1 = r1.install(&c).maintenance_password().clone();
    let p2 = r2.install(&c).maintenance_password().clone();
    assert_ne!(p1.expose_secret(), p2.expose_secret());
    let op = Actor::new("operator#1", "172.16.0.5");
    let shown = c.show_maintenance_password("router-2", &op, NOW).unwrap();
    assert_eq!(shown.expose_secret(), p2.expose_secret());
    let rows = c
        .store()
        .unwrap()
        .audit_log(&crate::storage::AuditFilter {
            action: Some("show_maintenance_password".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].actor.as_str(), rows[0].terminal_id.as_deref()),
        ("operator#1", Some("router-2"))
    );
    assert!(
        !rows[0].detail.contains(p2.expose_secret()),
        "the audit log holds no secret"
    );
    // Re-installation: a new password.
    let p1b = r1.install(&c).maintenance_password().clone();
    assert_ne!(p1b.expose_secret(), p1.expose_secret());
    assert!(c.show_maintenance_password("router-9", &op, NOW).is_err());
}

#[test]
fn install_rejections_change_nothing() {
    let (c, _, _) = center_with("10.64.0.0/24", &[2]);
    let r = TestRouter::new("router-1");
    let before = snapshot(&c);
    // Bad MAC: signed with another factory's key.
    let kp = ReplyKeyPair::generate(&rng()).unwrap();
    let wrong = SecretId::derive(&FactoryMasterKey::from_array([1; 32]), &r.id).mac_key();
    let out = encode_request(
        &InstallRequest {
            reply_key: kp.public_key(),
            proof: None,
        },
        &r.id,
        &wrong,
        NOW,
        &rng(),
    )
    .unwrap();
    let e = c.install(out.path, &out.headers, &out.body, NOW).unwrap_err();
    assert_eq!(status(&e), 401);
    assert_eq!(e.public_text(), "message authentication failed");
    // Stale.
    let (out, _) = r.install_request(NOW - 1000);
    let e = c.install(out.path, &out.headers, &out.body, NOW).unwrap_err();
    assert!(matches!(e, CenterError::Proto(ProtoError::Stale { .. })));
    // Malformed JSON, correctly signed.
    let key = SecretId::derive(&master(), &r.id).mac_key();
    let headers = vpnnat_proto::auth::sign_request(
        &key,
        vpnnat_proto::auth::Direction::RouterToCenter,
        "router-1",
        vpnnat_proto::paths::center::INSTALL,
        b"{not json",
        NOW,
        &rng(),
    )
    .unwrap();
    let e = c
        .install(vpnnat_proto::paths::center::INSTALL, &headers, b"{not json", NOW)
        .unwrap_err();
    assert_eq!(status(&e), 400);
    // Wrong path.
    let (out, _) = r.install_request(NOW);
    let e = c
        .install("/v1/router/failure", &out.headers, &out.body, NOW)
        .unwrap_err();
    assert_eq!(status(&e), 404);
    assert_eq!(snapshot(&c), before);
    // Replay: the first one is accepted, the replay refused with no change.
    c.install(out.path, &out.headers, &out.body, NOW).unwrap();
    let after = snapshot(&c);
    let e = c.install(out.path, &out.headers, &out.body, NOW + 1).unwrap_err();
    assert_eq!(status(&e), 409);
    assert_eq!(snapshot(&c), after);
}

#[test]
fn failure_notice_is_stored_and_rejections_change_nothing() {
    let (c, _, _) = center_with("10.64.0.0/24", &[2]);
    let mut r = TestRouter::new("router-1");
    // Before installation the terminal has no Secret(ID2): unknown.
    r.sid2 = Some(SecretId2::from_array([5; 32]));
    let notice = FailureNotice {
        code: FailureCode::Ipsec,
        detail: FailureDetail::new("charon died").unwrap(),
    };
    let out = r.sign(&notice, NOW);
    let before = snapshot(&c);
    let e = c.failure(out.path, &out.headers, &out.body, NOW).unwrap_err();
    assert!(matches!(e, CenterError::Proto(ProtoError::UnknownTerminal)));
    assert_eq!(e.public_text(), "message authentication failed");
    assert_eq!(snapshot(&c), before);
    r.install(&c);
    let before = snapshot(&c);
    // Signed with Secret(ID) instead of Secret(ID2): bad MAC.
    let out = encode_request(
        &notice,
        &r.id,
        &SecretId::derive(&master(), &r.id).mac_key(),
        NOW,
        &rng(),
    )
    .unwrap();
    assert!(matches!(
        c.failure(out.path, &out.headers, &out.body, NOW).unwrap_err(),
        CenterError::Proto(ProtoError::BadMac)
    ));
    // Stale.
    let out = r.sign(&notice, NOW + 500);
    assert_eq!(
        status(&c.failure(out.path, &out.headers, &out.body, NOW).unwrap_err()),
        401
    );
    // Malformed: unknown field.
    let body = br#"{"code":"ipsec","detail":"","extra":1}"#;
    let headers = vpnnat_proto::auth::sign_request(
        &r.key(),
        vpnnat_proto::auth::Direction::RouterToCenter,
        "router-1",
        vpnnat_proto::paths::center::FAILURE,
        body,
        NOW,
        &rng(),
    )
    .unwrap();
    assert_eq!(
        status(
            &c.failure(vpnnat_proto::paths::center::FAILURE, &headers, body, NOW)
                .unwrap_err()
        ),
        400
    );
    assert_eq!(snapshot(&c), before);
    // Accepted once, replay refused.
    let out = r.sign(&notice, NOW);
    let resp = c.failure(out.path, &out.headers, &out.body, NOW).unwrap();
    decode_response::<FailureNotice>(&out, &r.key(), &resp.headers, &resp.body).unwrap();
    let f = c.store().unwrap().failures(Some("router-1"), 10).unwrap();
    assert_eq!(
        (f.len(), f[0].code.as_str(), f[0].detail.as_str()),
        (1, "ipsec", "charon died")
    );
    let after = snapshot(&c);
    assert_eq!(
        status(&c.failure(out.path, &out.headers, &out.body, NOW).unwrap_err()),
        409
    );
    assert_eq!(snapshot(&c), after);
}

#[tokio::test]
async fn gateway_address_scans_from_head_skips_dead_keeps_held() {
    let (c, g, _) = center_with("10.64.0.0/24", &[1, 2]);
    let mut routers: Vec<TestRouter> = (1..=4).map(|i| TestRouter::new(&format!("router-{i}"))).collect();
    for r in &mut routers {
        r.install(&c);
    }
    let info = routers[0].gateway_address(&c).await.unwrap();
    assert_eq!(info.gateway_ip.get(), Ipv4Addr::new(198, 51, 100, 11));
    assert_eq!(info.gateway_ike_id.as_str(), "gw1.center.example");
    assert_eq!(info.center_networks.len(), 1);
    // Same router again: same gateway.
    assert_eq!(
        routers[0].gateway_address(&c).await.unwrap().gateway_ip,
        info.gateway_ip
    );
    // gw1 is full; the next goes to gw2.
    let info2 = routers[1].gateway_address(&c).await.unwrap();
    assert_eq!(info2.gateway_ip.get(), Ipv4Addr::new(198, 51, 100, 12));
    // Free gw1's slot, then make gw1 dead: router-3 skips it.
    c.store().unwrap().free_slot("router-1", NOW).unwrap();
    g.dead.lock().unwrap().insert("gw1".into());
    let info3 = routers[2].gateway_address(&c).await.unwrap();
    assert_eq!(info3.gateway_ip.get(), Ipv4Addr::new(198, 51, 100, 12));
    // Now gw2 is full and gw1 dead: no capacity, nothing assigned.
    let before = snapshot(&c);
    let e = routers[3].gateway_address(&c).await.unwrap_err();
    assert!(matches!(e, CenterError::NoGatewayCapacity), "{e}");
    assert_eq!(status(&e), 503);
    let mut after = snapshot(&c);
    assert_eq!(after.nonces, before.nonces + 1);
    after.nonces = before.nonces;
    assert_eq!(after, before);
    assert!(c.store().unwrap().slot_of("router-4").unwrap().is_none());
    // gw1 answers again: router-4 gets it.
    g.dead.lock().unwrap().clear();
    assert_eq!(
        routers[3].gateway_address(&c).await.unwrap().gateway_ip.get(),
        Ipv4Addr::new(198, 51, 100, 11)
    );
}

#[tokio::test]
async fn held_gateway_kept_while_tunnel_up_even_if_probe_fails() {
    let (c, g, _) = center_with("10.64.0.0/24", &[1, 1]);
    let mut r = TestRouter::new("router-1");
    r.install(&c);
    r.gateway_address(&c).await.unwrap();
    c.store()
        .unwrap()
        .set_tunnel_state("gw1", 0, "router-1", TunnelState::Up, NOW)
        .unwrap();
    g.dead.lock().unwrap().insert("gw1".into());
    assert_eq!(
        r.gateway_address(&c).await.unwrap().gateway_ip.get(),
        Ipv4Addr::new(198, 51, 100, 11)
    );
    // Tunnel down and gateway dead: the router moves.
    c.store()
        .unwrap()
        .set_tunnel_state("gw1", 0, "router-1", TunnelState::Down, NOW)
        .unwrap();
    assert_eq!(
        r.gateway_address(&c).await.unwrap().gateway_ip.get(),
        Ipv4Addr::new(198, 51, 100, 12)
    );
    assert_eq!(c.store().unwrap().gateway_usage().unwrap()[0].used, 0, "old slot freed");
}

#[tokio::test]
async fn maintenance_assigns_stores_and_programs_the_gateway() {
    let (c, g, _) = center_with("10.64.0.0/24", &[2]);
    let mut r = TestRouter::new("router-1");
    let s = r.install(&c);
    r.gateway_address(&c).await.unwrap();
    g.take();
    let (n, grants) = r.maintenance(&c, &["pc1", "printer"]).await.unwrap();
    assert_eq!(n, 1);
    assert_eq!(grants.len(), 2);
    let row = c.store().unwrap().request(1).unwrap().unwrap();
    assert_eq!(row.state, RequestState::Waiting);
    assert_eq!(row.router_ip, "203.0.113.5");
    assert_eq!(row.claimant_name, "Taro Yamada");
    assert_eq!(row.phone, "+81 3-1234-5678");
    assert_eq!(
        row.grants.iter().map(|g| g.table_name.as_str()).collect::<Vec<_>>(),
        vec!["pc1", "printer"]
    );
    let log = g.take();
    assert_eq!(log[0], "setup gw1 router-1 203.0.113.5 0");
    assert!(log[1].starts_with("add gw1 router-1"));
    assert!(
        log[1].contains(&s.server_part_vpnnat().to_string()),
        "server part routed too: {log:?}"
    );
    // Same terminal again (administrator): same address, table "administrator".
    let (req, _kp) = r.maintenance_request(&["pc1"], ClaimantLevel::Administrator);
    let out = r.sign(&req, NOW);
    c.maintenance(out.path, &out.headers, &out.body, Ipv4Addr::new(203, 0, 113, 5), NOW)
        .await
        .unwrap();
    let row2 = c.store().unwrap().request(2).unwrap().unwrap();
    assert_eq!(row2.grants[0].vpnnat, row.grants[0].vpnnat);
    assert_eq!(row2.grants[0].table_name, "administrator");
}

#[tokio::test]
async fn maintenance_without_prior_gateway_request_gets_a_slot() {
    let (c, g, _) = center_with("10.64.0.0/24", &[1]);
    let mut r = TestRouter::new("router-1");
    r.install(&c);
    r.maintenance(&c, &["pc1"]).await.unwrap();
    assert_eq!(c.store().unwrap().slot_of("router-1").unwrap().unwrap().gateway, "gw1");
    assert!(g.take()[0].starts_with("setup gw1"));
    // A second router: no capacity, nothing stored.
    let mut r2 = TestRouter::new("router-2");
    r2.install(&c);
    let before = snapshot(&c);
    let e = r2.maintenance(&c, &["pc1"]).await.unwrap_err();
    assert!(matches!(e, CenterError::NoGatewayCapacity));
    let mut after = snapshot(&c);
    after.nonces -= 1;
    assert_eq!(after, before);
}

#[tokio::test]
async fn open_requests_per_router_are_capped_with_429_and_nothing_stored() {
    let mut st = settings(&[2]);
    st.max_open_requests = 2;
    let (c, _g, _) = center_with_settings("10.64.0.0/24", st);
    let mut r = TestRouter::new("router-1");
    r.install(&c);
    r.gateway_address(&c).await.unwrap();
    let (n1, _) = r.maintenance(&c, &["pc1"]).await.unwrap();
    c.start(n1, NOW).unwrap(); // in progress counts as open too
    r.maintenance(&c, &["nas"]).await.unwrap();
    // The third open request: refused, and nothing changed but the nonce.
    let before = snapshot(&c);
    let e = r.maintenance(&c, &["printer"]).await.unwrap_err();
    assert!(matches!(e, CenterError::TooManyOpenRequests { limit: 2 }), "{e:?}");
    assert_eq!(status(&e), 429);
    assert!(e.public_text().contains("too many open maintenance requests"), "{e}");
    let mut after = snapshot(&c);
    after.nonces -= 1;
    assert_eq!(after, before);
    // The cap is per router: another router is served.
    let mut r2 = TestRouter::new("router-2");
    r2.install(&c);
    r2.maintenance(&c, &["pc1"]).await.unwrap();
    // Once one of router-1's requests has ended, it may ask again.
    c.end(n1, NOW).await.unwrap();
    r.maintenance(&c, &["printer"]).await.unwrap();
}

#[tokio::test]
async fn maintenance_waits_for_the_tunnel_up_event() {
    let (c, _g, _) = center_with("10.64.0.0/24", &[2]);
    let c = Arc::new(c);
    let mut r = TestRouter::new("router-1");
    r.install(&c);
    r.gateway_address(&c).await.unwrap();
    // No event: the wait ends at the timeout, and it says so.
    assert!(!c.wait_tunnel_up(&r.id, Duration::from_millis(10)).await.unwrap());
    // An event from gw1 wakes the waiter.
    let c2 = c.clone();
    let waiter = tokio::spawn(async move { c2.wait_tunnel_up(&tid("router-1"), Duration::from_secs(10)).await });
    tokio::task::yield_now().await;
    let ev = TunnelEvent {
        terminal_id: tid("router-1"),
        slot: 0,
        status: TunnelStatus::Up,
        detail: FailureDetail::new("").unwrap(),
        seq: 0,
    };
    let out = encode_request(
        &ev,
        &GatewayName::new("gw1").unwrap(),
        &gw_key(1).mac_key(),
        NOW,
        &rng(),
    )
    .unwrap();
    let resp = c.tunnel_event(out.path, &out.headers, &out.body, NOW).unwrap();
    decode_response::<TunnelEvent>(&out, &gw_key(1).mac_key(), &resp.headers, &resp.body).unwrap();
    assert!(waiter.await.unwrap().unwrap());
    // With the tunnel up, a maintenance request sends no setup.
    let (_n, _) = r.maintenance(&c, &["pc1"]).await.unwrap();
}

#[tokio::test]
async fn tunnel_event_rejections() {
    let (c, _, _) = center_with("10.64.0.0/24", &[2]);
    let ev = TunnelEvent {
        terminal_id: tid("router-1"),
        slot: 0,
        status: TunnelStatus::Up,
        detail: FailureDetail::new("").unwrap(),
        seq: 0,
    };
    // Unknown gateway.
    let out = encode_request(
        &ev,
        &GatewayName::new("gw9").unwrap(),
        &gw_key(1).mac_key(),
        NOW,
        &rng(),
    )
    .unwrap();
    assert_eq!(
        status(&c.tunnel_event(out.path, &out.headers, &out.body, NOW).unwrap_err()),
        401
    );
    // Wrong key.
    let out = encode_request(
        &ev,
        &GatewayName::new("gw1").unwrap(),
        &gw_key(2).mac_key(),
        NOW,
        &rng(),
    )
    .unwrap();
    assert_eq!(
        status(&c.tunnel_event(out.path, &out.headers, &out.body, NOW).unwrap_err()),
        401
    );
    // For a slot nobody holds: acknowledged, ignored.
    let out = encode_request(
        &ev,
        &GatewayName::new("gw1").unwrap(),
        &gw_key(1).mac_key(),
        NOW,
        &rng(),
    )
    .unwrap();
    c.tunnel_event(out.path, &out.headers, &out.body, NOW).unwrap();
    assert_eq!(c.store().unwrap().gateway_usage().unwrap()[0].up, 0);
}

#[tokio::test]
async fn maintenance_pool_exhaustion_leaves_nothing() {
    // /29: 6 addresses; one router's two parts + 4 hosts fill it.
    let (c, g, _) = center_with("10.64.0.0/29", &[2]);
    let mut r = TestRouter::new("router-1");
    r.install(&c);
    r.maintenance(&c, &["a", "b", "c"]).await.unwrap();
    g.take();
    let before = snapshot(&c);
    let e = r.maintenance(&c, &["d", "e"]).await.unwrap_err();
    assert!(matches!(e, CenterError::PoolExhausted));
    assert_eq!(status(&e), 503);
    assert!(e.public_text().contains("pool exhausted"));
    let mut after = snapshot(&c);
    after.nonces -= 1;
    assert_eq!(after, before, "nothing half-assigned");
    assert!(g.take().is_empty(), "no gateway command");
    c.store().unwrap().check_pool().unwrap();
}

#[tokio::test]
async fn maintenance_gateway_failure_rolls_back() {
    let (c, g, _) = center_with("10.64.0.0/24", &[2]);
    let mut r = TestRouter::new("router-1");
    r.install(&c);
    r.gateway_address(&c).await.unwrap();
    let before = snapshot(&c);
    *g.fail.lock().unwrap() = true;
    let e = r.maintenance(&c, &["pc1"]).await.unwrap_err();
    assert_eq!(status(&e), 502);
    let mut after = snapshot(&c);
    after.nonces -= 1;
    assert_eq!(after, before);
    assert_eq!(c.store().unwrap().address_of("router-1", "pc1").unwrap(), None);
}

#[tokio::test]
async fn maintenance_rejections_change_nothing() {
    let (c, _, _) = center_with("10.64.0.0/24", &[2]);
    let mut r = TestRouter::new("router-1");
    r.install(&c);
    let before = snapshot(&c);
    let ip = Ipv4Addr::new(203, 0, 113, 5);
    // Details encrypted under another Secret(ID2): the MAC is right but they do not open.
    let (mut req, _) = r.maintenance_request(&["pc1"], ClaimantLevel::General);
    let other = TestRouter {
        sid2: Some(SecretId2::from_array([3; 32])),
        ..TestRouter::new(r.id.as_str())
    };
    req.details = other.maintenance_request(&["pc1"], ClaimantLevel::General).0.details;
    let out = r.sign(&req, NOW);
    assert!(c.maintenance(out.path, &out.headers, &out.body, ip, NOW).await.is_err());
    // Bad MAC, stale, unknown terminal.
    let (req, _) = r.maintenance_request(&["pc1"], ClaimantLevel::General);
    let out = other.sign(&req, NOW);
    assert_eq!(
        status(
            &c.maintenance(out.path, &out.headers, &out.body, ip, NOW)
                .await
                .unwrap_err()
        ),
        401
    );
    let out = r.sign(&req, NOW - 121);
    assert_eq!(
        status(
            &c.maintenance(out.path, &out.headers, &out.body, ip, NOW)
                .await
                .unwrap_err()
        ),
        401
    );
    let stranger = TestRouter {
        sid2: r.sid2.clone(),
        ..TestRouter::new("router-9")
    };
    let out = stranger.sign(&req, NOW);
    assert_eq!(
        status(
            &c.maintenance(out.path, &out.headers, &out.body, ip, NOW)
                .await
                .unwrap_err()
        ),
        401
    );
    let mut after = snapshot(&c);
    after.nonces -= 1; // only the authentic one with undecryptable details
    assert_eq!(after, before);
    // Replay of an accepted request.
    let out = r.sign(&req, NOW);
    c.maintenance(out.path, &out.headers, &out.body, ip, NOW).await.unwrap();
    let after = snapshot(&c);
    assert_eq!(
        status(
            &c.maintenance(out.path, &out.headers, &out.body, ip, NOW)
                .await
                .unwrap_err()
        ),
        409
    );
    assert_eq!(snapshot(&c), after);
}

#[tokio::test]
async fn end_runs_the_three_judgments() {
    let (c, g, rt) = center_with("10.64.0.0/24", &[2]);
    let mut r = TestRouter::new("router-1");
    let s = r.install(&c);
    r.gateway_address(&c).await.unwrap();
    let (n1, g1) = r.maintenance(&c, &["pc1", "printer"]).await.unwrap();
    let (n2, _) = r.maintenance(&c, &["pc1"]).await.unwrap();
    g.take();
    tunnel_up(&c, "router-1");
    c.start(n1, NOW).unwrap();
    assert!(matches!(
        c.start(n1, NOW),
        Err(CenterError::Storage(StorageError::BadTransition { .. }))
    ));
    // End 1: pc1 still named by request 2 (judgment 1: kept); printer released (7);
    // the router still has an open request (judgment 3: no VPN end).
    let o = c.end(n1, NOW).await.unwrap();
    assert_eq!(o.kept, vec!["pc1".to_string()]);
    let printer = g1
        .iter()
        .find(|x| x.terminal_name.as_str() == "printer")
        .unwrap()
        .vpnnat_addr
        .get();
    assert_eq!(o.released, vec![("printer".to_string(), printer)]);
    assert!(!o.vpn_ended);
    assert_eq!(
        rt.take(),
        vec![
            format!("end router-1 {} {n1}", s.server_part_vpnnat()),
            "release router-1 printer".to_string()
        ]
    );
    assert_eq!(g.take(), vec![format!("remove gw1 router-1 [{printer}]")]);
    assert_eq!(c.store().unwrap().address_of("router-1", "printer").unwrap(), None);
    // End 2: pc1 released, then VPN end: slot freed and tunnel torn down.
    let o = c.end(n2, NOW).await.unwrap();
    assert!(o.vpn_ended);
    assert_eq!(o.released.len(), 1);
    assert_eq!(
        rt.take(),
        vec![
            format!("end router-1 {} {n2}", s.server_part_vpnnat()),
            "release router-1 pc1".into(),
            "vpn-end router-1".into()
        ]
    );
    let glog = g.take();
    assert_eq!(glog.last().unwrap(), "teardown gw1 router-1");
    assert!(c.store().unwrap().slot_of("router-1").unwrap().is_none());
    // The router keeps its own two addresses.
    assert_eq!(c.store().unwrap().pool_usage().unwrap().allocated, 2);
    // Ending twice is refused.
    assert_eq!(status(&c.end(n2, NOW).await.unwrap_err()), 409);
    assert_eq!(status(&c.end(999, NOW).await.unwrap_err()), 404);
}

pub(crate) fn tunnel_up(c: &TestCenter, id: &str) {
    let s = c.store().unwrap().slot_of(id).unwrap().unwrap();
    c.store()
        .unwrap()
        .set_tunnel_state(&s.gateway, s.slot, id, TunnelState::Up, NOW)
        .unwrap();
}

fn gw1_event(c: &TestCenter, id: &str, status: TunnelStatus) {
    gw1_event_numbered(c, id, status, 0);
}

fn gw1_event_numbered(c: &TestCenter, id: &str, status: TunnelStatus, seq: u64) {
    let slot = c.store().unwrap().slot_of(id).unwrap().unwrap().slot;
    let ev = TunnelEvent {
        terminal_id: tid(id),
        slot,
        status,
        detail: FailureDetail::new("").unwrap(),
        seq,
    };
    let key = gw_key(1).mac_key();
    let out = encode_request(&ev, &GatewayName::new("gw1").unwrap(), &key, NOW, &rng()).unwrap();
    c.tunnel_event(out.path, &out.headers, &out.body, NOW).unwrap();
}

fn tunnel_state_of(c: &TestCenter, id: &str) -> TunnelState {
    c.store().unwrap().slot_of(id).unwrap().unwrap().tunnel_state
}

#[tokio::test]
async fn a_late_tunnel_event_does_not_undo_a_newer_one() {
    let (c, _g, _) = center_with("10.64.0.0/24", &[2]);
    let mut r = TestRouter::new("router-1");
    r.install(&c);
    r.gateway_address(&c).await.unwrap();
    gw1_event_numbered(&c, "router-1", TunnelStatus::Up, 11);
    assert_eq!(tunnel_state_of(&c, "router-1"), TunnelState::Up);
    // "connecting" happened before "up" but arrives after it.
    gw1_event_numbered(&c, "router-1", TunnelStatus::Connecting, 10);
    assert_eq!(tunnel_state_of(&c, "router-1"), TunnelState::Up);
    // A later change is applied.
    gw1_event_numbered(&c, "router-1", TunnelStatus::Down, 12);
    assert_eq!(tunnel_state_of(&c, "router-1"), TunnelState::Down);
}

#[tokio::test]
async fn tunnel_lost_has_the_gateway_rebuild_a_due_tunnel() {
    let (c, g, _) = center_with("10.64.0.0/24", &[2]);
    let c = Arc::new(c);
    let mut r = TestRouter::new("router-1");
    r.install(&c);
    // No slot, then a slot but no request (no router address): no tunnel
    // is due, the gateway is not bothered.
    assert_eq!(r.tunnel_lost(&c).await.unwrap(), TunnelRebuild::NotDue);
    r.gateway_address(&c).await.unwrap();
    g.take();
    assert_eq!(r.tunnel_lost(&c).await.unwrap(), TunnelRebuild::NotDue);
    assert!(g.take().is_empty());

    r.maintenance(&c, &["pc1"]).await.unwrap();
    tunnel_up(&c, "router-1");
    g.take();
    // The gateway is told to rebuild; the stale "up" is gone, so without
    // a new event the answer says "connecting" after the bounded wait.
    assert_eq!(r.tunnel_lost(&c).await.unwrap(), TunnelRebuild::Connecting);
    assert_eq!(g.take(), vec!["restart gw1 router-1".to_owned()]);
    assert_eq!(tunnel_state_of(&c, "router-1"), TunnelState::Connecting);
    let audit = c
        .store()
        .unwrap()
        .audit_log(&crate::storage::AuditFilter {
            action: Some("tunnel_restart".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].terminal_id.as_deref(), Some("router-1"));
    assert!(audit[0].actor.contains("router-1"), "{audit:?}");

    // With the gateway's events (down, then up) the answer is "up".
    let mut settings = settings(&[2]);
    settings.tunnel_up_timeout = Duration::from_secs(10);
    let (c, g, _) = center_with_settings("10.64.0.0/24", settings);
    let c = Arc::new(c);
    let mut r = TestRouter::new("router-1");
    r.install(&c);
    // Up before the request, so that it does not wait for an event.
    r.gateway_address(&c).await.unwrap();
    tunnel_up(&c, "router-1");
    r.maintenance(&c, &["pc1"]).await.unwrap();
    g.take();
    let c2 = c.clone();
    let lost = tokio::spawn(async move { r.tunnel_lost(&c2).await });
    while g.take().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gw1_event(&c, "router-1", TunnelStatus::Down);
    assert!(!lost.is_finished());
    gw1_event(&c, "router-1", TunnelStatus::Up);
    assert_eq!(lost.await.unwrap().unwrap(), TunnelRebuild::Up);
}

#[tokio::test]
async fn tunnel_lost_rejections_and_a_dead_gateway_change_nothing() {
    let (c, g, _) = center_with("10.64.0.0/24", &[2]);
    let mut r = TestRouter::new("router-1");
    r.install(&c);
    r.maintenance(&c, &["pc1"]).await.unwrap();
    tunnel_up(&c, "router-1");
    g.take();
    // Replayed: refused, the gateway hears nothing, the tunnel stays up.
    let out = r.sign(&TunnelLostNotice {}, NOW);
    let ip = Some(Ipv4Addr::new(203, 0, 113, 5));
    c.tunnel_lost(out.path, &out.headers, &out.body, NOW, ip).await.unwrap();
    g.take();
    tunnel_up(&c, "router-1");
    let before = snapshot(&c);
    let e = c
        .tunnel_lost(out.path, &out.headers, &out.body, NOW, ip)
        .await
        .unwrap_err();
    assert_eq!(status(&e), 409, "{e}");
    assert_eq!(snapshot(&c), before);
    assert!(g.take().is_empty());
    assert_eq!(tunnel_state_of(&c, "router-1"), TunnelState::Up);
    // Signed with the wrong key (another router's Secret(ID2)).
    let mut other = TestRouter::new("router-2");
    other.install(&c);
    let before = snapshot(&c);
    let forged = encode_request(&TunnelLostNotice {}, &r.id, &other.key(), NOW, &rng()).unwrap();
    let e = c
        .tunnel_lost(forged.path, &forged.headers, &forged.body, NOW, ip)
        .await
        .unwrap_err();
    assert_eq!(status(&e), 401, "{e}");
    // Stale.
    let stale = r.sign(&TunnelLostNotice {}, NOW - 3600);
    let e = c
        .tunnel_lost(stale.path, &stale.headers, &stale.body, NOW, ip)
        .await
        .unwrap_err();
    assert_eq!(status(&e), 401, "{e}");
    assert_eq!(snapshot(&c), before);
    assert!(g.take().is_empty());
    assert_eq!(tunnel_state_of(&c, "router-1"), TunnelState::Up);
    // The gateway refuses the command: an error (the router retries).
    *g.fail.lock().unwrap() = true;
    let e = r.tunnel_lost(&c).await.unwrap_err();
    assert_eq!(status(&e), 502, "{e}");
}

#[tokio::test]
async fn end_without_a_tunnel_skips_router_commands_but_frees_everything() {
    let (c, g, rt) = center_with("10.64.0.0/24", &[2]);
    let mut r = TestRouter::new("router-1");
    r.install(&c);
    let (n, _) = r.maintenance(&c, &["pc1"]).await.unwrap();
    g.take();
    let o = c.end(n, NOW).await.unwrap();
    assert!(o.vpn_ended);
    assert_eq!(o.released.len(), 1);
    assert!(o.warnings[0].contains("tunnel not up"));
    assert!(rt.take().is_empty(), "nothing sent to an unreachable router");
    assert_eq!(g.take().last().unwrap(), "teardown gw1 router-1");
    assert_eq!(c.store().unwrap().pool_usage().unwrap().allocated, 2);
}

#[tokio::test]
async fn end_never_releases_the_routers_own_parts() {
    let (c, _g, rt) = center_with("10.64.0.0/24", &[2]);
    let mut r = TestRouter::new("router-1");
    let s = r.install(&c);
    let (n, grants) = r.maintenance(&c, &[SERVER_PART_NAME, ROUTER_PART_NAME]).await.unwrap();
    tunnel_up(&c, "router-1");
    assert_eq!(
        grants[0].vpnnat_addr,
        s.server_part_vpnnat(),
        "the install address is reused"
    );
    let o = c.end(n, NOW).await.unwrap();
    assert!(o.released.is_empty(), "judgment 2");
    // Judgment 2's "yes" is said (outcome, audit), not only silent.
    assert_eq!(
        o.own_kept,
        vec![
            (ROUTER_PART_NAME.to_string(), s.router_part_vpnnat().get()),
            (SERVER_PART_NAME.to_string(), s.server_part_vpnnat().get()),
        ],
        "by name"
    );
    let keep = c
        .store()
        .unwrap()
        .audit_log(&crate::storage::AuditFilter {
            action: Some("keep".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(keep.len(), 2, "{keep:?}");
    assert!(keep.iter().all(|r| r.detail.contains("judgment 2")), "{keep:?}");
    assert!(o.vpn_ended, "judgment 3");
    assert!(!rt.take().iter().any(|l| l.starts_with("release")));
    assert_eq!(
        c.store().unwrap().address_of("router-1", SERVER_PART_NAME).unwrap(),
        Some(s.server_part_vpnnat().get())
    );
}

#[tokio::test]
async fn end_frees_the_center_even_if_the_router_is_offline() {
    let (c, _g, rt) = center_with("10.64.0.0/24", &[2]);
    let mut r = TestRouter::new("router-1");
    r.install(&c);
    let (n, _) = r.maintenance(&c, &["pc1"]).await.unwrap();
    tunnel_up(&c, "router-1");
    *rt.offline.lock().unwrap() = true;
    let o = c.end(n, NOW).await.unwrap();
    assert_eq!(o.warnings.len(), 3, "{:?}", o.warnings);
    assert!(o.vpn_ended);
    assert_eq!(c.store().unwrap().pool_usage().unwrap().allocated, 2);
    c.store().unwrap().check_pool().unwrap();
}

#[tokio::test]
async fn resume_ends_finishes_an_end_a_crash_interrupted() {
    let (c, g, rt) = center_with("10.64.0.0/24", &[2]);
    let mut r = TestRouter::new("router-1");
    r.install(&c);
    let (n1, _) = r.maintenance(&c, &["pc1", "printer"]).await.unwrap();
    let (n2, _) = r.maintenance(&c, &["pc1"]).await.unwrap();
    tunnel_up(&c, "router-1");
    // Nothing interrupted: nothing to resume.
    assert!(c.resume_ends(NOW).await.unwrap().is_empty());
    // Request 1's end committed, then centerd died (crash point
    // center.end.after_commit): printer still held, no command sent.
    c.store().unwrap().end_request(n1, NOW).unwrap();
    g.take();
    rt.take();
    let o = c.resume_ends(NOW).await.unwrap();
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].released.len(), 1, "printer released");
    assert_eq!(o[0].released[0].0, "printer");
    assert!(!o[0].vpn_ended, "request 2 is open: judgment 3 keeps the VPN");
    assert_eq!(rt.take(), vec!["release router-1 printer".to_string()]);
    assert!(c.store().unwrap().address_of("router-1", "pc1").unwrap().is_some());
    // Resuming again finds nothing.
    assert!(c.resume_ends(NOW).await.unwrap().is_empty());
    // Request 2's end committed, pc1 released at the router and in the
    // database, then a crash before the VPN end: resumed as the VPN end.
    c.store().unwrap().end_request(n2, NOW).unwrap();
    c.store().unwrap().release_address("router-1", "pc1").unwrap();
    rt.take();
    let o = c.resume_ends(NOW).await.unwrap();
    assert_eq!(o.len(), 1);
    assert!(o[0].vpn_ended);
    assert_eq!(rt.take(), vec!["vpn-end router-1".to_string()]);
    assert_eq!(g.take().last().unwrap(), "teardown gw1 router-1");
    assert!(c.store().unwrap().slot_of("router-1").unwrap().is_none());
    assert_eq!(c.store().unwrap().pool_usage().unwrap().allocated, 2);
    c.store().unwrap().check_pool().unwrap();
    assert!(c.resume_ends(NOW).await.unwrap().is_empty());
}

#[tokio::test]
async fn reconcile_restores_a_restarted_gateway_and_removes_strays() {
    let (c, g, _) = center_with("10.64.0.0/24", &[2, 2]);
    let mut r = TestRouter::new("router-1");
    let s = r.install(&c);
    r.gateway_address(&c).await.unwrap();
    let (_, grants) = r.maintenance(&c, &["pc1"]).await.unwrap();
    let key = ("gw1".to_string(), "router-1".to_string());
    let want: BTreeSet<Ipv4Addr> = [
        s.server_part_vpnnat().get(),
        s.router_part_vpnnat().get(),
        grants[0].vpnnat_addr.get(),
    ]
    .into();
    assert_eq!(g.tunnels.lock().unwrap()[&key].2, want);
    // Nothing to do when all agrees.
    let o = c.reconcile_gateway("gw1", NOW).await.unwrap();
    assert_eq!((o.set_up.len(), o.added, o.removed, o.torn_down.len()), (0, 0, 0, 0));
    // gatewayd restarted (empty), plus a stray tunnel and a stray address elsewhere.
    g.tunnels.lock().unwrap().clear();
    g.tunnels.lock().unwrap().insert(
        ("gw1".into(), "router-9".into()),
        (
            1,
            Ipv4Addr::new(203, 0, 113, 9),
            BTreeSet::from([Ipv4Addr::new(10, 64, 0, 200)]),
        ),
    );
    let o = c.reconcile_gateway("gw1", NOW).await.unwrap();
    assert_eq!(o.set_up, vec!["router-1".to_string()]);
    assert_eq!(o.added, 3);
    assert_eq!(o.torn_down, vec!["router-9".to_string()]);
    assert_eq!(g.tunnels.lock().unwrap()[&key].2, want);
    assert_eq!(g.tunnels.lock().unwrap().len(), 1);
    // An address the gateway should not carry goes; the reported state is recorded.
    g.tunnels
        .lock()
        .unwrap()
        .get_mut(&key)
        .unwrap()
        .2
        .insert(Ipv4Addr::new(10, 64, 0, 99));
    g.up.lock().unwrap().insert("router-1".into());
    let o = c.reconcile_gateway("gw1", NOW).await.unwrap();
    assert_eq!(o.removed, 1);
    assert_eq!(
        c.store().unwrap().slot_of("router-1").unwrap().unwrap().tunnel_state,
        TunnelState::Up
    );
    // A dead gateway: an error, nothing changed.
    g.dead.lock().unwrap().insert("gw2".into());
    assert_eq!(status(&c.reconcile_gateway("gw2", NOW).await.unwrap_err()), 502);
}

#[tokio::test]
async fn host_routes_follow_the_addresses() {
    let (c, _g, _r) = center_with("10.64.0.0/24", &[2]);
    let routes = Arc::new(crate::routes::RecordingRoutes::default());
    #[derive(Debug)]
    struct Shared(Arc<crate::routes::RecordingRoutes>);
    impl crate::routes::RouteProgrammer for Shared {
        fn add(&self, a: &[Ipv4Addr], via: Ipv4Addr) -> Result<(), vpnnat_datapath::DatapathError> {
            self.0.add(a, via)
        }
        fn del(&self, a: &[Ipv4Addr], via: Ipv4Addr) -> Result<(), vpnnat_datapath::DatapathError> {
            self.0.del(a, via)
        }
    }
    let c = c.with_routes(Box::new(Shared(routes.clone())));
    let mut r = TestRouter::new("router-1");
    let s = r.install(&c);
    let (n, grants) = r.maintenance(&c, &["pc1"]).await.unwrap();
    let pc1 = grants[0].vpnnat_addr;
    let log = std::mem::take(&mut *routes.log.lock().unwrap());
    assert_eq!(
        log,
        vec![
            format!("add {}/32 via 172.16.0.21", s.server_part_vpnnat()),
            format!("add {}/32 via 172.16.0.21", s.router_part_vpnnat()),
            format!("add {pc1}/32 via 172.16.0.21"),
        ]
    );
    c.end(n, NOW).await.unwrap();
    let log = std::mem::take(&mut *routes.log.lock().unwrap());
    assert_eq!(log[0], format!("del {pc1}/32 via 172.16.0.21"));
    assert!(log.contains(&format!("del {}/32 via 172.16.0.21", s.server_part_vpnnat())));
    assert!(log.contains(&format!("del {}/32 via 172.16.0.21", s.router_part_vpnnat())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_gateway_requests_fill_every_slot_exactly_once() {
    let (c, _g, _r) = center_with("10.64.0.0/22", &[10, 10, 10]);
    let c = Arc::new(c);
    let mut routers = Vec::new();
    for i in 0..31 {
        let mut r = TestRouter::new(&format!("router-{i}"));
        r.install(&c);
        routers.push(r);
    }
    let mut tasks = Vec::new();
    for r in routers {
        let c = c.clone();
        tasks.push(tokio::spawn(async move { r.gateway_address(&c).await.map(|_| ()) }));
    }
    let mut ok = 0;
    let mut full = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(CenterError::NoGatewayCapacity) => full += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((ok, full), (30, 1), "30 slots, 31 routers");
    let usage = c.store().unwrap().gateway_usage().unwrap();
    assert!(usage.iter().all(|g| g.used == 10 && g.free == 0), "{usage:?}");
}

/// With a second connection for reads (as centerd runs), every read that
/// follows a commit sees it: the MAC key right after installation, the
/// slot right after the claim, the request's state right after the end.
#[tokio::test]
async fn reads_on_a_second_connection_see_every_commit() {
    let dir = std::env::temp_dir().join(format!("vpnnat-reader-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("c.db");
    let mut st = Storage::open(&db).unwrap();
    st.init_pool(&"10.64.0.0/24".parse().unwrap()).unwrap();
    let g = Arc::new(FakeGateways::default());
    let r = Arc::new(FakeRouters::default());
    let c: TestCenter = Center::new(st, settings(&[2]), g, r)
        .unwrap()
        .with_reader(Storage::open(&db).unwrap());
    for i in 0..20 {
        let mut router = TestRouter::new(&format!("router-{i}"));
        router.install(&c);
        if i < 2 {
            router.gateway_address(&c).await.unwrap();
        }
        let res = router.maintenance(&c, &["pc1"]).await;
        if i < 2 {
            let (n, grants) = res.unwrap();
            assert_eq!(
                c.reads().unwrap().request(n).unwrap().unwrap().grants[0].vpnnat,
                grants[0].vpnnat_addr.get()
            );
            c.end(n, NOW).await.unwrap();
            assert_eq!(
                c.reads().unwrap().request(n).unwrap().unwrap().state,
                crate::storage::RequestState::Ended
            );
        } else {
            // Two slots: the third concurrent router would not fit, but the
            // first two ended, so every router gets one in turn.
            let (n, _) = res.unwrap();
            c.end(n, NOW).await.unwrap();
        }
    }
    assert_eq!(c.reads().unwrap().count_terminals().unwrap(), 20);
    c.store().unwrap().check_pool().unwrap();
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn gateway_down_marks_requests_skips_it_and_reconciles_when_back() {
    let (c, g, rt) = center_with("10.64.0.0/24", &[2, 2]);
    let mut r1 = TestRouter::new("router-1");
    let mut r2 = TestRouter::new("router-2");
    r1.install(&c);
    r2.install(&c);
    r1.gateway_address(&c).await.unwrap();
    let (n1, _) = r1.maintenance(&c, &["pc1"]).await.unwrap();
    tunnel_up(&c, "router-1");
    let key = ("gw1".to_string(), "router-1".to_string());
    let carried = g.tunnels.lock().unwrap()[&key].2.clone();
    let pool_before = c.store().unwrap().pool_usage().unwrap();
    let audits_before = c
        .store()
        .unwrap()
        .audit_log(&crate::storage::AuditFilter {
            limit: 100,
            ..Default::default()
        })
        .unwrap()
        .len();

    // gw1 dies (its process and kernel state are gone).
    g.dead.lock().unwrap().insert("gw1".into());
    g.tunnels.lock().unwrap().clear();
    let lost = c
        .gateway_down("gw1", NOW * 1000 + 250, Some(Duration::from_secs(3)))
        .unwrap()
        .unwrap();
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].terminal_id, "router-1");
    assert_eq!(lost[0].open_requests, vec![n1]);
    assert!(
        c.gateway_down("gw1", NOW * 1000 + 999, None).unwrap().is_none(),
        "only once"
    );
    {
        let st = c.store().unwrap();
        let gw1 = &st.gateway_usage().unwrap()[0];
        assert!(!gw1.alive);
        assert_eq!(gw1.alive_changed_ms, NOW * 1000 + 250);
        assert_eq!(gw1.used, 1, "the router stays bound to gw1");
        let slot = st.slot_of("router-1").unwrap().unwrap();
        assert_eq!(slot.tunnel_state, TunnelState::Down);
        let f = st.failures(Some("router-1"), 10).unwrap();
        assert_eq!(f[0].code, "gateway_lost");
        assert!(f[0].detail.contains(&n1.to_string()), "{}", f[0].detail);
        assert_eq!(st.pool_usage().unwrap(), pool_before, "no address taken or freed");
        let audit = st
            .audit_log(&crate::storage::AuditFilter {
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(audit.len(), audits_before + 1);
        assert_eq!(audit[0].action, "gateway_down");
    }
    let metrics = c.render_metrics().unwrap();
    assert!(
        metrics.contains("vpnnat_center_gateway_up{gateway=\"gw1\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vpnnat_center_gateway_up{gateway=\"gw2\"} 1"),
        "{metrics}"
    );

    // A new router goes to gw2 although gw1 has a free slot (and the
    // fake's probe would now say gw1 answers: the database decides).
    g.dead.lock().unwrap().clear();
    let info = r2.gateway_address(&c).await.unwrap();
    assert_eq!(info.gateway_ip.get(), Ipv4Addr::new(198, 51, 100, 12));
    // router-1, bound to gw1, is refused at once with no state change.
    g.take();
    let e = r1.maintenance(&c, &["pc2"]).await.unwrap_err();
    assert_eq!(status(&e), 502);
    assert!(e.to_string().contains("down"), "{e}");
    assert!(g.take().is_empty(), "nothing sent to a gateway marked down");
    assert_eq!(c.store().unwrap().pool_usage().unwrap(), pool_before);

    // gw1 answers again: marked up, its router's tunnel set up again with
    // every address it carried.
    let o = c.gateway_back("gw1", NOW * 1000 + 5000).await.unwrap().unwrap();
    assert_eq!(o.set_up, vec!["router-1".to_string()]);
    assert_eq!(g.tunnels.lock().unwrap()[&key].2, carried);
    assert!(c.store().unwrap().gateway_alive("gw1").unwrap());
    assert!(c.gateway_back("gw1", NOW * 1000 + 6000).await.unwrap().is_none());
    let audit = c
        .store()
        .unwrap()
        .audit_log(&crate::storage::AuditFilter {
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(audit[0].action, "gateway_up");
    assert!(audit[0].detail.contains("1 tunnel(s) set up"), "{}", audit[0].detail);

    // Ending a request while its gateway is down frees the center's side
    // without waiting on the gateway; reconciliation tears the tunnel down.
    c.gateway_down("gw1", NOW * 1000 + 7000, None).unwrap();
    g.take();
    rt.take();
    let o = c.end(n1, NOW).await.unwrap();
    assert!(o.vpn_ended);
    assert!(
        o.warnings.iter().any(|w| w.contains("gateway down")),
        "{:?}",
        o.warnings
    );
    assert!(g.take().is_empty(), "no command to a gateway marked down");
    assert_eq!(c.store().unwrap().gateway_usage().unwrap()[0].used, 0);
    let o = c.gateway_back("gw1", NOW * 1000 + 8000).await.unwrap().unwrap();
    assert_eq!(o.torn_down, vec!["router-1".to_string()]);
    assert!(g.tunnels.lock().unwrap().is_empty());
}

/// Issue 17: the center decides who initiates each router's tunnel from
/// what it sees, answers with it, remembers it for the gateway command,
/// and audits each change with its reason.
#[tokio::test]
async fn initiation_mode_is_decided_answered_remembered_and_audited() {
    let (c, g, _) = center_with("10.64.0.0/24", &[3]);
    let initiation_audit = |c: &TestCenter| {
        c.store()
            .unwrap()
            .audit_log(&crate::storage::AuditFilter {
                action: Some("initiation".into()),
                limit: 10,
                ..Default::default()
            })
            .unwrap()
    };
    // A router with a public address: the seed's mode.
    let mut public = TestRouter::new("router-1");
    public.install(&c);
    public.seen = Some(Ipv4Addr::new(203, 0, 113, 5));
    public.wan = Some(WanAddress::Ipv4(Ipv4Addr::new(203, 0, 113, 5)));
    assert_eq!(
        public.gateway_address(&c).await.unwrap().initiation,
        InitiationMode::Gateway
    );
    // Behind a NAT: its WAN address is not where its request came from.
    let mut natted = TestRouter::new("router-2");
    natted.install(&c);
    natted.seen = Some(Ipv4Addr::new(203, 0, 113, 9));
    natted.wan = Some(WanAddress::Ipv4(Ipv4Addr::new(192, 0, 2, 2)));
    assert_eq!(
        natted.gateway_address(&c).await.unwrap().initiation,
        InitiationMode::Router
    );
    let row = c.store().unwrap().initiation_of("router-2").unwrap().unwrap();
    assert_eq!(row.mode(), InitiationMode::Router);
    assert!(row.reason.contains("behind NAT"), "{row:?}");
    assert_eq!(row.seen_ip.as_deref(), Some("203.0.113.9"));
    let audit = initiation_audit(&c);
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert_eq!(audit[0].terminal_id.as_deref(), Some("router-2"));
    assert!(
        audit[0].detail.starts_with("router-initiated tunnel: behind NAT"),
        "{audit:?}"
    );
    assert_eq!(audit[0].peer, "203.0.113.9");
    assert!(
        audit[1].detail.starts_with("gateway-initiated tunnel: public address"),
        "{audit:?}"
    );
    // The same decision again is not audited again.
    natted.gateway_address(&c).await.unwrap();
    assert_eq!(initiation_audit(&c).len(), 2);
    // The gateway is commanded in the decided mode.
    g.take();
    public.maintenance(&c, &["pc1"]).await.unwrap();
    assert!(g.take().iter().all(|l| !l.starts_with("await")));
    natted.maintenance(&c, &["pc1"]).await.unwrap();
    assert_eq!(g.take()[0], "await gw1 router-2");
    // A configured mode wins, and its change is audited.
    natted.initiation = InitiationPreference::Gateway;
    assert_eq!(
        natted.gateway_address(&c).await.unwrap().initiation,
        InitiationMode::Gateway
    );
    let audit = initiation_audit(&c);
    assert_eq!(audit.len(), 3);
    assert_eq!(audit[0].detail, "gateway-initiated tunnel: configured on the router");
    // An old router (reports nothing) keeps the seed's mode.
    let mut old = TestRouter::new("router-3");
    old.install(&c);
    old.seen = Some(Ipv4Addr::new(203, 0, 113, 9));
    assert_eq!(
        old.gateway_address(&c).await.unwrap().initiation,
        InitiationMode::Gateway
    );
}

/// Waits until the fake gateway was told to set up `id`'s tunnel and given
/// its addresses (what gatewayd does before IKE can finish).
async fn gateway_programmed(g: &FakeGateways, id: &str) {
    loop {
        let ready = g
            .tunnels
            .lock()
            .unwrap()
            .iter()
            .any(|((_, t), (_, _, addrs))| t == id && !addrs.is_empty());
        if ready {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn gw1_event_detail(c: &TestCenter, id: &str, status: TunnelStatus, detail: &str) {
    let slot = c.store().unwrap().slot_of(id).unwrap().unwrap().slot;
    let ev = TunnelEvent {
        terminal_id: tid(id),
        slot,
        status,
        detail: FailureDetail::new(detail).unwrap(),
        seq: 0,
    };
    let key = gw_key(1).mac_key();
    let out = encode_request(&ev, &GatewayName::new("gw1").unwrap(), &key, NOW, &rng()).unwrap();
    c.tunnel_event(out.path, &out.headers, &out.body, NOW).unwrap();
}

fn waiting(bound: Duration) -> (TestCenter, Arc<FakeGateways>, Arc<FakeRouters>) {
    let mut s = settings(&[2]);
    s.tunnel_up_timeout = bound;
    center_with_settings("10.64.0.0/24", s)
}

/// Everything a failed request could leave behind: its addresses, the
/// router's slot, the gateway's tunnel, an open request.
fn assert_nothing_left(c: &TestCenter, g: &FakeGateways, id: &str, number: u64) {
    let st = c.store().unwrap();
    assert_eq!(st.address_of(id, "pc1").unwrap(), None, "address released");
    assert!(st.slot_of(id).unwrap().is_none(), "slot freed");
    assert_eq!(st.request(number).unwrap().unwrap().state, RequestState::Ended);
    st.check_pool().unwrap();
    drop(st);
    assert!(g.tunnels.lock().unwrap().is_empty(), "gateway tunnel torn down");
}

#[tokio::test]
async fn a_request_is_answered_accepted_only_once_its_tunnel_is_up() {
    let (c, g, _) = waiting(Duration::from_secs(30));
    let mut r = TestRouter::new("router-1");
    r.install(&c);
    let (answer, ()) = tokio::join!(r.maintenance(&c, &["pc1"]), async {
        gateway_programmed(&g, "router-1").await;
        // Still waiting for the tunnel: not answered yet.
        tokio::time::sleep(Duration::from_millis(20)).await;
        gw1_event(&c, "router-1", TunnelStatus::Up);
    });
    let (n, grants) = answer.unwrap();
    assert_eq!(grants.len(), 1);
    assert_eq!(tunnel_state_of(&c, "router-1"), TunnelState::Up);
    let row = c.store().unwrap().request(n).unwrap().unwrap();
    assert_eq!(row.state, RequestState::Waiting);
}

#[tokio::test]
async fn a_request_whose_tunnel_never_comes_fails_clearly_and_leaves_nothing() {
    let (c, g, routers) = waiting(Duration::from_millis(50));
    let mut r = TestRouter::new("router-1");
    r.install(&c);
    let before = snapshot(&c);
    let e = r.maintenance(&c, &["pc1"]).await.unwrap_err();
    assert_eq!(status(&e), 504);
    let text = e.public_text();
    assert!(text.contains("did not come up within 0.05 s"), "{text}");
    assert!(text.contains("timeout"), "{text}");
    assert!(text.contains("everything it took released"), "{text}");
    // Ended as an operator's end would: the gateway was given the address
    // and then told to drop it and the tunnel.
    let cmds = g.take();
    assert!(cmds.iter().any(|c| c.starts_with("setup gw1 router-1")), "{cmds:?}");
    assert!(cmds.iter().any(|c| c.starts_with("remove gw1 router-1")), "{cmds:?}");
    assert_eq!(
        cmds.last().map(String::as_str),
        Some("teardown gw1 router-1"),
        "{cmds:?}"
    );
    // Nothing through a tunnel that is not up.
    assert!(routers.take().is_empty());
    let n = c.store().unwrap().list_requests(10).unwrap()[0].acceptance_number;
    assert_nothing_left(&c, &g, "router-1", n);
    let after = snapshot(&c);
    assert_eq!((after.pool, after.slots), (before.pool, before.slots));
    let audit = c
        .store()
        .unwrap()
        .audit_log(&crate::storage::AuditFilter {
            action: Some("tunnel_failed".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].acceptance_number, Some(n));
    assert!(audit[0].detail.contains("timeout"), "{audit:?}");
    // The router asks again and, with its tunnel coming up, is served.
    let (answer, ()) = tokio::join!(r.maintenance(&c, &["pc1"]), async {
        gateway_programmed(&g, "router-1").await;
        gw1_event(&c, "router-1", TunnelStatus::Up);
    });
    answer.unwrap();
}

#[tokio::test]
async fn a_refused_ike_is_named_in_the_failure() {
    let (c, g, _) = waiting(Duration::from_millis(300));
    let mut r = TestRouter::new("router-1");
    r.install(&c);
    let (answer, ()) = tokio::join!(r.maintenance(&c, &["pc1"]), async {
        gateway_programmed(&g, "router-1").await;
        gw1_event_detail(&c, "router-1", TunnelStatus::Down, "IKE down: AuthenticationFailed");
    });
    let e = answer.unwrap_err();
    assert_eq!(status(&e), 504);
    let text = e.public_text();
    assert!(text.contains("IKE refused: authentication failed"), "{text}");
    let n = c.store().unwrap().list_requests(10).unwrap()[0].acceptance_number;
    assert_nothing_left(&c, &g, "router-1", n);
}

#[tokio::test]
async fn a_connecting_report_does_not_pass_for_the_reason_of_a_timeout() {
    let (c, g, _) = waiting(Duration::from_millis(200));
    let mut r = TestRouter::new("router-1");
    r.install(&c);
    let (answer, ()) = tokio::join!(r.maintenance(&c, &["pc1"]), async {
        gateway_programmed(&g, "router-1").await;
        gw1_event_detail(
            &c,
            "router-1",
            TunnelStatus::Connecting,
            "policies installed; IKE connects with the first granted address",
        );
    });
    let text = answer.unwrap_err().public_text();
    assert!(text.contains("timeout: the gateway reported no IKE answer"), "{text}");
}
