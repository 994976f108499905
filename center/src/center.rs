//! The center's side of every exchange of PROTOCOL.md, over [`Storage`] and
//! two command traits: [`GatewayCommands`] (centerd -> gatewayd) and
//! [`RouterCommands`] (centerd -> router through the tunnel). No HTTP here:
//! the server hands in the path, the authentication headers, the body, the
//! peer's address and the time, and gets back a signed [`Outgoing`] answer
//! or a [`CenterError`] with its HTTP status.
//!
//! Every router command goes through `vpnnat_proto::decode_request` first,
//! with the nonce store in the database, so a rejected message (bad MAC,
//! stale, replayed, unknown terminal, malformed JSON) changes nothing.

use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use ring::rand::SystemRandom;
use thiserror::Error;
use tokio::sync::Notify;
use vpnnat_proto::auth::{AuthHeaders, Nonce, NonceStore, NonceStoreError, ReplayConfig, ReplayGuard};
use vpnnat_proto::keys::{
    FactoryMasterKey, GatewayApiKey, MacKey, MaintenancePassword, Psk, SecretBytes, SecretId, SecretId2,
};
use vpnnat_proto::messages::{
    Ack, FailureNotice, GatewayAddressRequest, GatewayInfo, Grant, Grants, InstallRequest, InstallSecrets,
    MaintenanceRequest, StateReport, TunnelEvent, TunnelLostAnswer, TunnelLostNotice, TunnelRebuild, TunnelStatus,
};
use vpnnat_proto::types::{
    AcceptanceNumber, BoundedSet, ClaimantLevel, GatewayName, IkeIdentity, Ipv4Cidr, TerminalId, TerminalName,
    UnicastAddr, Urgency,
};
use vpnnat_proto::{decode_request, encode_response, Command, KeyKind, Outgoing, ProtoError, Verified};

use crate::routes::RouteProgrammer;
use crate::storage::{
    is_router_own_part, NewRequest, RequestRow, RequestState, SlotRow, Storage, StorageError, TerminalRow, TunnelState,
};

/// Extra slot-claim attempts beyond one per gateway (each failed attempt
/// means the chosen gateway filled up between scan and claim).
const MAX_SLOT_RACES: usize = 16;

/// A call to a gateway or a router failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CommandError {
    #[error("{target} did not answer: {reason}")]
    Unreachable { target: String, reason: String },
    #[error("{target} refused the command: HTTP {status} {text}")]
    Refused { target: String, status: u16, text: String },
    #[error("{target} answered badly: {reason}")]
    BadAnswer { target: String, reason: String },
    #[error("{target} is not configured")]
    Unknown { target: String },
}

/// Why the center refused or failed an exchange.
#[derive(Debug, Error)]
pub enum CenterError {
    #[error(transparent)]
    Proto(#[from] ProtoError),
    #[error("VPNNAT pool exhausted: no address left for this request (nothing was assigned)")]
    PoolExhausted,
    #[error("no VPN gateway capacity: every answering gateway's tunnel slots are in use")]
    NoGatewayCapacity,
    #[error("VPN gateway unavailable: {0}")]
    Gateway(CommandError),
    #[error("{0}")]
    Storage(StorageError),
    #[error("stored secret of {terminal} is unreadable")]
    BadStoredSecret { terminal: String },
    #[error("the database lock is poisoned")]
    Poisoned,
}

impl From<StorageError> for CenterError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::PoolExhausted { .. } => CenterError::PoolExhausted,
            other => CenterError::Storage(other),
        }
    }
}

impl CenterError {
    /// The HTTP status the server answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            CenterError::Proto(p) => p.http_status(),
            CenterError::PoolExhausted | CenterError::NoGatewayCapacity => 503,
            CenterError::Gateway(_) => 502,
            CenterError::Storage(StorageError::NotFound { .. }) => 404,
            CenterError::Storage(StorageError::BadTransition { .. }) => 409,
            CenterError::Storage(_) | CenterError::BadStoredSecret { .. } | CenterError::Poisoned => 500,
        }
    }

    /// The body text sent to a router. A bad MAC and an unknown terminal
    /// read alike, so a probe cannot learn which terminal IDs exist;
    /// internal failures say nothing about the database.
    pub fn public_text(&self) -> String {
        match self {
            CenterError::Proto(ProtoError::BadMac | ProtoError::UnknownTerminal) => {
                "message authentication failed".into()
            }
            CenterError::Storage(_) | CenterError::BadStoredSecret { .. } | CenterError::Poisoned => {
                "internal error".into()
            }
            other => other.to_string(),
        }
    }
}

/// centerd -> gatewayd commands (PROTOCOL.md: server -> gateway).
pub trait GatewayCommands: Send + Sync {
    /// Whether the gateway answers (used to skip dead gateways).
    fn probe(&self, gateway: &str) -> impl Future<Output = bool> + Send;
    /// Set up (or re-key) the tunnel to a router.
    fn setup_tunnel(
        &self,
        gateway: &str,
        terminal: &TerminalId,
        router_ip: Ipv4Addr,
        slot: u16,
        psk: &Psk,
    ) -> impl Future<Output = Result<(), CommandError>> + Send;
    fn add_addresses(
        &self,
        gateway: &str,
        terminal: &TerminalId,
        addresses: &[Ipv4Addr],
    ) -> impl Future<Output = Result<(), CommandError>> + Send;
    fn remove_addresses(
        &self,
        gateway: &str,
        terminal: &TerminalId,
        addresses: &[Ipv4Addr],
    ) -> impl Future<Output = Result<(), CommandError>> + Send;
    fn tear_down(&self, gateway: &str, terminal: &TerminalId) -> impl Future<Output = Result<(), CommandError>> + Send;
    /// The router lost its IKE state: drop the stale IKE SA and negotiate
    /// the tunnel afresh now.
    fn restart_tunnel(
        &self,
        gateway: &str,
        terminal: &TerminalId,
    ) -> impl Future<Output = Result<(), CommandError>> + Send;
    /// The gateway's whole state (for reconciliation).
    fn report(&self, gateway: &str) -> impl Future<Output = Result<StateReport, CommandError>> + Send;
}

/// Where and how to reach a router's server part through its tunnel.
#[derive(Debug, Clone)]
pub struct RouterTarget {
    pub terminal_id: TerminalId,
    /// The router's server-part VPNNAT address.
    pub address: Ipv4Addr,
    pub secret_id2: SecretId2,
}

/// centerd -> router commands (6. end, 7. release, 8. VPN end).
pub trait RouterCommands: Send + Sync {
    fn end(&self, to: &RouterTarget, n: AcceptanceNumber) -> impl Future<Output = Result<(), CommandError>> + Send;
    fn release(&self, to: &RouterTarget, name: &TerminalName) -> impl Future<Output = Result<(), CommandError>> + Send;
    fn vpn_end(&self, to: &RouterTarget) -> impl Future<Output = Result<(), CommandError>> + Send;
}

/// One configured gateway, as the center logic needs it.
#[derive(Debug, Clone)]
pub struct GatewayEntry {
    pub name: GatewayName,
    pub global_ip: UnicastAddr,
    pub ike_id: IkeIdentity,
    pub api_key: GatewayApiKey,
    pub slots: u16,
    /// The gateway's address on the center LAN: next hop of the host routes
    /// centerd programs for the VPNNAT addresses it carries (None: no route).
    pub next_hop: Option<Ipv4Addr>,
}

/// The validated settings the exchanges need.
#[derive(Debug)]
pub struct CenterSettings {
    pub factory_master_key: FactoryMasterKey,
    /// Handed to routers at installation (sealed).
    pub maintenance_password: MaintenancePassword,
    /// Its hash, the only form written to the terminals table.
    pub maintenance_password_hash: String,
    pub center_networks: BoundedSet<Ipv4Cidr, 1, { vpnnat_proto::messages::MAX_CENTER_NETWORKS }>,
    pub gateways: Vec<GatewayEntry>,
    pub replay: ReplayConfig,
    /// How long a maintenance request waits for its tunnel to come up
    /// before answering anyway (the request stays "waiting" and the tunnel
    /// state is shown to the operator; nothing pretends it is up).
    pub tunnel_up_timeout: Duration,
}

