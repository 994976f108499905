//! A fake maintenance center for unit and HTTP tests: it verifies the
//! router's messages exactly as centerd would (proto's `decode_request`) and
//! answers with sealed, MAC'd responses. Test support only (also behind
//! the `fake-center` feature for the benchmark), hence the panicking helpers.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::arithmetic_side_effects,
    clippy::indexing_slicing,
    missing_docs
)]

use std::net::Ipv4Addr;

use ring::rand::SystemRandom;
use vpnnat_proto::auth::{AuthHeaders, MemoryNonceStore, ReplayConfig, ReplayGuard};
use vpnnat_proto::keys::{MaintenancePassword, Psk, SecretBytes, SecretId, SecretId2};
use vpnnat_proto::messages::{
    Ack, EndCommand, FailureNotice, GatewayAddressRequest, GatewayInfo, Grant, Grants, InstallRequest, InstallSecrets,
    MaintenanceRequest, ReleaseCommand, RequestStatesAnswer, RequestStatesQuery, SiteEndAnswer, SiteEndOutcome,
    SiteEndRequest, TunnelLostAnswer, TunnelLostNotice, TunnelRebuild, VpnEndCommand,
};
use vpnnat_proto::types::{AcceptanceNumber, BoundedSet, IkeIdentity, Ipv4Cidr, TerminalId, TerminalName, UnicastAddr};
use vpnnat_proto::{decode_request, encode_request, encode_response, paths, Command, KeyKind, Outgoing, ProtoError};

use crate::logic::CenterReply;

pub const NOW: u64 = 1_800_000_000;

#[derive(Debug)]
pub struct FakeCenter {
    pub terminal_id: TerminalId,
    pub secret_id: SecretId,
    pub secret_id2: SecretId2,
    pub next_acceptance: u64,
    pub next_vpnnat: u32,
    guard: ReplayGuard<MemoryNonceStore>,
    rng: SystemRandom,
    /// Paths received, in order.
    pub seen: Vec<String>,
    pub failures: Vec<FailureNotice>,
    /// Answer every request with this status and text instead.
    pub refuse: Option<(u16, String)>,
    /// Answer maintenance requests only with this status and text (the
    /// gateway address exchange before them succeeds).
    pub refuse_maintenance: Option<(u16, String)>,
    /// Grant names the router did not ask for (to test mismatches).
    pub grant_extra: Option<TerminalName>,
    /// The center's clock (Unix seconds).
    pub now: u64,
    /// What a tunnel-lost notice is answered with.
    pub tunnel_lost_answer: TunnelRebuild,
    /// The source address the center sees the router's requests from
    /// (decides the tunnel initiation mode with what the router reports).
    pub source: Option<Ipv4Addr>,
    /// The maintenance password the installation hands out (the center
    /// gives each router its own).
    pub maintenance_password: String,
    /// Tell routers that ask when their request ends: this long after it
    /// (issue 19, item 8; None: say nothing, as an older center).
    pub grant_lifetime_secs: Option<u64>,
    /// Tell routers that ask the center's idle limit (issue 19, item 8;
    /// None: say nothing, as a center without one or an older center).
    pub idle_timeout_secs: Option<u64>,
    /// Site ends received (issue 19, item 7), in order; a number it never
    /// gave out is refused (403) as another router's.
    pub site_ends: Vec<u64>,
    /// Requests this center ended without telling the router (issue 19,
    /// item 1: its commands were lost with the tunnel); the request-states
    /// query reads them, with the site ends, as ended.
    pub ended_unseen: Vec<u64>,
    /// Request-states queries received: the numbers asked, in order.
    pub state_queries: Vec<Vec<u64>>,
    /// The server-part and router-part addresses of the last installation
    /// answer: a request naming the router's own parts is granted these,
    /// as centerd does (the pool row of the name is reused).
    pub own_parts: Option<(UnicastAddr, UnicastAddr)>,
}

impl FakeCenter {
    pub fn new(terminal_id: &str, secret_id: SecretId) -> Self {
        FakeCenter {
            terminal_id: TerminalId::new(terminal_id).unwrap(),
            secret_id,
            secret_id2: SecretId2::from_array([0x22; 32]),
            maintenance_password: "maintenance-pw".into(),
            next_acceptance: 100,
            next_vpnnat: 0x0a40_0010,
            guard: ReplayGuard::new(MemoryNonceStore::default(), ReplayConfig::default()),
            rng: SystemRandom::new(),
            seen: Vec::new(),
            failures: Vec::new(),
            refuse: None,
            refuse_maintenance: None,
            grant_extra: None,
            now: NOW,
            tunnel_lost_answer: TunnelRebuild::Up,
            source: None,
            grant_lifetime_secs: None,
            idle_timeout_secs: None,
            site_ends: Vec::new(),
            ended_unseen: Vec::new(),
            state_queries: Vec::new(),
            own_parts: None,
        }
    }

