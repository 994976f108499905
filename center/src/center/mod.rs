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
use vpnnat_proto::initiation::InitiationMode;
use vpnnat_proto::keys::{FactoryMasterKey, GatewayApiKey, MacKey, MaintenancePassword, Psk, SecretBytes, SecretId2};
use vpnnat_proto::messages::{StateReport, TunnelStatus};
use vpnnat_proto::types::{
    AcceptanceNumber, BoundedSet, GatewayName, IkeIdentity, Ipv4Cidr, TerminalId, TerminalName, UnicastAddr,
};
use vpnnat_proto::{decode_request, encode_response, Command, KeyKind, Outgoing, ProtoError, Verified};

use crate::routes::RouteProgrammer;
use crate::storage::{Storage, StorageError, TerminalRow, TunnelState};

mod gateway_address;
mod initiation;
pub mod installation;
mod liveness;
mod maintenance;
mod metrics;
mod reconcile;
mod request_states;
mod site_end;
mod start_end;
mod tunnel_events;
mod tunnel_failure;
mod tunnel_lost;

pub use vpnnat_service::http::CommandError;

/// Why the center refused or failed an exchange.
#[derive(Debug, Error)]
pub enum CenterError {
    #[error(transparent)]
    Proto(#[from] ProtoError),
    #[error("VPNNAT pool exhausted: no address left for this request (nothing was assigned)")]
    PoolExhausted,
    #[error("no VPN gateway capacity: every answering gateway's tunnel slots are in use")]
    NoGatewayCapacity,
    #[error(
        "too many open maintenance requests: this router already has {limit} waiting or in progress; \
         wait until the center ends one (nothing was stored)"
    )]
    TooManyOpenRequests { limit: u32 },
    #[error(
        "re-installation pending operator approval: this router is installed and sent no proof of its \
         Secret(ID2); an operator must approve it (retry later)"
    )]
    ReinstallPending,
    #[error("re-installation refused: the proof of Secret(ID2) does not verify (nothing was changed)")]
    ReinstallWrongProof,
    #[error("too many re-installation attempts for this router; retry later (nothing was changed)")]
    ReinstallRateLimited,
    #[error("VPN gateway unavailable: {0}")]
    Gateway(CommandError),
    #[error(
        "the tunnel with VPN gateway {gateway} did not come up within {} s: {why}; \
         the request was ended and everything it took released",
        waited.as_secs_f32()
    )]
    TunnelNotUp {
        gateway: String,
        waited: Duration,
        why: String,
    },
    #[error("{0}")]
    Storage(StorageError),
    #[error("stored secret of {terminal} is unreadable")]
    BadStoredSecret { terminal: String },
    #[error("the database lock is poisoned")]
    Poisoned,
    #[error("{0}")]
    Limit(crate::limits::LimitError),
    /// Site end (issue 19, item 7) of a request that is not this router's.
    #[error("request {number} is not one of this router's requests: a router ends only its own (nothing was changed)")]
    NotThisRoutersRequest { number: u64 },
}

impl From<StorageError> for CenterError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::PoolExhausted { .. } => CenterError::PoolExhausted,
            StorageError::TooManyOpen { limit, .. } => CenterError::TooManyOpenRequests { limit },
            StorageError::Limit(l) => CenterError::Limit(l),
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
            CenterError::TunnelNotUp { .. } => 504,
            CenterError::TooManyOpenRequests { .. } | CenterError::ReinstallRateLimited => 429,
            // 423 Locked: the router retries with back-off until approved.
            CenterError::ReinstallPending => 423,
            CenterError::ReinstallWrongProof | CenterError::NotThisRoutersRequest { .. } => 403,
            CenterError::Limit(_) => 400,
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
    /// [`GatewayCommands::setup_tunnel`] in a given initiation mode: in
    /// `router` mode the gateway does not initiate but accepts the router's
    /// IKE SA by its identity and PSK (issue 17). Gateways that only know
    /// the seed's mode refuse `router`.
    fn setup_tunnel_as(
        &self,
        gateway: &str,
        terminal: &TerminalId,
        router_ip: Ipv4Addr,
        slot: u16,
        psk: &Psk,
        mode: InitiationMode,
    ) -> impl Future<Output = Result<(), CommandError>> + Send {
        async move {
            match mode {
                InitiationMode::Gateway => self.setup_tunnel(gateway, terminal, router_ip, slot, psk).await,
                InitiationMode::Router => Err(CommandError::BadAnswer {
                    target: gateway.to_owned(),
                    reason: "router-initiated tunnels are not supported by this gateway client".into(),
                }),
            }
        }
    }
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
    /// How long a maintenance request waits for its tunnel to come up.
    /// Past it the request is ended, everything it took released, and the
    /// router answered with what failed (504). Zero: not waited for at all
    /// (`tunnel_up_timeout_ms = 0`, for test beds whose simulated routers
    /// run no IKE: the request is answered at once).
    pub tunnel_up_timeout: Duration,
    /// Most open (waiting or in progress) requests one router may have; a
    /// further request is refused with 429 and changes nothing, so one
    /// customer can neither bury the others' requests nor grow the
    /// database without bound.
    pub max_open_requests: u32,
    /// `[center] max_grant_lifetime_secs`: every request ends by itself
    /// this long after it was received (see [`crate::limits`]).
    pub max_grant_lifetime_secs: u64,
    /// `[center] idle_timeout_secs`: a request whose router's tunnel
    /// carried no packet this long ends by itself (None: no idle timeout;
    /// see [`crate::limits::idle_due`]).
    pub idle_timeout_secs: Option<u64>,
}