impl CenterSettings {
    pub fn gateway(&self, name: &str) -> Option<&GatewayEntry> {
        self.gateways.iter().find(|g| g.name.as_str() == name)
    }
}

/// What "end" did, for the operator and the logs.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct EndOutcome {
    pub acceptance_number: u64,
    /// Extension terminals whose VPNNAT address went back to the pool (7).
    pub released: Vec<(String, Ipv4Addr)>,
    /// Terminals kept because another request still needs them (judgment 1).
    pub kept: Vec<String>,
    /// Whether the router's VPN was ended (8).
    pub vpn_ended: bool,
    /// Commands that failed (the center's state is freed anyway).
    pub warnings: Vec<String>,
}

/// What a reconciliation with one gateway changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReconcileOutcome {
    pub gateway: String,
    /// Tunnels (re)created because the gateway lacked them or had them wrong.
    pub set_up: Vec<String>,
    pub added: usize,
    pub removed: usize,
    /// Tunnels the gateway had but the database does not give it.
    pub torn_down: Vec<String>,
    pub warnings: Vec<String>,
}

/// Who did something and from where, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// `operator#N`, `router:ID`, `cli:USER`, `centerd`.
    pub who: String,
    /// The peer's address, or `local`.
    pub peer: String,
}

impl Actor {
    pub fn new(who: impl Into<String>, peer: impl Into<String>) -> Self {
        Actor {
            who: who.into(),
            peer: peer.into(),
        }
    }

    /// centerd itself (tests and internal callers).
    pub fn centerd() -> Self {
        Actor::new("centerd", "local")
    }

    fn router(tid: &str, peer: Option<Ipv4Addr>) -> Self {
        Actor::new(
            format!("router:{tid}"),
            peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string()),
        )
    }
}

/// The center: storage, settings, command channels.
#[derive(Debug)]
pub struct Center<G, R> {
    store: Mutex<Storage>,
    /// A second connection to the same file for reads (WAL readers do not
    /// wait for the writer): MAC key lookups, slot reads, the UI, DNS and
    /// metrics stop queueing behind the write lock. None: reads use `store`.
    reader: Option<Mutex<Storage>>,
    settings: CenterSettings,
    gateways: G,
    routers: R,
    rng: SystemRandom,
    /// Woken on every tunnel event; waiters re-read their slot.
    tunnel_events: Notify,
    /// Which tunnel events and state reports are news (late events are not).
    event_order: Mutex<crate::event_order::EventOrder>,
    /// Host routes toward the gateways (None: the operator's routing is
    /// someone else's job).
    routes: Option<Box<dyn RouteProgrammer>>,
    /// Latency and outcome of the router/gateway API commands.
    metrics: crate::metrics::CommandMetrics,
    /// One lock per router: its maintenance request, its end and the
    /// reconciliation of its tunnel each send several gateway commands;
    /// interleaved, a reconcile working from a state report taken before a
    /// VPN end would set the ended tunnel up again in a slot already given
    /// to another router (seen under load). One entry per router that ever
    /// did one of these: bounded by the terminals table.
    /// The value: when an exchange last finished its gateway commands for
    /// the router, so a reconcile can tell its state report is older.
    terminal_locks: Mutex<std::collections::HashMap<String, TerminalLock>>,
}

type TerminalLock = std::sync::Arc<tokio::sync::Mutex<Option<std::time::Instant>>>;

/// A router's lock held by an exchange; on release it records when the
/// exchange's gateway commands were done (also on an early error return).
struct TerminalWork(tokio::sync::OwnedMutexGuard<Option<std::time::Instant>>);

impl Drop for TerminalWork {
    fn drop(&mut self) {
        *self.0 = Some(std::time::Instant::now());
    }
}

/// The database's nonce store, locking the storage only for each nonce
/// operation (not for the whole decode).
struct LockedNonceStore<'a>(&'a Mutex<Storage>);

impl NonceStore for LockedNonceStore<'_> {
    fn insert_if_absent(&mut self, principal: &str, nonce: &Nonce, expires_at: u64) -> Result<bool, NonceStoreError> {
        let st = self
            .0
            .lock()
            .map_err(|_| NonceStoreError::Backend("database lock poisoned".into()))?;
        st.nonce_store().insert_if_absent(principal, nonce, expires_at)
    }

    fn purge_expired(&mut self, now: u64) -> Result<(), NonceStoreError> {
        let st = self
            .0
            .lock()
            .map_err(|_| NonceStoreError::Backend("database lock poisoned".into()))?;
        st.nonce_store().purge_expired(now)
    }
}

fn secret_id2_of(row: &TerminalRow) -> Result<SecretId2, CenterError> {
    SecretId2::from_hex(&row.secret_id2_hex).map_err(|_| CenterError::BadStoredSecret {
        terminal: row.terminal_id.clone(),
    })
}

fn psk_of(row: &TerminalRow) -> Result<Psk, CenterError> {
    Psk::from_hex(&row.psk_hex).map_err(|_| CenterError::BadStoredSecret {
        terminal: row.terminal_id.clone(),
    })
}

fn tunnel_state(s: TunnelStatus) -> TunnelState {
    match s {
        TunnelStatus::Up => TunnelState::Up,
        TunnelStatus::Connecting => TunnelState::Connecting,
        TunnelStatus::Down => TunnelState::Down,
    }
}

fn unicast(ip: Ipv4Addr) -> Result<UnicastAddr, CenterError> {
    UnicastAddr::new(ip).map_err(|e| CenterError::Proto(e.into()))
}