    pub fn gateway_ip() -> Ipv4Addr {
        Ipv4Addr::new(198, 51, 100, 21)
    }

    fn key(&self, kind: KeyKind) -> vpnnat_proto::keys::MacKey {
        match kind {
            KeyKind::SecretId => self.secret_id.mac_key(),
            _ => self.secret_id2.mac_key(),
        }
    }

    fn verify<C: Command<Principal = TerminalId>>(
        &mut self,
        path: &str,
        headers: &AuthHeaders,
        body: &[u8],
    ) -> Result<vpnnat_proto::Verified<C>, ProtoError> {
        let tid = self.terminal_id.clone();
        let k1 = self.secret_id.mac_key();
        let k2 = self.secret_id2.mac_key();
        let now = self.now;
        decode_request::<C, _, _>(&mut self.guard, path, headers, body, now, |t, kind| {
            (t == &tid).then(|| if kind == KeyKind::SecretId { k1 } else { k2 })
        })
    }

    fn ok<C: Command>(&self, v: &vpnnat_proto::Verified<C>, resp: &C::Response) -> CenterReply {
        let out = encode_response(v, resp, &self.key(C::KEY), self.now, &self.rng).unwrap();
        CenterReply {
            status: 200,
            headers: Some(out.headers),
            body: out.body,
        }
    }

    fn err(e: ProtoError) -> CenterReply {
        CenterReply {
            status: e.http_status(),
            headers: None,
            body: e.to_string().into_bytes(),
        }
    }

    fn vpnnat(&mut self) -> UnicastAddr {
        self.next_vpnnat += 1;
        UnicastAddr::new(Ipv4Addr::from(self.next_vpnnat)).unwrap()
    }

    /// Answers one router -> center message.
    pub fn answer(&mut self, out: &Outgoing) -> CenterReply {
        self.answer_raw(out.path, &out.headers, &out.body)
    }