impl CenterSettings {
    pub fn gateway(&self, name: &str) -> Option<&GatewayEntry> {
        self.gateways.iter().find(|g| g.name.as_str() == name)
    }
}

/// Default of `[center] max_open_requests`: a household has a few devices
/// to repair at once, not dozens.
pub const DEFAULT_MAX_OPEN_REQUESTS: u32 = 4;

/// What "end" did, for the operator and the logs.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct EndOutcome {
    pub acceptance_number: u64,
    /// Extension terminals whose VPNNAT address went back to the pool (7).
    pub released: Vec<(String, Ipv4Addr)>,
    /// Terminals kept because another request still needs them (judgment 1).
    pub kept: Vec<String>,
    /// The router's own parts this end named, whose installation addresses
    /// stay (judgment 2's "yes"), with those addresses.
    pub own_kept: Vec<(String, Ipv4Addr)>,
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
    /// `operator#N` (shared password), `operator:NAME` (account),
    /// `router:ID`, `cli:USER`, `centerd`.
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
    /// The gateway's last word on each router's tunnel when it was not up
    /// ("IKE down: AuthenticationFailed"), for the answer to a request
    /// whose tunnel never came. One entry per router: bounded by the
    /// terminals table.
    tunnel_details: Mutex<std::collections::HashMap<String, String>>,
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
    /// The same exclusion against a `centerd` command on the same database
    /// (another process; see [`crate::work_lock`]). None: no other process
    /// is expected (tests, and the commands themselves, which hold it
    /// exclusively for their whole run).
    work_lock: Option<crate::work_lock::WorkLock>,
    /// The last traffic of each tunnel as last written to the database
    /// (heartbeat reports come every second; only a change is written).
    traffic_written: Mutex<std::collections::HashMap<String, u64>>,
}

type TerminalLock = std::sync::Arc<tokio::sync::Mutex<Option<std::time::Instant>>>;

/// A router's lock (and, in the daemon, the shared work lock against
/// `centerd` commands); the value is when an exchange last finished its
/// gateway commands for the router.
struct TerminalGuard {
    serial: tokio::sync::OwnedMutexGuard<Option<std::time::Instant>>,
    _process: Option<crate::work_lock::Held>,
}

impl std::ops::Deref for TerminalGuard {
    type Target = Option<std::time::Instant>;
    fn deref(&self) -> &Self::Target {
        &self.serial
    }
}

impl std::ops::DerefMut for TerminalGuard {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.serial
    }
}

/// A router's lock held by an exchange; on release it records when the
/// exchange's gateway commands were done (also on an early error return).
struct TerminalWork(TerminalGuard);

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
            tunnel_details: Mutex::new(std::collections::HashMap::new()),
            event_order: Mutex::new(crate::event_order::EventOrder::default()),
            routes: None,
            metrics: crate::metrics::CommandMetrics::new(crate::api::COMMANDS),
            terminal_locks: Mutex::new(std::collections::HashMap::new()),
            work_lock: None,
            traffic_written: Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// Each exchange that changes a router's gateway state also holds
    /// `lock` shared, so that a `centerd` command holding it exclusively
    /// never interleaves with it (the daemon; see [`crate::work_lock`]).
    pub fn with_work_lock(mut self, lock: crate::work_lock::WorkLock) -> Self {
        self.work_lock = Some(lock);
        self
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
    async fn lock_terminal(&self, terminal_id: &str) -> TerminalGuard {
        let m = {
            let mut map = self
                .terminal_locks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            map.entry(terminal_id.to_owned()).or_default().clone()
        };
        let serial = m.lock_owned().await;
        // Then the process-wide one: held only while this router's
        // exchange runs, never while waiting for another router's.
        let process = match &self.work_lock {
            None => None,
            Some(w) => match w.shared().await {
                Ok(h) => Some(h),
                Err(e) => {
                    log::error!(
                        "terminal={terminal_id} work lock {}: {e}; going on without it (a centerd command run now may interleave)",
                        w.path().display()
                    );
                    None
                }
            },
        };
        TerminalGuard {
            serial,
            _process: process,
        }
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
        if !row.confirmed {
            // The router holds its installation's secrets: a later
            // re-installation must prove these (issue 18).
            self.store()?.confirm_installation(&row.terminal_id)?;
        }
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
}

#[cfg(test)]
mod idle_tests;
#[cfg(test)]
mod limits_tests;
#[cfg(test)]
mod reinstall_tests;
#[cfg(test)]
mod request_states_tests;
#[cfg(test)]
mod site_end_tests;
#[cfg(test)]
pub(crate) mod tests;