impl<G: GatewayCommands, R: RouterCommands> Center<G, R> {
    /// Builds the center; synchronises the gateway table with the settings.
    pub fn new(mut store: Storage, settings: CenterSettings, gateways: G, routers: R) -> Result<Self, CenterError> {
        let specs: Vec<_> = settings
            .gateways
            .iter()
            .map(|g| crate::storage::GatewaySpec {
                name: g.name.to_string(),
                global_ip: g.global_ip.get(),
                slots: g.slots,
            })
            .collect();
        store.sync_gateways(&specs)?;
        Ok(Center {
            store: Mutex::new(store),
            reader: None,
            settings,
            gateways,
            routers,
            rng: SystemRandom::new(),
            tunnel_events: Notify::new(),
            event_order: Mutex::new(crate::event_order::EventOrder::default()),
            routes: None,
            metrics: crate::metrics::CommandMetrics::new(crate::api::COMMANDS),
            terminal_locks: Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// Reads go through `reader`, a second connection to the same database
    /// file (a committed write is visible to every read that starts after
    /// it, so read-your-writes holds).
    pub fn with_reader(mut self, reader: Storage) -> Self {
        self.reader = Some(Mutex::new(reader));
        self
    }

    /// The connection for reads (see [`Center::with_reader`]). Held only
    /// for short synchronous steps, never across an await.
    pub fn reads(&self) -> Result<MutexGuard<'_, Storage>, CenterError> {
        match &self.reader {
            Some(r) => r.lock().map_err(|_| CenterError::Poisoned),
            None => self.store(),
        }
    }

    /// Has centerd program a host route per VPNNAT address via the gateway
    /// that carries it.
    pub fn with_routes(mut self, routes: Box<dyn RouteProgrammer>) -> Self {
        self.routes = Some(routes);
        self
    }

    fn route(&self, add: bool, gateway: &str, addrs: &[Ipv4Addr], warnings: &mut Vec<String>) {
        let (Some(r), Some(via)) = (&self.routes, self.settings.gateway(gateway).and_then(|g| g.next_hop)) else {
            return;
        };
        if addrs.is_empty() {
            return;
        }
        let res = if add { r.add(addrs, via) } else { r.del(addrs, via) };
        if let Err(e) = res {
            warnings.push(format!("host routes via {gateway}: {e}"));
        }
    }

    pub fn settings(&self) -> &CenterSettings {
        &self.settings
    }

    pub fn gateways(&self) -> &G {
        &self.gateways
    }

    /// Latency and outcome of the API commands (recorded by `api`).
    pub fn command_metrics(&self) -> &crate::metrics::CommandMetrics {
        &self.metrics
    }

    /// The Prometheus exposition: requests by state, pool used/free, slots
    /// used/free and tunnels up per gateway, draining gateways, command
    /// latency histograms. Read from the database (shared by every centerd)
    /// at scrape time; the command metrics are this process's.
    pub fn render_metrics(&self) -> Result<String, CenterError> {
        use crate::metrics::family;
        let (counts, pool, gws) = {
            let st = self.reads()?;
            (st.request_counts()?, st.pool_usage()?, st.gateway_usage()?)
        };
        #[allow(clippy::cast_precision_loss)] // counts far below 2^53
        let f = |v: u64| v as f64;
        let mut out = String::new();
        let states = [RequestState::Waiting, RequestState::InProgress, RequestState::Ended];
        family(
            &mut out,
            "vpnnat_center_requests",
            "gauge",
            "Maintenance requests by state.",
            &states
                .iter()
                .map(|st| {
                    let n = counts.iter().find(|(s, _)| s == st).map_or(0, |(_, n)| *n);
                    (vec![("state", st.as_str().to_owned())], f(n))
                })
                .collect::<Vec<_>>(),
        );
        family(
            &mut out,
            "vpnnat_center_pool_addresses",
            "gauge",
            "VPNNAT pool addresses by state.",
            &[
                (vec![("state", "used".to_owned())], f(pool.allocated)),
                (vec![("state", "free".to_owned())], f(pool.free)),
            ],
        );
        let mut slots = Vec::new();
        let mut up = Vec::new();
        let mut draining = Vec::new();
        let mut alive = Vec::new();
        for g in &gws {
            alive.push((vec![("gateway", g.name.clone())], if g.alive { 1.0 } else { 0.0 }));
            slots.push((
                vec![("gateway", g.name.clone()), ("state", "used".to_owned())],
                f(g.used),
            ));
            slots.push((
                vec![("gateway", g.name.clone()), ("state", "free".to_owned())],
                f(g.free),
            ));
            up.push((vec![("gateway", g.name.clone())], f(g.up)));
            draining.push((vec![("gateway", g.name.clone())], if g.draining { 1.0 } else { 0.0 }));
        }
        family(
            &mut out,
            "vpnnat_center_gateway_slots",
            "gauge",
            "Tunnel slots per gateway by state.",
            &slots,
        );
        family(
            &mut out,
            "vpnnat_center_tunnels_up",
            "gauge",
            "Tunnels up per gateway (as last reported by the gateway).",
            &up,
        );
        family(
            &mut out,
            "vpnnat_center_gateway_draining",
            "gauge",
            "1 if the gateway takes no new tunnels.",
            &draining,
        );
        family(
            &mut out,
            "vpnnat_center_gateway_up",
            "gauge",
            "1 if the gateway answers centerd's heartbeat, 0 if it was marked down.",
            &alive,
        );
        self.metrics.render("vpnnat_center", "router/gateway API", &mut out);
        Ok(out)
    }

    /// Appends to the audit log. A failed write is logged, not returned:
    /// the action it describes has already happened.
    pub fn audit(
        &self,
        at: u64,
        actor: &Actor,
        action: &str,
        terminal_id: Option<&str>,
        acceptance_number: Option<u64>,
        detail: &str,
    ) {
        let e = crate::storage::NewAudit {
            at,
            actor: &actor.who,
            action,
            terminal_id,
            acceptance_number,
            detail,
            peer: &actor.peer,
        };
        let r = self.store().and_then(|mut st| Ok(st.append_audit(&e)?));
        if let Err(err) = r {
            let subject = match (terminal_id, acceptance_number) {
                (Some(t), n) => format!("{} ", crate::logging::kv(&t, n)),
                (None, _) => String::new(),
            };
            log::error!("{subject}audit log: cannot record {action} by {}: {err}", actor.who);
        }
    }

    /// The router's own lock (see `terminal_locks`), held across the
    /// gateway commands of one exchange.
    async fn lock_terminal(&self, terminal_id: &str) -> tokio::sync::OwnedMutexGuard<Option<std::time::Instant>> {
        let m = {
            let mut map = self
                .terminal_locks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            map.entry(terminal_id.to_owned()).or_default().clone()
        };
        m.lock_owned().await
    }

    /// [`Center::lock_terminal`] for an exchange that changes the router's
    /// gateway state.
    async fn work_on_terminal(&self, terminal_id: &str) -> TerminalWork {
        TerminalWork(self.lock_terminal(terminal_id).await)
    }

    /// The storage, locked. Held only for short synchronous steps, never
    /// across an await.
    pub fn store(&self) -> Result<MutexGuard<'_, Storage>, CenterError> {
        self.store.lock().map_err(|_| CenterError::Poisoned)
    }

    /// Authenticates a router command with Secret(ID2) from the terminals
    /// table; returns the command and the secret for the answer.
    fn verify_router<C: Command<Principal = TerminalId>>(
        &self,
        path: &str,
        headers: &AuthHeaders,
        body: &[u8],
        now: u64,
    ) -> Result<(Verified<C>, TerminalRow, SecretId2), CenterError> {
        // The key is looked up first (a short read under the lock); the MAC
        // is then verified without holding the database, so routers'
        // crypto runs on every core. Only the nonce insert locks again.
        let row = match TerminalId::new(headers.principal.as_str()) {
            Ok(t) => self.reads()?.terminal(t.as_str())?,
            Err(_) => None,
        };
        let key = row
            .as_ref()
            .and_then(|r| SecretId2::from_hex(&r.secret_id2_hex).ok())
            .map(|k| k.mac_key());
        let mut guard = ReplayGuard::new(LockedNonceStore(&self.store), self.settings.replay);
        let v = decode_request::<C, _, _>(&mut guard, path, headers, body, now, |t: &TerminalId, kind| {
            let known = row.as_ref().is_some_and(|r| r.terminal_id == t.as_str());
            if kind != KeyKind::SecretId2 || !known {
                return None;
            }
            key.clone()
        })?;
        let row = row.ok_or(CenterError::Proto(ProtoError::UnknownTerminal))?;
        let sid2 = secret_id2_of(&row)?;
        Ok((v, row, sid2))
    }

    fn answer<C: Command>(
        &self,
        v: &Verified<C>,
        resp: &C::Response,
        key: &MacKey,
        now: u64,
    ) -> Result<Outgoing, CenterError> {
        Ok(encode_response(v, resp, key, now, &self.rng)?)
    }

    // ---------------------------------------------------------------
    // 1. Installation notice
    // ---------------------------------------------------------------

    pub fn install(&self, path: &str, headers: &AuthHeaders, body: &[u8], now: u64) -> Result<Outgoing, CenterError> {
        self.install_from(path, headers, body, now, None)
    }

    /// [`Center::install`] from `peer` (the router's global address, for
    /// the audit log).
    pub fn install_from(
        &self,
        path: &str,
        headers: &AuthHeaders,
        body: &[u8],
        now: u64,
        peer: Option<Ipv4Addr>,
    ) -> Result<Outgoing, CenterError> {
        let master = &self.settings.factory_master_key;
        let v = {
            let mut guard = ReplayGuard::new(LockedNonceStore(&self.store), self.settings.replay);
            // Every terminal ID has a Secret(ID): it is derived, not stored.
            decode_request::<InstallRequest, _, _>(&mut guard, path, headers, body, now, |t: &TerminalId, kind| {
                (kind == KeyKind::SecretId).then(|| SecretId::derive(master, t).mac_key())
            })?
        };
        let mut st = self.store()?;
        let tid = v.principal().clone();
        let psk = Psk::generate(&self.rng).map_err(|_| ProtoError::Crypto)?;
        let sid2 = SecretId2::generate(&self.rng).map_err(|_| ProtoError::Crypto)?;
        // The audit row commits with the installation.
        let who = Actor::router(tid.as_str(), peer);
        vpnnat_crashpoint::hit("center.install.before_commit");
        let row = st.install_terminal_from(
            &crate::storage::InstallRecord {
                terminal_id: tid.as_str(),
                psk_hex: &psk.to_hex(),
                secret_id2_hex: &sid2.to_hex(),
                maintenance_password_hash: &self.settings.maintenance_password_hash,
                now,
            },
            Some(&who.peer),
        )?;
        drop(st);
        vpnnat_crashpoint::hit("center.install.after_commit");
        let secrets = InstallSecrets::new(
            psk,
            sid2,
            self.settings.maintenance_password.clone(),
            unicast(row.server_part_vpnnat)?,
            unicast(row.router_part_vpnnat)?,
        )
        .map_err(|e| CenterError::Proto(e.into()))?;
        let resp = secrets.seal(&self.rng, &tid, &v.command().reply_key)?;
        log::info!(
            "terminal={tid} installed: server part {}, router part {}",
            row.server_part_vpnnat,
            row.router_part_vpnnat
        );
        self.answer(&v, &resp, &SecretId::derive(master, &tid).mac_key(), now)
    }

    // ---------------------------------------------------------------
    // 2. Failure notice
    // ---------------------------------------------------------------

    pub fn failure(&self, path: &str, headers: &AuthHeaders, body: &[u8], now: u64) -> Result<Outgoing, CenterError> {
        self.failure_from(path, headers, body, now, None)
    }

    /// [`Center::failure`] from `peer` (for the audit log).
    pub fn failure_from(
        &self,
        path: &str,
        headers: &AuthHeaders,
        body: &[u8],
        now: u64,
        peer: Option<Ipv4Addr>,
    ) -> Result<Outgoing, CenterError> {
        let (v, _row, sid2) = self.verify_router::<FailureNotice>(path, headers, body, now)?;
        let n: &FailureNotice = v.command();
        let code = serde_json::to_value(n.code)
            .ok()
            .and_then(|c| c.as_str().map(str::to_owned))
            .unwrap_or_else(|| "other".into());
        self.store()?
            .add_failure(v.principal().as_str(), &code, n.detail.as_str(), now)?;
        log::warn!("terminal={} failure notice: {code}", v.principal());
        self.audit(
            now,
            &Actor::router(v.principal().as_str(), peer),
            "failure",
            Some(v.principal().as_str()),
            None,
            &format!("{code}: {}", n.detail.as_str()),
        );
        self.answer(&v, &Ack {}, &sid2.mac_key(), now)
    }

    // ---------------------------------------------------------------
    // 3. VPN gateway address request
    // ---------------------------------------------------------------

    pub async fn gateway_address(
        &self,
        path: &str,
        headers: &AuthHeaders,
        body: &[u8],
        now: u64,
    ) -> Result<Outgoing, CenterError> {
        let (v, _row, sid2) = self.verify_router::<GatewayAddressRequest>(path, headers, body, now)?;
        let tid = v.principal().clone();
        let slot = self.ensure_slot(&tid, now).await?;
        let gw = self.settings.gateway(&slot.gateway).ok_or_else(|| {
            CenterError::Gateway(CommandError::Unknown {
                target: slot.gateway.clone(),
            })
        })?;
        let info = GatewayInfo {
            gateway_ip: gw.global_ip,
            gateway_ike_id: gw.ike_id.clone(),
            center_networks: self.settings.center_networks.clone(),
        };
        let resp = info.seal(&self.rng, &tid, &v.command().reply_key)?;
        log::info!("terminal={tid} VPN gateway {} slot {}", slot.gateway, slot.slot);
        self.answer(&v, &resp, &sid2.mac_key(), now)
    }

    /// The slot the router keeps, or a new one. The router keeps its
    /// gateway while its tunnel is up, and also while that gateway answers
    /// (moving a healthy router gains nothing and strands its routes); it
    /// moves only when its gateway stops answering. A new slot is the first
    /// free one scanning from the head, skipping gateways that do not answer.
    async fn ensure_slot(&self, tid: &TerminalId, now: u64) -> Result<SlotRow, CenterError> {
        let held = self.reads()?.slot_of(tid.as_str())?;
        let mut skip = Vec::new();
        if let Some(h) = held {
            // A gateway the heartbeat marked down has no tunnel up (its
            // slots were marked down with it) and is not probed again here.
            let alive = self.reads()?.gateway_alive(&h.gateway)?;
            if h.tunnel_state == TunnelState::Up || (alive && self.gateways.probe(&h.gateway).await) {
                return Ok(h);
            }
            log::warn!("terminal={tid} gateway {} does not answer, choosing another", h.gateway);
            skip.push(h.gateway.clone());
        }
        // The claim takes the lowest free slot of the chosen gateway in one
        // transaction, so a race with other requests (or other centerd
        // processes) can only mean "that gateway filled up meanwhile":
        // then the scan moves on. Bounded by the number of gateways.
        for _ in 0..self.claim_attempts() {
            let (gw, _) = self.choose_slot(&mut skip).await?;
            if self.store()?.claim_slot_on(&gw, tid.as_str(), now)?.is_some() {
                return self
                    .reads()?
                    .slot_of(tid.as_str())?
                    .ok_or(CenterError::NoGatewayCapacity);
            }
        }
        Err(CenterError::NoGatewayCapacity)
    }

    fn claim_attempts(&self) -> usize {
        self.settings.gateways.len().saturating_add(MAX_SLOT_RACES)
    }

    /// First free slot from the head among gateways that answer.
    async fn choose_slot(&self, skip: &mut Vec<String>) -> Result<(String, u16), CenterError> {
        loop {
            let cand = self.reads()?.first_free_slot(skip)?;
            let Some((gw, slot)) = cand else {
                return Err(CenterError::NoGatewayCapacity);
            };
            if self.gateways.probe(&gw).await {
                return Ok((gw, slot));
            }
            log::warn!("gateway {gw} does not answer; skipped");
            skip.push(gw);
        }
    }

    // ---------------------------------------------------------------
    // 4. Maintenance request
    // ---------------------------------------------------------------

    /// `router_ip` is the request's source address (the router's global IP).
    pub async fn maintenance(
        &self,
        path: &str,
        headers: &AuthHeaders,
        body: &[u8],
        router_ip: Ipv4Addr,
        now: u64,
    ) -> Result<Outgoing, CenterError> {
        let (v, row, sid2) = self.verify_router::<MaintenanceRequest>(path, headers, body, now)?;
        let tid = v.principal().clone();
        let req: &MaintenanceRequest = v.command();
        let details = req.open_details(&sid2, &tid)?;
        let names: Vec<String> = details.terminal_names.iter().map(|n| n.to_string()).collect();
        let level = match req.claimant_level {
            ClaimantLevel::General => "general",
            ClaimantLevel::Administrator => "administrator",
        };
        let urgency = match req.urgency {
            Urgency::Low => "low",
            Urgency::Normal => "normal",
            Urgency::High => "high",
            Urgency::Emergency => "emergency",
        };
        let new = NewRequest {
            terminal_id: tid.as_str(),
            router_ip,
            claimant_name: details.claimant_name.as_str(),
            claimant_level: level,
            phone: details.phone.as_str(),
            urgency,
            content: details.content.as_str(),
            terminal_names: &names,
            now,
        };
        let serial = self.work_on_terminal(tid.as_str()).await;
        // A router that skipped exchange 3 gets a slot here, claimed in the
        // same transaction as the addresses and the request.
        let held = self.reads()?.slot_of(tid.as_str())?;
        let mut skip = Vec::new();
        if let Some(h) = &held {
            // The router is bound to this gateway (its address and IKE
            // identity came with exchange 3), so it cannot be moved from
            // here: refuse at once instead of waiting for the command to
            // time out. The router asks for a gateway again after its VPN
            // ends; the operator view shows the gateway down.
            if !self.reads()?.gateway_alive(&h.gateway)? {
                return Err(CenterError::Gateway(CommandError::Unreachable {
                    target: h.gateway.clone(),
                    reason: "the gateway is down (no heartbeat answer)".into(),
                }));
            }
        }
        let (number, grants) = match held {
            Some(_) => self.store()?.create_request(&new, None)?,
            None => {
                let mut result = None;
                for _ in 0..self.claim_attempts() {
                    let (gw, _) = self.choose_slot(&mut skip).await?;
                    let created = self.store()?.create_request(&new, Some(&gw));
                    match created {
                        Ok(r) => {
                            result = Some(r);
                            break;
                        }
                        Err(StorageError::GatewayFull { .. }) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                result.ok_or(CenterError::NoGatewayCapacity)?
            }
        };
        vpnnat_crashpoint::hit("center.grant.after_commit");
        let slot = self
            .reads()?
            .slot_of(tid.as_str())?
            .ok_or(CenterError::NoGatewayCapacity)?;
        let subject = crate::logging::kv(&tid, Some(number));
        log::info!(
            "{subject} maintenance request stored ({} grant(s)), gateway {} slot {}",
            grants.len(),
            slot.gateway,
            slot.slot
        );
        // The router's own parts ride in every tunnel: the center reaches
        // the server part through it for end/release/VPN end.
        let mut addrs = vec![row.server_part_vpnnat, row.router_part_vpnnat];
        for g in &grants {
            if !addrs.contains(&g.vpnnat) {
                addrs.push(g.vpnnat);
            }
        }
        if let Err(e) = self.program_gateway(&slot, &tid, &row, router_ip, &addrs).await {
            // Nothing half-assigned: the request and the addresses it took go.
            log::warn!("{subject} request rolled back: {e}");
            self.store()?.abort_request(number)?;
            self.audit(
                now,
                &Actor::router(tid.as_str(), Some(router_ip)),
                "release",
                Some(tid.as_str()),
                Some(number),
                &format!("request withdrawn, its grants taken back: gateway failed: {e}"),
            );
            return Err(CenterError::Gateway(e));
        }
        log::info!(
            "{subject} gateway {} commanded: tunnel slot {}, {} address(es)",
            slot.gateway,
            slot.slot,
            addrs.len()
        );
        vpnnat_crashpoint::hit("center.grant.after_gateway");
        let mut warnings = Vec::new();
        self.route(true, &slot.gateway, &addrs, &mut warnings);
        drop(serial); // the wait below sends nothing
        for w in warnings {
            log::warn!("{subject} {w}");
        }
        if !self.wait_tunnel_up(&tid, self.settings.tunnel_up_timeout).await? {
            log::warn!(
                "{subject} tunnel at {} slot {} not up after {:?}; answering the request anyway",
                slot.gateway,
                slot.slot,
                self.settings.tunnel_up_timeout
            );
        }
        let grants = Grants::new(
            grants
                .iter()
                .map(|g| {
                    Ok(Grant {
                        terminal_name: TerminalName::new(g.terminal_name.clone()).map_err(ProtoError::from)?,
                        vpnnat_addr: unicast(g.vpnnat)?,
                    })
                })
                .collect::<Result<Vec<_>, CenterError>>()?,
        )
        .map_err(ProtoError::from)?;
        let n = AcceptanceNumber::new(number).map_err(ProtoError::from)?;
        // The grants are in the audit log already: written by
        // `create_request` in the request's own transaction.
        let resp = grants.seal(&self.rng, &tid, &req.reply_key, n)?;
        log::info!("{subject} maintenance request accepted ({} terminals)", names.len());
        self.answer(&v, &resp, &sid2.mac_key(), now)
    }

    async fn program_gateway(
        &self,
        slot: &SlotRow,
        tid: &TerminalId,
        row: &TerminalRow,
        router_ip: Ipv4Addr,
        addrs: &[Ipv4Addr],
    ) -> Result<(), CommandError> {
        if slot.tunnel_state != TunnelState::Up {
            let psk = psk_of(row).map_err(|e| CommandError::BadAnswer {
                target: slot.gateway.clone(),
                reason: e.to_string(),
            })?;
            self.gateways
                .setup_tunnel(&slot.gateway, tid, router_ip, slot.slot, &psk)
                .await?;
            vpnnat_crashpoint::hit("center.grant.after_tunnel_setup");
        }
        for chunk in addrs.chunks(vpnnat_proto::messages::MAX_ADDRESSES_PER_COMMAND) {
            self.gateways.add_addresses(&slot.gateway, tid, chunk).await?;
        }
        Ok(())
    }

    /// Waits for the router's tunnel-up event (no polling of the gateway):
    /// true if up within `timeout`.
    pub async fn wait_tunnel_up(&self, tid: &TerminalId, timeout: Duration) -> Result<bool, CenterError> {
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        loop {
            let notified = self.tunnel_events.notified();
            tokio::pin!(notified);
            // Registered before reading, so an event between the read and
            // the wait is not lost.
            notified.as_mut().enable();
            let up = self
                .reads()?
                .slot_of(tid.as_str())?
                .is_some_and(|s| s.tunnel_state == TunnelState::Up);
            if up {
                return Ok(true);
            }
            // Past the deadline (e.g. a zero timeout): answer now rather
            // than through a timer that fires on the driver's next tick.
            if deadline.is_some_and(|d| d <= tokio::time::Instant::now()) {
                return Ok(false);
            }
            // A timeout too large to represent means "wait without limit".
            let woke = match deadline {
                Some(d) => tokio::time::timeout_at(d, notified).await.is_ok(),
                None => {
                    notified.await;
                    true
                }
            };
            if !woke {
                return Ok(false);
            }
        }
    }

    // ---------------------------------------------------------------
    // Tunnel lost (beyond the seed)
    // ---------------------------------------------------------------

    /// A router that restarted (crash, power cut, reboot) lost its IKE
    /// state while its gateway still holds the IKE SA; the gateway would
    /// notice only by dead-peer detection, a minute or more later. If the
    /// router holds a slot with a tunnel due (it asked for maintenance),
    /// its gateway drops that IKE SA and negotiates afresh now; the answer
    /// waits (bounded, like a grant) for the tunnel-up event. `peer` is the
    /// notice's source address, for the audit log.
    pub async fn tunnel_lost(
        &self,
        path: &str,
        headers: &AuthHeaders,
        body: &[u8],
        now: u64,
        peer: Option<Ipv4Addr>,
    ) -> Result<Outgoing, CenterError> {
        let (v, _row, sid2) = self.verify_router::<TunnelLostNotice>(path, headers, body, now)?;
        let tid = v.principal().clone();
        let serial = self.work_on_terminal(tid.as_str()).await;
        let slot = self.reads()?.slot_of(tid.as_str())?;
        // A tunnel is due once a maintenance request gave the router's
        // address and until VPN end frees the slot.
        let due = match slot {
            Some(s) if self.reads()?.latest_router_ip(tid.as_str())?.is_some() => Some(s),
            _ => None,
        };
        let Some(slot) = due else {
            log::info!("terminal={tid} tunnel lost: no tunnel is due (no slot or no request), nothing to rebuild");
            let answer = TunnelLostAnswer {
                tunnel: TunnelRebuild::NotDue,
            };
            return self.answer(&v, &answer, &sid2.mac_key(), now);
        };
        if !self.reads()?.gateway_alive(&slot.gateway)? {
            return Err(CenterError::Gateway(CommandError::Unreachable {
                target: slot.gateway.clone(),
                reason: "the gateway is down (no heartbeat answer)".into(),
            }));
        }
        // Not up any more as far as anyone can tell: the wait below must
        // see the fresh IKE SA's event, not the stale state.
        self.store()?
            .set_tunnel_state(&slot.gateway, slot.slot, tid.as_str(), TunnelState::Connecting, now)?;
        self.gateways
            .restart_tunnel(&slot.gateway, &tid)
            .await
            .map_err(CenterError::Gateway)?;
        log::info!(
            "terminal={tid} tunnel lost (router restarted): gateway {} slot {} negotiates it afresh",
            slot.gateway,
            slot.slot
        );
        self.audit(
            now,
            &Actor::router(tid.as_str(), peer),
            "tunnel_restart",
            Some(tid.as_str()),
            None,
            &format!(
                "router restarted; gateway {} negotiates its tunnel afresh",
                slot.gateway
            ),
        );
        drop(serial); // the wait below sends nothing
        let up = self.wait_tunnel_up(&tid, self.settings.tunnel_up_timeout).await?;
        if !up {
            log::warn!(
                "terminal={tid} tunnel at {} slot {} not up after {:?}; answering anyway",
                slot.gateway,
                slot.slot,
                self.settings.tunnel_up_timeout
            );
        }
        let answer = TunnelLostAnswer {
            tunnel: if up {
                TunnelRebuild::Up
            } else {
                TunnelRebuild::Connecting
            },
        };
        self.answer(&v, &answer, &sid2.mac_key(), now)
    }

    // ---------------------------------------------------------------
    // gatewayd -> centerd: tunnel up/down
    // ---------------------------------------------------------------

    pub fn tunnel_event(
        &self,
        path: &str,
        headers: &AuthHeaders,
        body: &[u8],
        now: u64,
    ) -> Result<Outgoing, CenterError> {
        let mut key = None;
        let v = {
            let mut guard = ReplayGuard::new(LockedNonceStore(&self.store), self.settings.replay);
            decode_request::<TunnelEvent, _, _>(&mut guard, path, headers, body, now, |g: &GatewayName, kind| {
                if kind != KeyKind::GatewayApiKey {
                    return None;
                }
                let k = self.settings.gateway(g.as_str())?.api_key.mac_key();
                key = Some(k.clone());
                Some(k)
            })?
        };
        let key = key.ok_or(CenterError::Proto(ProtoError::UnknownTerminal))?;
        let ev: &TunnelEvent = v.command();
        let state = tunnel_state(ev.status);
        let news = self
            .event_order
            .lock()
            .map_err(|_| CenterError::Poisoned)?
            .event_is_news(v.principal().as_str(), ev.terminal_id.as_str(), ev.seq);
        if !news {
            log::info!(
                "terminal={} gateway {}: tunnel event {} ({}) is older than what was applied; ignored",
                ev.terminal_id,
                v.principal(),
                ev.seq,
                state.as_str()
            );
            return self.answer(&v, &Ack {}, &key, now);
        }
        let matched =
            self.store()?
                .set_tunnel_state(v.principal().as_str(), ev.slot, ev.terminal_id.as_str(), state, now)?;
        if matched {
            log::info!(
                "terminal={} gateway {}: tunnel (slot {}) is {}",
                ev.terminal_id,
                v.principal(),
                ev.slot,
                state.as_str()
            );
        } else {
            log::warn!(
                "terminal={} gateway {}: event for slot {} which it does not hold; ignored",
                ev.terminal_id,
                v.principal(),
                ev.slot
            );
        }
        self.tunnel_events.notify_waiters();
        self.answer(&v, &Ack {}, &key, now)
    }

    // ---------------------------------------------------------------
    // Reconciliation with a gateway
    // ---------------------------------------------------------------

    /// Brings one gateway to what the database says it should carry: every
    /// router holding one of its slots gets its tunnel (if it ever sent a
    /// maintenance request, which is what gives the router's address) with
    /// exactly the router's VPNNAT addresses; tunnels the database does not
    /// give this gateway are torn down; the tunnel states it reports are
    /// recorded. Run at start and periodically, so a gatewayd that
    /// restarted (and wiped its kernel state) gets everything back.
    pub async fn reconcile_gateway(&self, gateway: &str, now: u64) -> Result<ReconcileOutcome, CenterError> {
        let report_at = std::time::Instant::now();
        let report = self.gateways.report(gateway).await.map_err(CenterError::Gateway)?;
        let mut out = ReconcileOutcome {
            gateway: gateway.to_owned(),
            ..ReconcileOutcome::default()
        };
        let held = self.store()?.slots_of_gateway(gateway)?;
        for slot in &held {
            let Some(tid_s) = slot.terminal_id.clone() else {
                continue;
            };
            // Under the router's lock, and only if no request or end worked
            // on its tunnel since the report was taken and its slot is the
            // one scanned: otherwise the report is stale for it (the next
            // round looks again).
            let serial = self.lock_terminal(&tid_s).await;
            if serial.is_some_and(|t| t >= report_at) || self.store()?.slot_of(&tid_s)?.as_ref() != Some(slot) {
                continue;
            }
            let (row, router_ip, addrs) = {
                let st = self.store()?;
                let Some(row) = st.terminal(&tid_s)? else {
                    continue;
                };
                let ip = st.latest_router_ip(&tid_s)?;
                let addrs: Vec<Ipv4Addr> = st.addresses_of_terminal(&tid_s)?.into_iter().map(|(_, a)| a).collect();
                (row, ip, addrs)
            };
            let Some(router_ip) = router_ip else {
                continue; // never asked for maintenance: no tunnel is due yet
            };
            let tid = TerminalId::new(tid_s.as_str()).map_err(ProtoError::from)?;
            let have = report.tunnels().iter().find(|t| t.terminal_id == tid);
            let current: Vec<Ipv4Addr> = match have {
                Some(t) if t.slot == slot.slot && t.router_ip.get() == router_ip => {
                    let st = tunnel_state(t.status);
                    // Not if an event newer than the report was applied.
                    let news = self
                        .event_order
                        .lock()
                        .map_err(|_| CenterError::Poisoned)?
                        .report_is_news(gateway, &tid_s, report.seq());
                    if news && st != slot.tunnel_state {
                        self.store()?.set_tunnel_state(gateway, slot.slot, &tid_s, st, now)?;
                        self.tunnel_events.notify_waiters();
                    }
                    t.addresses.iter().map(|a| a.get()).collect()
                }
                _ => {
                    let psk = psk_of(&row)?;
                    if let Err(e) = self
                        .gateways
                        .setup_tunnel(gateway, &tid, router_ip, slot.slot, &psk)
                        .await
                    {
                        out.warnings.push(format!("setup {tid_s}: {e}"));
                        continue;
                    }
                    out.set_up.push(tid_s.clone());
                    have.map(|t| t.addresses.iter().map(|a| a.get()).collect())
                        .unwrap_or_default()
                }
            };
            // Host routes are idempotent: (re)add all (a restarted centerd
            // host gets them back).
            self.route(true, gateway, &addrs, &mut out.warnings);
            let missing: Vec<Ipv4Addr> = addrs.iter().copied().filter(|a| !current.contains(a)).collect();
            let extra: Vec<Ipv4Addr> = current.iter().copied().filter(|a| !addrs.contains(a)).collect();
            for chunk in missing.chunks(vpnnat_proto::messages::MAX_ADDRESSES_PER_COMMAND) {
                match self.gateways.add_addresses(gateway, &tid, chunk).await {
                    Ok(()) => out.added = out.added.saturating_add(chunk.len()),
                    Err(e) => out.warnings.push(format!("add for {tid_s}: {e}")),
                }
            }
            for chunk in extra.chunks(vpnnat_proto::messages::MAX_ADDRESSES_PER_COMMAND) {
                match self.gateways.remove_addresses(gateway, &tid, chunk).await {
                    Ok(()) => out.removed = out.removed.saturating_add(chunk.len()),
                    Err(e) => out.warnings.push(format!("remove for {tid_s}: {e}")),
                }
            }
        }
        for t in report.tunnels() {
            let ours = held
                .iter()
                .any(|s| s.terminal_id.as_deref() == Some(t.terminal_id.as_str()) && s.slot == t.slot);
            if !ours {
                let serial = self.lock_terminal(t.terminal_id.as_str()).await;
                // Worked on since the report, or given this slot since the
                // scan: not known to be a stray.
                let now_held = self.store()?.slot_of(t.terminal_id.as_str())?;
                if serial.is_some_and(|w| w >= report_at)
                    || now_held.is_some_and(|s| s.gateway == gateway && s.slot == t.slot)
                {
                    continue;
                }
                match self.gateways.tear_down(gateway, &t.terminal_id).await {
                    Ok(()) => out.torn_down.push(t.terminal_id.to_string()),
                    Err(e) => out.warnings.push(format!("tear down {}: {e}", t.terminal_id)),
                }
            }
        }
        if !out.set_up.is_empty() || out.added > 0 || out.removed > 0 || !out.torn_down.is_empty() {
            log::info!(
                "reconciled gateway {gateway}: {} set up, {} added, {} removed, {} torn down",
                out.set_up.len(),
                out.added,
                out.removed,
                out.torn_down.len()
            );
        }
        for w in &out.warnings {
            log::warn!("reconcile {gateway}: {w}");
        }
        Ok(out)
    }

    // ---------------------------------------------------------------
    // Gateway liveness (crate::liveness decides, this acts)
    // ---------------------------------------------------------------

    /// The heartbeat marked `gateway` down: the database stops giving it
    /// slots and records its tunnels down and a `gateway_lost` failure for
    /// every router with an open request on it; an audit row and the log
    /// say so; waiters for tunnel events re-read. `now_ms` (Unix ms) is
    /// the moment of detection, kept for the operator. Returns the routers
    /// that lost their tunnel (None: it was down already).
    pub fn gateway_down(
        &self,
        gateway: &str,
        now_ms: u64,
        silent_for: Option<Duration>,
    ) -> Result<Option<Vec<crate::storage::LostTunnel>>, CenterError> {
        let now = now_ms / 1000;
        let Some(lost) = self.store()?.mark_gateway_down(gateway, now, now_ms)? else {
            return Ok(None);
        };
        let open: usize = lost.iter().map(|l| l.open_requests.len()).sum();
        let silent = silent_for.map_or_else(|| "since centerd started".to_owned(), |d| format!("for {d:?}"));
        let detail = format!(
            "gateway {gateway} down: no heartbeat answer {silent}; {} tunnel(s) lost, {open} open request(s) marked",
            lost.len()
        );
        log::warn!("{detail}");
        self.audit(now, &Actor::centerd(), "gateway_down", None, None, &detail);
        self.tunnel_events.notify_waiters();
        Ok(Some(lost))
    }

    /// The heartbeat got an answer from a gateway that was down: it is
    /// reconciled with the database (a restarted gatewayd has no tunnels:
    /// those of the routers still holding its slots are set up again; a
    /// gatewayd that was only cut off still has the tunnels of requests
    /// ended meanwhile: they are torn down), and only then takes new slots
    /// again, so no new tunnel meets a stale one in its slot. A failed
    /// reconciliation leaves it down (the next answer retries). None if it
    /// was up already.
    pub async fn gateway_back(&self, gateway: &str, now_ms: u64) -> Result<Option<ReconcileOutcome>, CenterError> {
        let now = now_ms / 1000;
        if self.reads()?.gateway_alive(gateway)? {
            return Ok(None);
        }
        log::info!("gateway {gateway} answers again; reconciling");
        let out = self.reconcile_gateway(gateway, now).await;
        if out.is_ok() && !self.store()?.mark_gateway_up(gateway, now_ms)? {
            return Ok(None); // another centerd marked it up meanwhile
        }
        let detail = match &out {
            Ok(o) => format!(
                "gateway {gateway} back: reconciled, {} tunnel(s) set up, {} address(es) added, {} removed, {} torn down{}",
                o.set_up.len(),
                o.added,
                o.removed,
                o.torn_down.len(),
                if o.warnings.is_empty() {
                    String::new()
                } else {
                    format!(", {} warning(s)", o.warnings.len())
                }
            ),
            Err(e) => format!("gateway {gateway} back: reconciliation failed: {e}"),
        };
        self.audit(now, &Actor::centerd(), "gateway_up", None, None, &detail);
        out.map(Some)
    }

    // ---------------------------------------------------------------
    // 5. Operator start, 6.-8. end, judgments, release, VPN end
    // ---------------------------------------------------------------

    pub fn start(&self, number: u64, now: u64) -> Result<RequestRow, CenterError> {
        self.start_by(number, now, &Actor::centerd())
    }

    /// [`Center::start`] by `actor` (recorded in the audit log).
    pub fn start_by(&self, number: u64, now: u64, actor: &Actor) -> Result<RequestRow, CenterError> {
        let r = self.store()?.start_request_by(number, now, &actor.who, &actor.peer)?;
        log::info!(
            "{} request started by {}",
            crate::logging::kv(&r.terminal_id, Some(number)),
            actor.who
        );
        Ok(r)
    }

    fn target(&self, terminal_id: &str) -> Result<Option<RouterTarget>, CenterError> {
        let Some(row) = self.store()?.terminal(terminal_id)? else {
            return Ok(None);
        };
        let tid = TerminalId::new(terminal_id).map_err(ProtoError::from)?;
        Ok(Some(RouterTarget {
            terminal_id: tid,
            address: row.server_part_vpnnat,
            secret_id2: secret_id2_of(&row)?,
        }))
    }

    /// The operator pressed "end": 6, the three judgments, 7 and 8.
    ///
    /// The center's state changes even when the router does not answer
    /// (its tunnel may be gone): the pool must not leak because a router is
    /// offline; the failure is reported as a warning.
    pub async fn end(&self, number: u64, now: u64) -> Result<EndOutcome, CenterError> {
        self.end_by(number, now, &Actor::centerd()).await
    }

    /// [`Center::end`] by `actor`: the end, every release and the VPN end
    /// go to the audit log under that actor.
    pub async fn end_by(&self, number: u64, now: u64, actor: &Actor) -> Result<EndOutcome, CenterError> {
        // The "end" audit row commits with the state change.
        let row = self.store()?.end_request_by(number, now, &actor.who, &actor.peer)?;
        vpnnat_crashpoint::hit("center.end.after_commit");
        let n = AcceptanceNumber::new(number).map_err(ProtoError::from)?;
        let names: Vec<String> = row.grants.iter().map(|g| g.terminal_name.clone()).collect();
        self.finish_end(&row.terminal_id, number, Some(n), &names, now, actor)
            .await
    }

    /// Ends that a crash interrupted: the request is "ended" in the
    /// database (that commit comes first) but some of its addresses, or
    /// the router's slot, were never given back. Runs the rest of the end
    /// for each such router (judgments 1-3, releases, VPN end; commands to
    /// router and gateway are idempotent), so no address or slot stays
    /// lost. Called once at start, before the first gateway reconcile.
    pub async fn resume_ends(&self, now: u64) -> Result<Vec<EndOutcome>, CenterError> {
        let tids = self.reads()?.terminals_with_ended_holdings()?;
        let actor = Actor::new("centerd", "resume");
        let mut out = Vec::new();
        for tid_s in tids {
            let names: Vec<String> = self
                .reads()?
                .addresses_of_terminal(&tid_s)?
                .into_iter()
                .map(|(name, _)| name)
                .filter(|name| !is_router_own_part(name))
                .collect();
            let open_names = {
                let st = self.reads()?;
                let mut v = Vec::new();
                for name in &names {
                    if st.all_ended_for_name(&tid_s, name)? {
                        v.push(name.clone());
                    }
                }
                v
            };
            let vpn_due = self.reads()?.all_ended_for_terminal(&tid_s)?;
            if open_names.is_empty() && !vpn_due {
                continue;
            }
            log::warn!(
                "{} resuming an interrupted end ({} address(es) to release, VPN end {})",
                crate::logging::kv(&tid_s, None),
                open_names.len(),
                if vpn_due { "due" } else { "not due" }
            );
            let o = self.finish_end(&tid_s, 0, None, &open_names, now, &actor).await?;
            out.push(o);
        }
        Ok(out)
    }

    /// Everything of an end after the request's own commit: the end
    /// command (when `end` is given), judgment 1 and 2 and the release of
    /// each of `names`, judgment 3 and the VPN end. `number` 0 means "no
    /// single request" (a resumed end).
    async fn finish_end(
        &self,
        tid_s: &str,
        number: u64,
        end: Option<AcceptanceNumber>,
        names: &[String],
        now: u64,
        actor: &Actor,
    ) -> Result<EndOutcome, CenterError> {
        let _serial = self.work_on_terminal(tid_s).await;
        let mut out = EndOutcome {
            acceptance_number: number,
            ..EndOutcome::default()
        };
        let tid_s = tid_s.to_owned();
        let target = self.target(&tid_s)?;
        let slot = self.store()?.slot_of(&tid_s)?;
        // Commands to the router travel through its tunnel; without a tunnel
        // that is up they cannot arrive, so they are skipped (and said so)
        // instead of each waiting for a timeout while the operator waits.
        let tunnel_up = slot.as_ref().is_some_and(|s| s.tunnel_state == TunnelState::Up);
        // A gateway marked down is not sent commands that would each wait
        // for a time-out: when it answers again, reconciliation removes
        // what the database no longer gives it.
        let gateway_alive = match &slot {
            Some(s) => self.reads()?.gateway_alive(&s.gateway)?,
            None => false,
        };
        if slot.is_some() && !gateway_alive {
            out.warnings
                .push("gateway down: its tunnel and routes are removed when it answers again".into());
        }
        let router = match &target {
            Some(t) if tunnel_up => Some(t),
            Some(_) => {
                out.warnings
                    .push("router not reachable (tunnel not up): end/release/VPN end not sent".into());
                None
            }
            None => None,
        };
        if let (Some(t), Some(n)) = (router, end) {
            if let Err(e) = self.routers.end(t, n).await {
                out.warnings.push(format!("end command: {e}"));
            }
        }
        for name_s in names {
            // Judgment 1: another request still names this terminal.
            if !self.store()?.all_ended_for_name(&tid_s, name_s)? {
                out.kept.push(name_s.clone());
                continue;
            }
            // Judgment 2: the router's own parts keep their addresses.
            if is_router_own_part(name_s) {
                continue;
            }
            // 7. VPNNAT release.
            if let Some(t) = router {
                match TerminalName::new(name_s.clone()) {
                    Ok(name) => {
                        if let Err(e) = self.routers.release(t, &name).await {
                            out.warnings.push(format!("release {name_s}: {e}"));
                        }
                    }
                    Err(e) => out.warnings.push(format!("release {name_s}: {e}")),
                }
            }
            vpnnat_crashpoint::hit("center.release.after_router");
            // The gateway stops routing the address (and the host route
            // goes) *before* the pool frees it: freed first, it could be
            // granted to another router whose tunnel would then meet it
            // still routed into this one (seen under load as a 409).
            let held = self.store()?.address_of(&tid_s, name_s)?;
            if let Some(addr) = held {
                if let Some(s) = &slot {
                    self.route(false, &s.gateway, &[addr], &mut out.warnings);
                }
                if let (Some(s), Some(t), true) = (&slot, &target, gateway_alive) {
                    if let Err(e) = self
                        .gateways
                        .remove_addresses(&s.gateway, &t.terminal_id, &[addr])
                        .await
                    {
                        out.warnings.push(format!("gateway remove {addr}: {e}"));
                    }
                }
            }
            let freed = self.store()?.release_address(&tid_s, name_s)?;
            vpnnat_crashpoint::hit("center.release.after_db");
            if let Some(addr) = freed {
                out.released.push((name_s.clone(), addr));
            }
        }
        // Judgment 3: all requests of this router ended -> 8. VPN end.
        if self.store()?.all_ended_for_terminal(&tid_s)? {
            if let Some(t) = router {
                if let Err(e) = self.routers.vpn_end(t).await {
                    out.warnings.push(format!("VPN end command: {e}"));
                }
            }
            vpnnat_crashpoint::hit("center.vpn_end.after_router");
            // As for the releases above: the host routes go and the
            // gateway drops the tunnel and its addresses before the pool
            // and the slot are freed for other routers.
            if let Some(s) = &slot {
                let addrs: Vec<Ipv4Addr> = self
                    .store()?
                    .addresses_of_terminal(&tid_s)?
                    .into_iter()
                    .filter(|(name, _)| !is_router_own_part(name))
                    .map(|(_, a)| a)
                    .collect();
                let mut gone = addrs.clone();
                if let Some(t) = &target {
                    // The router's own parts were reachable only through
                    // the tunnel that ends now.
                    gone.push(t.address);
                    if let Some(row) = self.store()?.terminal(&tid_s)? {
                        gone.push(row.router_part_vpnnat);
                    }
                }
                self.route(false, &s.gateway, &gone, &mut out.warnings);
                if let (Some(t), true) = (&target, gateway_alive) {
                    for chunk in addrs.chunks(vpnnat_proto::messages::MAX_ADDRESSES_PER_COMMAND) {
                        if let Err(e) = self.gateways.remove_addresses(&s.gateway, &t.terminal_id, chunk).await {
                            out.warnings.push(format!("gateway remove: {e}"));
                        }
                    }
                    if let Err(e) = self.gateways.tear_down(&s.gateway, &t.terminal_id).await {
                        out.warnings.push(format!("gateway tear down: {e}"));
                    }
                }
            }
            let (freed, _) = self.store()?.end_vpn(&tid_s, now)?;
            vpnnat_crashpoint::hit("center.vpn_end.after_db");
            for f in &freed {
                out.released.push((f.terminal_name.clone(), f.vpnnat));
            }
            out.vpn_ended = true;
        }
        // Releases and the VPN end: one transaction for all their rows.
        let details: Vec<(&str, String)> = out
            .released
            .iter()
            .map(|(name, addr)| ("release", format!("{name} = {addr}")))
            .chain(out.vpn_ended.then(|| {
                let gw = slot.as_ref().map_or("", |s| s.gateway.as_str());
                ("vpn_end", format!("gateway {gw}"))
            }))
            .collect();
        let rows: Vec<crate::storage::NewAudit<'_>> = details
            .iter()
            .map(|(action, detail)| crate::storage::NewAudit {
                at: now,
                actor: &actor.who,
                action,
                terminal_id: Some(&tid_s),
                acceptance_number: (number > 0).then_some(number),
                detail,
                peer: &actor.peer,
            })
            .collect();
        let subject = crate::logging::kv(&tid_s, (number > 0).then_some(number));
        if let Err(e) = self.store().and_then(|mut st| Ok(st.append_audits(&rows)?)) {
            log::error!("{subject} audit log: cannot record the releases: {e}");
        }
        for w in &out.warnings {
            log::warn!("{subject} {w}");
        }
        log::info!(
            "{subject} request ended: {} released, vpn ended: {}",
            out.released.len(),
            out.vpn_ended
        );
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests;