    pub fn answer_raw(&mut self, path: &str, headers: &AuthHeaders, body: &[u8]) -> CenterReply {
        self.seen.push(path.to_string());
        let refusal = match path {
            paths::center::MAINTENANCE => self.refuse.as_ref().or(self.refuse_maintenance.as_ref()),
            _ => self.refuse.as_ref(),
        };
        if let Some((status, text)) = refusal {
            return CenterReply {
                status: *status,
                headers: None,
                body: text.clone().into_bytes(),
            };
        }
        match path {
            paths::center::INSTALL => match self.verify::<InstallRequest>(path, headers, body) {
                Ok(v) => {
                    let server = self.vpnnat();
                    let router = self.vpnnat();
                    self.own_parts = Some((server, router));
                    let secrets = InstallSecrets::new(
                        Psk::from_array([0x33; 32]),
                        self.secret_id2.clone(),
                        MaintenancePassword::new(self.maintenance_password.clone()).unwrap(),
                        server,
                        router,
                    )
                    .unwrap();
                    let resp = secrets
                        .seal(&self.rng, &self.terminal_id, &v.command().reply_key)
                        .unwrap();
                    self.ok(&v, &resp)
                }
                Err(e) => Self::err(e),
            },
            paths::center::FAILURE => match self.verify::<FailureNotice>(path, headers, body) {
                Ok(v) => {
                    self.failures.push(v.command().clone());
                    self.ok(&v, &Ack {})
                }
                Err(e) => Self::err(e),
            },
            paths::center::GATEWAY_ADDRESS => match self.verify::<GatewayAddressRequest>(path, headers, body) {
                Ok(v) => {
                    let info = GatewayInfo {
                        gateway_ip: UnicastAddr::new(Self::gateway_ip()).unwrap(),
                        gateway_ike_id: IkeIdentity::new("gw1.center.example").unwrap(),
                        center_networks: BoundedSet::new(vec!["172.16.0.0/24".parse::<Ipv4Cidr>().unwrap()]).unwrap(),
                        initiation: vpnnat_proto::initiation::decide(
                            v.command().initiation,
                            self.source,
                            v.command().wan,
                        )
                        .0,
                    };
                    let resp = info.seal(&self.rng, &self.terminal_id, &v.command().reply_key).unwrap();
                    self.ok(&v, &resp)
                }
                Err(e) => Self::err(e),
            },
            paths::center::TUNNEL_LOST => match self.verify::<TunnelLostNotice>(path, headers, body) {
                Ok(v) => {
                    let answer = TunnelLostAnswer {
                        tunnel: self.tunnel_lost_answer,
                    };
                    self.ok(&v, &answer)
                }
                Err(e) => Self::err(e),
            },
            paths::center::REQUEST_STATES => match self.verify::<RequestStatesQuery>(path, headers, body) {
                Ok(v) => {
                    let asked: Vec<u64> = v.command().open.iter().map(|n| n.get()).collect();
                    self.state_queries.push(asked.clone());
                    let ended = asked
                        .into_iter()
                        .filter(|n| self.ended_unseen.contains(n) || self.site_ends.contains(n))
                        .map(|n| AcceptanceNumber::new(n).unwrap())
                        .collect();
                    let ended = BoundedSet::new(ended).unwrap();
                    self.ok(&v, &RequestStatesAnswer { ended })
                }
                Err(e) => Self::err(e),
            },
            paths::center::SITE_END => match self.verify::<SiteEndRequest>(path, headers, body) {
                Ok(v) => {
                    let n = v.command().acceptance_number.get();
                    if n <= 100 || n > self.next_acceptance {
                        return CenterReply {
                            status: 403,
                            headers: None,
                            body: format!("request {n} is not one of this router's requests").into_bytes(),
                        };
                    }
                    let outcome = if self.site_ends.contains(&n) {
                        SiteEndOutcome::AlreadyEnded
                    } else {
                        SiteEndOutcome::Ended
                    };
                    self.site_ends.push(n);
                    self.ok(&v, &SiteEndAnswer { outcome })
                }
                Err(e) => Self::err(e),
            },
            paths::center::MAINTENANCE => match self.verify::<MaintenanceRequest>(path, headers, body) {
                Ok(v) => {
                    let details = v.command().open_details(&self.secret_id2, &self.terminal_id).unwrap();
                    let mut grants = Vec::new();
                    let mut names: Vec<TerminalName> = details.terminal_names.iter().cloned().collect();
                    names.extend(self.grant_extra.clone());
                    for n in names {
                        let vpnnat_addr = match (n.as_str(), self.own_parts) {
                            (vpnnat_proto::types::SERVER_PART_NAME, Some((s, _))) => s,
                            (vpnnat_proto::types::ROUTER_PART_NAME, Some((_, r))) => r,
                            _ => self.vpnnat(),
                        };
                        grants.push(Grant {
                            terminal_name: n,
                            vpnnat_addr,
                        });
                    }
                    self.next_acceptance += 1;
                    let n = AcceptanceNumber::new(self.next_acceptance).unwrap();
                    let resp = Grants::new(grants)
                        .unwrap()
                        .seal(&self.rng, &self.terminal_id, &v.command().reply_key, n)
                        .unwrap()
                        .with_ends_at(
                            self.grant_lifetime_secs
                                .filter(|_| v.command().wants_ends_at)
                                .map(|l| self.now + l),
                        )
                        .with_idle_timeout(self.idle_timeout_secs.filter(|_| v.command().wants_idle_timeout));
                    self.ok(&v, &resp)
                }
                Err(e) => Self::err(e),
            },
            other => Self::err(ProtoError::UnknownPath { path: other.into() }),
        }
    }

    /// Center -> router commands, signed with Secret(ID2).
    pub fn end(&self, n: u64) -> Outgoing {
        let c = EndCommand {
            acceptance_number: AcceptanceNumber::new(n).unwrap(),
        };
        encode_request(&c, &self.terminal_id, &self.secret_id2.mac_key(), self.now, &self.rng).unwrap()
    }

    pub fn release(&self, name: &str) -> Outgoing {
        let c = ReleaseCommand {
            terminal_name: TerminalName::new(name).unwrap(),
        };
        encode_request(&c, &self.terminal_id, &self.secret_id2.mac_key(), self.now, &self.rng).unwrap()
    }

    pub fn vpn_end(&self) -> Outgoing {
        encode_request(
            &VpnEndCommand {},
            &self.terminal_id,
            &self.secret_id2.mac_key(),
            self.now,
            &self.rng,
        )
        .unwrap()
    }
}

/// The fake center behind a real HTTP server (for the shell tests).
#[derive(Debug)]
pub struct CenterSim(pub std::sync::Mutex<FakeCenter>);

impl crate::http::Handler for CenterSim {
    async fn handle(&self, req: crate::http::Incoming1) -> crate::http::Reply {
        let headers = crate::http::auth_headers(&req.headers).unwrap_or_default();
        let r = self.0.lock().unwrap().answer_raw(&req.path, &headers, &req.body);
        let mut out = crate::http::reply(r.status, "application/json", r.body);
        if let Some(h) = r.headers {
            for (k, v) in h.pairs() {
                out.headers_mut().insert(k, v.parse().unwrap());
            }
        }
        out
    }
}
