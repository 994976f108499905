//! The running daemon: state behind one lock, the center client around the
//! pure exchanges of [`crate::logic`], and the glue that makes every state
//! change durable *before* the kernel and the IKE responder follow it.
//!
//! Order on every change: compute the next state (pure), save it
//! atomically, adopt it in memory, reconfigure the IKE responder, reconcile
//! the datapath. A crash at any point leaves a state file that the next start
//! reconciles the kernel to, so nothing granted is lost and nothing revoked
//! stays reachable.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::rand::SystemRandom;
use thiserror::Error;
use tokio::sync::Mutex;
use vpnnat_datapath::Datapath;
use vpnnat_proto::auth::{AuthHeaders, MemoryNonceStore, ReplayConfig, ReplayGuard};
use vpnnat_proto::messages::{SiteEndOutcome, TunnelRebuild};
use vpnnat_proto::types::FailureCode;
use vpnnat_proto::Outgoing;
use vpnnat_service::client::ClientError;
use vpnnat_service::clock::unix_now;

use crate::config::Config;
use crate::health::{CenterHealth, HealthSettings, HelperBoard, HelperView, Notifier, Problem};
use crate::http::{self, Backoff};
use crate::ike_responder::IkeResponder;
use crate::logic::failure_request::FailureRequest;
use crate::logic::{self, Accepted, CenterReply, CommandError, ExchangeError, Identity, MaintenanceInput};
use crate::resolve::{parse_leases, NoDns, Resolver, SystemDns};
use crate::state::{RouterState, StateError, StateStore};
use crate::view::{self, HostView, StatusView};

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    #[error("the center is unreachable: {0}")]
    Unreachable(#[from] ClientError),
    #[error("cannot save the state: {0}")]
    State(#[from] StateError),
    #[error("the router is not installed yet")]
    NotInstalled,
    #[error("no preset request is configured ([button] in the config)")]
    NoButton,
    #[error(transparent)]
    SiteEnd(#[from] crate::logic::site_end::LocalEndError),
}

impl DaemonError {
    /// Worth retrying later: the center unreachable or temporarily unable.
    pub fn is_transient(&self) -> bool {
        match self {
            DaemonError::Unreachable(_) => true,
            DaemonError::Exchange(e) => e.is_transient(),
            _ => false,
        }
    }
}

struct Inner {
    state: RouterState,
    store: StateStore,
    datapath: Box<dyn Datapath + Send>,
    ike: Box<dyn IkeResponder>,
    guard: ReplayGuard<MemoryNonceStore>,
    /// The last datapath failure, cleared by a successful reconcile.
    datapath_error: Option<String>,
    /// What the last successful apply put in the kernel; `None` forces a
    /// full reconcile (read back, then fix) on the next sync.
    applied: Option<vpnnat_datapath::DesiredState>,
}

impl std::fmt::Debug for Parts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parts")
            .field("retry_initial", &self.retry_initial)
            .finish_non_exhaustive()
    }
}

/// What [`Router::new`] needs besides the config: the kernel access and the
/// IKE responder (fakes in tests), and the first retry delay.
pub struct Parts {
    pub datapath: Box<dyn Datapath + Send>,
    pub ike: Box<dyn IkeResponder>,
    pub retry_initial: Duration,
    /// The failure watch's period and thresholds.
    pub health: HealthSettings,
    /// The local address of connections to the center (`None`: the
    /// kernel's choice, right for a router with one WAN address). Many
    /// simulated routers in one namespace (the tunnel load test) each
    /// set their own, since the center knows a router by that address.
    pub center_source: Option<std::net::Ipv4Addr>,
}

/// What became of the site owner's end (issue 19, item 7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SiteEnd {
    /// Removed here and the center answered.
    Told(SiteEndOutcome),
    /// Removed here; the center could not be reached (why), it is told
    /// later.
    Queued(String),
}

/// How long the tunnel outlives a VPN-end command, so that the answer
/// reaches the center through it.
pub const VPN_END_GRACE: Duration = Duration::from_millis(1500);

/// The daemon's shared core.
pub struct Router {
    pub cfg: Arc<Config>,
    id: Identity,
    rng: SystemRandom,
    retry_initial: Duration,
    health: HealthSettings,
    center_source: Option<std::net::Ipv4Addr>,
    /// Router -> center exchanges that failed in a row.
    center_health: std::sync::Mutex<CenterHealth>,
    /// The supervised helpers (empty unless a supervisor runs).
    pub helpers: HelperBoard,
    inner: Mutex<Inner>,
    /// Set when the operator asked for a reboot (maintenance interface).
    stop: tokio::sync::watch::Sender<bool>,
    /// Serializes router -> center exchanges so that two LAN users pressing
    /// the button at once cannot interleave gateway and maintenance requests.
    exchange: Mutex<()>,
    /// When traffic through each grant was first seen ([`crate::live`]).
    first_seen: std::sync::Mutex<crate::live::FirstSeen>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Router {
    /// Loads the state file and reconciles the kernel to it (failures are
    /// logged and remembered, not fatal: the LAN page must come up anyway).
    pub async fn new(cfg: Arc<Config>, parts: Parts) -> Result<Arc<Router>, StateError> {
        let store = StateStore::new(cfg.state_file());
        let mut state = store.load()?;
        if let Some(next) = logic::settle(&state) {
            log::warn!(
                "state: {} host(s) without an open request and {} released after an interrupted end",
                state.hosts.len().saturating_sub(next.hosts.len()),
                if state.gateway.is_some() && next.gateway.is_none() {
                    "the gateway"
                } else {
                    "no gateway"
                }
            );
            store.save(&next)?;
            state = next;
        }
        let r = Arc::new(Router {
            id: Identity::from_config(&cfg),
            cfg,
            rng: SystemRandom::new(),
            retry_initial: parts.retry_initial,
            health: parts.health,
            center_source: parts.center_source,
            center_health: std::sync::Mutex::new(CenterHealth::default()),
            helpers: HelperBoard::default(),
            inner: Mutex::new(Inner {
                state,
                store,
                datapath: parts.datapath,
                ike: parts.ike,
                // One principal (the center) sends a few commands per maintenance;
                // 1,024 per replay window (240 s) is ample and bounds memory.
                // Past it the router answers 503 and the center retries.
                guard: ReplayGuard::new(MemoryNonceStore::new(1024), ReplayConfig::default()),
                datapath_error: None,
                applied: None,
            }),
            exchange: Mutex::new(()),
            stop: tokio::sync::watch::channel(false).0,
            first_seen: std::sync::Mutex::new(crate::live::FirstSeen::new()),
        });
        {
            let mut inner = r.inner.lock().await;
            r.sync(&mut inner);
        }
        Ok(r)
    }

    /// Brings the IKE responder and the kernel to the in-memory state.
    ///
    /// After a successful apply the next change is planned against what that
    /// apply left (no read-back: each read spawns `nft`); a failure, the
    /// start and every failure-watch tick do a full reconcile instead, which
    /// also repairs anything changed behind our back.
    fn sync(&self, inner: &mut Inner) {
        inner.ike.configure(logic::ike_settings(&self.id, &inner.state));
        let sas = inner.ike.installed_sas();
        let desired = logic::desired_state(&self.id, &inner.state, sas.clone());
        let result = match inner.applied.take() {
            Some(prev) => {
                let changes = vpnnat_datapath::plan(&desired, &logic::assumed_observed(&prev, &sas));
                inner.datapath.apply(&changes).map(|()| changes)
            }
            None => inner.datapath.reconcile(&desired),
        };
        match result {
            Ok(changes) => {
                if !changes.is_empty() {
                    log::info!("datapath: {} change(s) applied", changes.len());
                }
                inner.datapath_error = None;
                inner.applied = Some(desired);
            }
            Err(e) => {
                log::error!("datapath apply failed: {e}");
                inner.datapath_error = Some(e.to_string());
            }
        }
    }

    /// Makes `next` durable, adopts it, and syncs kernel and IKE.
    /// `after_save` names the crash point between the save and the kernel
    /// (given with `vpnnat_crashpoint::name!`, so a release build has no name).
    fn commit(&self, inner: &mut Inner, next: RouterState, after_save: &'static str) -> Result<(), StateError> {
        inner.store.save(&next)?;
        vpnnat_crashpoint::hit(after_save);
        inner.state = next;
        self.sync(inner);
        Ok(())
    }

    async fn send(&self, out: &Outgoing) -> Result<CenterReply, ClientError> {
        let r = http::send_to_center(
            self.center_source,
            &self.cfg.center_url.authority(),
            &self.cfg.center_url.prefix,
            out,
            self.cfg.center_timeout,
        )
        .await;
        // Unreachable, timed out or failing (5xx) counts against the
        // center's health; any other answer means it is there.
        if let Ok(mut h) = self.center_health.lock() {
            match &r {
                Ok(reply) if reply.status < 500 => h.success(),
                Ok(reply) => h.failure(&format!("{} answered {}", out.path, reply.status), Instant::now()),
                Err(e) => h.failure(&format!("{}: {e}", out.path), Instant::now()),
            }
        }
        r
    }

    pub fn health_settings(&self) -> &HealthSettings {
        &self.health
    }

    pub async fn state(&self) -> RouterState {
        self.inner.lock().await.state.clone()
    }

    pub async fn datapath_error(&self) -> Option<String> {
        self.inner.lock().await.datapath_error.clone()
    }

    /// The maintenance as it happens (issue 19, item 6): the granted
    /// devices with the kernel's counts of their traffic. Each read also
    /// notes the first traffic through a grant (the page's fetch loop and
    /// the failure watch read it).
    pub async fn live(&self) -> crate::live::LiveView {
        let (state, counters) = {
            let mut inner = self.inner.lock().await;
            let counters = inner.datapath.host_counters().unwrap_or_else(|e| {
                log::debug!("traffic counters unread: {e}");
                Vec::new()
            });
            (inner.state.clone(), counters)
        };
        let counts = counters.iter().map(|c| (c.real, c.packets)).collect();
        let mut seen = self
            .first_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *seen = crate::live::note_traffic(&seen, &state, &counts, unix_now());
        crate::live::view(&state, &counters, &seen)
    }

    /// Runs `f` on the datapath (tests and the status page).
    pub async fn with_datapath<T>(&self, f: impl FnOnce(&mut dyn Datapath) -> T) -> T {
        let mut inner = self.inner.lock().await;
        f(inner.datapath.as_mut())
    }

    // -- 1. installation notice ------------------------------------------

    /// One installation notice.
    pub async fn install(&self) -> Result<(), DaemonError> {
        let _x = self.exchange.lock().await;
        let state = self.state().await;
        let p = logic::begin_install(&self.id, &self.cfg.factory_secret, &state, &self.rng, unix_now())?;
        let reply = self.send(&p.outgoing).await?;
        vpnnat_crashpoint::hit("router.install.after_reply");
        let mut inner = self.inner.lock().await;
        let next = logic::finish_install(&self.id, &self.cfg.factory_secret, &inner.state, p, &reply, &self.rng)?;
        self.commit(&mut inner, next, vpnnat_crashpoint::name!("router.install.after_save"))?;
        if let Some(i) = &inner.state.installation {
            log::info!(
                "terminal={} installed: server part {} router part {}",
                self.id.terminal_id,
                i.server_part_vpnnat,
                i.router_part_vpnnat
            );
        }
        Ok(())
    }

    /// Installation notice, retried with exponential back-off while the
    /// center is unreachable or temporarily failing, until it succeeds, is
    /// refused for good, or `shutdown` completes.
    pub async fn install_with_retry(&self, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
        self.with_retry("installation notice", || self.install(), shutdown)
            .await
    }

    /// Runs `exchange` until it succeeds, fails for good, or `shutdown`
    /// completes; a transient failure (center unreachable or failing) is
    /// retried with exponential back-off. `what` names it in the log.
    async fn with_retry<T, F: Future<Output = Result<T, DaemonError>>>(
        &self,
        what: &str,
        exchange: impl Fn() -> F,
        shutdown: impl Future<Output = ()>,
    ) -> Result<T, DaemonError> {
        let mut backoff = Backoff::new(self.retry_initial, self.cfg.retry_max);
        tokio::pin!(shutdown);
        loop {
            match exchange().await {
                Err(e) if e.is_transient() => {
                    let d = backoff.next_delay();
                    log::warn!(
                        "terminal={} {what}: {e}; retrying in {}s",
                        self.id.terminal_id,
                        d.as_secs_f32()
                    );
                    tokio::select! {
                        _ = &mut shutdown => return Err(e),
                        _ = tokio::time::sleep(d) => {}
                    }
                }
                other => return other,
            }
        }
    }

    // -- tunnel lost (beyond the seed) -----------------------------------

    /// One tunnel-lost notice: this process has no IKE state, so an IKE SA
    /// the gateway still holds with us is stale; the center has the
    /// gateway negotiate afresh now instead of after dead-peer detection.
    pub async fn tunnel_lost(&self) -> Result<TunnelRebuild, DaemonError> {
        let _x = self.exchange.lock().await;
        let state = self.state().await;
        let p = logic::begin_tunnel_lost(&self.id, &state, &self.rng, unix_now())?;
        let reply = self.send(&p.outgoing).await?;
        Ok(logic::finish_tunnel_lost(&state, p, &reply)?)
    }

    /// The tunnel-lost notice, retried with back-off while the center (or
    /// the gateway behind it) is unreachable or failing, until it is
    /// answered, refused for good, or `shutdown` completes.
    pub async fn tunnel_lost_with_retry(&self, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
        let what = match self
            .with_retry("tunnel-lost notice", || self.tunnel_lost(), shutdown)
            .await?
        {
            TunnelRebuild::Up => "the gateway rebuilt the tunnel, it is up",
            TunnelRebuild::Connecting => "the gateway is rebuilding the tunnel",
            TunnelRebuild::NotDue => "no tunnel is due",
        };
        log::info!("terminal={} tunnel-lost notice: {what}", self.id.terminal_id);
        Ok(())
    }

    // -- 2. failure notice -----------------------------------------------

    /// Sends a failure notice for `failure`; then, as the seed says, asks
    /// for maintenance as [`logic::failure_request::failure_request`]
    /// decides. The result is the notice's: a failed request is logged,
    /// since the notice itself must not be repeated because of it.
    pub async fn report_failure(&self, failure: &Problem) -> Result<(), DaemonError> {
        let code = failure.code;
        {
            let _x = self.exchange.lock().await;
            let state = self.state().await;
            let p = logic::begin_failure(&self.id, &state, code, &failure.detail, &self.rng, unix_now())?;
            let reply = self.send(&p.outgoing).await?;
            let mut inner = self.inner.lock().await;
            let next = logic::finish_failure(&inner.state, p, &reply)?;
            self.commit(&mut inner, next, vpnnat_crashpoint::name!("router.failure.after_save"))?;
        }
        log::warn!("terminal={} failure notice sent ({code:?})", self.id.terminal_id);
        let state = self.state().await;
        match logic::failure_request::failure_request(&self.id, self.cfg.button.as_ref(), &state, failure) {
            Ok(FailureRequest::Suppressed { acceptance }) => log::info!(
                "{} maintenance request after the {} failure skipped: this request for it is still open",
                vpnnat_log::kv(&self.id.terminal_id, Some(acceptance)),
                failure.key
            ),
            Ok(FailureRequest::Request(input)) => {
                let preset = if self.cfg.button.is_some() {
                    "[button]"
                } else {
                    "default"
                };
                match self.maintenance(input).await {
                    Ok(acc) => log::info!(
                        "{} maintenance request ({preset} preset) for the router itself after the {} failure",
                        vpnnat_log::kv(&self.id.terminal_id, Some(acc.acceptance_number.get())),
                        failure.key
                    ),
                    Err(e) => log::error!(
                        "terminal={} maintenance request ({preset} preset) after the {} failure: {e}",
                        self.id.terminal_id,
                        failure.key
                    ),
                }
            }
            Err(e) => log::error!(
                "terminal={} no maintenance request after the {} failure: the default preset is invalid: {e}",
                self.id.terminal_id,
                failure.key
            ),
        }
        Ok(())
    }

    // -- 3 + 4. gateway address and maintenance request ------------------

    async fn gateway_locked(&self) -> Result<(), DaemonError> {
        let state = self.state().await;
        let wan = Some(vpnnat_proto::initiation::WanAddress::Ipv4(self.cfg.wan.address));
        let p = logic::begin_gateway_as(&self.id, &state, &self.rng, unix_now(), self.cfg.tunnel_initiation, wan)?;
        let reply = self.send(&p.outgoing).await?;
        vpnnat_crashpoint::hit("router.gateway.after_reply");
        let mut inner = self.inner.lock().await;
        let next = logic::finish_gateway(&self.id, &inner.state, p, &reply)?;
        self.commit(&mut inner, next, vpnnat_crashpoint::name!("router.gateway.after_save"))?;
        Ok(())
    }

    /// A snapshot of every name source, taken now.
    fn resolver(&self) -> Resolver<'_, Option<SystemDns>> {
        resolver_for(&self.cfg)
    }

    /// Resolves `names` on a blocking thread (DNS is getaddrinfo, which
    /// blocks) and returns a resolver that knows exactly those answers, so
    /// that the pure core never waits on the network and never holds the
    /// state lock across a lookup.
    async fn resolve_all(
        &self,
        names: &[vpnnat_proto::types::TerminalName],
    ) -> Result<BTreeMap<vpnnat_proto::types::TerminalName, std::net::Ipv4Addr>, DaemonError> {
        let cfg = self.cfg.clone();
        let names = names.to_vec();
        let res = tokio::task::spawn_blocking(move || {
            let r = resolver_for(&cfg);
            names
                .into_iter()
                .map(|n| r.resolve(&n).map(|(ip, _)| (n, ip)))
                .collect::<Result<BTreeMap<_, _>, _>>()
        })
        .await;
        match res {
            Ok(r) => r.map_err(|e| DaemonError::Exchange(e.into())),
            // The lookup thread panicked or was cancelled: treat the names
            // as unresolvable rather than taking the daemon down.
            Err(e) => Err(DaemonError::Exchange(ExchangeError::Resolve(
                crate::resolve::ResolveError::Unknown(format!("(lookup failed: {e})")),
            ))),
        }
    }

    /// The VPN gateway address request, then the maintenance request;
    /// installs the grants.
    pub async fn maintenance(&self, input: MaintenanceInput) -> Result<Accepted, DaemonError> {
        let _x = self.exchange.lock().await;
        let state = self.state().await;
        if state.installation.is_none() {
            return Err(DaemonError::NotInstalled);
        }
        // Site ends the center has not heard of go first (issue 19, item
        // 7): its judgments must see them before this request.
        self.send_unsent_ends_locked().await;
        // Check names before asking for a gateway slot, so an unknown name
        // costs the center nothing.
        let before = self.resolve_all(&input.terminals).await?;
        // The VPN gateway address exchange before every request (PROTOCOL.md
        // 3, [0101]/[0155]): the center keeps a healthy gateway, but a router
        // that missed its VPN end (the tunnel was down then) learns of a new
        // gateway here instead of requesting toward one that freed its slot.
        if let Err(e) = self.gateway_locked().await {
            self.settle_after_failure(&mut *self.inner.lock().await);
            return Err(e);
        }
        let state = self.state().await;
        let p = logic::begin_maintenance(&self.id, &state, &input, &self.fixed(&before), &self.rng, unix_now())?;
        let reply = match self.send(&p.outgoing).await {
            Ok(r) => r,
            Err(e) => {
                self.settle_after_failure(&mut *self.inner.lock().await);
                return Err(e.into());
            }
        };
        vpnnat_crashpoint::hit("router.grant.after_reply");
        // Resolved again now that the grants are here (PROTOCOL.md 4): a
        // host that vanished meanwhile must not be mapped.
        let after = self.resolve_all(&input.terminals).await?;
        let mut inner = self.inner.lock().await;
        let r = self.fixed(&after);
        let (next, acc) = match logic::finish_maintenance(&self.id, &inner.state, p, &reply, &r, unix_now()) {
            Ok(x) => x,
            Err(e) => {
                log::error!("terminal={} maintenance request: {e}", self.id.terminal_id);
                self.settle_after_failure(&mut inner);
                return Err(e.into());
            }
        };
        self.commit(&mut inner, next, vpnnat_crashpoint::name!("router.grant.after_save"))?;
        vpnnat_crashpoint::hit("router.grant.after_kernel");
        // Logged after the commit applied the NAT: the moment the e2e
        // benchmark's "router NAT install" phase ends.
        let subject = vpnnat_log::kv(&self.id.terminal_id, Some(acc.acceptance_number.get()));
        match &inner.datapath_error {
            None => log::info!(
                "{subject} maintenance request accepted, {} terminal(s) granted, NAT installed",
                acc.grants.len()
            ),
            Some(e) => log::warn!(
                "{subject} maintenance request accepted, {} terminal(s) granted, NAT not installed: {e}",
                acc.grants.len()
            ),
        }
        Ok(acc)
    }

    /// After a maintenance request that was not granted (refused, its
    /// tunnel never came up, the center unreachable): a router left with
    /// no waiting request gives its gateway back ([`logic::settle`]), so a
    /// dialing router stops dialing a gateway that freed its slot and the
    /// next request asks for a gateway afresh.
    fn settle_after_failure(&self, inner: &mut Inner) {
        let Some(next) = logic::settle(&inner.state) else {
            return;
        };
        log::info!(
            "terminal={} no request waits after the failed one: gateway released",
            self.id.terminal_id
        );
        if let Err(e) = self.commit(inner, next, vpnnat_crashpoint::name!("router.grant.after_failure")) {
            log::warn!("terminal={} cannot save the state: {e}", self.id.terminal_id);
        }
    }

    /// A resolver that knows only `answers`.
    fn fixed<'a>(
        &'a self,
        answers: &'a BTreeMap<vpnnat_proto::types::TerminalName, std::net::Ipv4Addr>,
    ) -> Resolver<'a, NoDns> {
        Resolver {
            statics: answers,
            leases: Vec::new(),
            now: unix_now(),
            dns: NoDns,
            lan: &self.cfg.lan,
            router_part: self.cfg.router_part_address,
        }
    }

    /// The button: the maintenance request with the preset data.
    pub async fn button(&self) -> Result<Accepted, DaemonError> {
        let b = self.cfg.button.as_ref().ok_or(DaemonError::NoButton)?;
        self.maintenance(logic::preset_input(b)).await
    }

    // -- site end (issue 19, item 7) --------------------------------------

    /// The site owner ends request `n` (LAN page, `routerd end N`): its
    /// hosts that no other open request names stop being mapped at once
    /// (saved, then the datapath follows), then the center is told; if it
    /// cannot be reached the end stays due and [`Router::send_unsent_ends`]
    /// tells it later.
    pub async fn end_request(&self, n: u64) -> Result<SiteEnd, DaemonError> {
        let _x = self.exchange.lock().await;
        {
            let mut inner = self.inner.lock().await;
            if inner.state.installation.is_none() {
                return Err(DaemonError::NotInstalled);
            }
            let (next, gone) = logic::site_end::end_locally(&inner.state, n)?;
            self.commit(&mut inner, next, vpnnat_crashpoint::name!("router.site_end.after_save"))?;
            let names: Vec<String> = gone.iter().map(ToString::to_string).collect();
            log::info!(
                "{} ended by the site owner: {} terminal(s) no longer mapped [{}]",
                vpnnat_log::kv(&self.id.terminal_id, Some(n)),
                gone.len(),
                names.join(", ")
            );
        }
        match self.send_site_end_locked(n).await {
            Ok(o) => Ok(SiteEnd::Told(o)),
            Err(DaemonError::Exchange(x)) if logic::site_end::refused_for_good(&x) => Err(x.into()),
            // Unreachable, failing, or an answer that did not verify: the
            // grant is gone here all the same; the center hears it later.
            Err(e) => {
                log::warn!(
                    "{} site end not told to the center yet ({e}); retried later",
                    vpnnat_log::kv(&self.id.terminal_id, Some(n))
                );
                Ok(SiteEnd::Queued(e.to_string()))
            }
        }
    }

    /// One site end to the center, under the exchange lock; an answer (or
    /// a refusal for good) makes it no longer due.
    async fn send_site_end_locked(&self, n: u64) -> Result<SiteEndOutcome, DaemonError> {
        let state = self.state().await;
        let p = logic::site_end::begin_site_end(&self.id, &state, n, &self.rng, unix_now())?;
        let reply = self.send(&p.outgoing).await?;
        let mut inner = self.inner.lock().await;
        match logic::site_end::finish_site_end(&inner.state, p, &reply) {
            Ok((next, outcome)) => {
                self.commit(&mut inner, next, vpnnat_crashpoint::name!("router.site_end.after_ack"))?;
                log::info!(
                    "{} site end acknowledged by the center ({})",
                    vpnnat_log::kv(&self.id.terminal_id, Some(n)),
                    match outcome {
                        SiteEndOutcome::Ended => "ended",
                        SiteEndOutcome::AlreadyEnded => "was ended already",
                    }
                );
                Ok(outcome)
            }
            Err(e) if logic::site_end::refused_for_good(&e) => {
                log::error!(
                    "{} site end refused by the center, not sent again: {e}",
                    vpnnat_log::kv(&self.id.terminal_id, Some(n))
                );
                let next = logic::site_end::end_sent(&inner.state, n);
                self.commit(
                    &mut inner,
                    next,
                    vpnnat_crashpoint::name!("router.site_end.after_refusal"),
                )?;
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Tells the center every site end it has not acknowledged (after the
    /// center was unreachable); stops at the first that fails in a way
    /// that may pass (the next call tries again; a refusal for good is
    /// logged and dropped). Returns how many are
    /// still due.
    pub async fn send_unsent_ends(&self) -> usize {
        let _x = self.exchange.lock().await;
        self.send_unsent_ends_locked().await
    }

    async fn send_unsent_ends_locked(&self) -> usize {
        let due = logic::site_end::unsent_ends(&self.state().await);
        for n in &due {
            if let Err(e) = self.send_site_end_locked(*n).await {
                let for_good = matches!(&e, DaemonError::Exchange(x) if logic::site_end::refused_for_good(x));
                if !for_good {
                    log::warn!(
                        "{} site end still not told to the center: {e}",
                        vpnnat_log::kv(&self.id.terminal_id, Some(*n))
                    );
                    break;
                }
            }
        }
        logic::site_end::unsent_ends(&self.state().await).len()
    }

    /// Asks the center which of the open requests it has ended meanwhile
    /// (issue 19, item 1: its end commands travel through the tunnel, and
    /// are lost when the tunnel is down at that moment) and ends them here
    /// as those commands would have: NAT rows no waiting request needs go,
    /// and with none left waiting the gateway and tunnel go too. Returns
    /// the requests ended here; an unreachable center changes nothing (the
    /// next tick asks again).
    pub async fn sync_request_states(&self) -> Result<Vec<u64>, DaemonError> {
        let _x = self.exchange.lock().await;
        let state = self.state().await;
        let Some(p) = logic::request_states::begin_request_states(&self.id, &state, &self.rng, unix_now())? else {
            return Ok(Vec::new());
        };
        let reply = self.send(&p.outgoing).await?;
        let mut inner = self.inner.lock().await;
        let (next, ended) = logic::request_states::finish_request_states(&inner.state, p, &reply)?;
        if let Some(next) = next {
            self.commit(
                &mut inner,
                next,
                vpnnat_crashpoint::name!("router.request_states.after_save"),
            )?;
            for n in &ended {
                log::info!(
                    "{} ended by the center while its commands could not reach this router; \
                     its grants are released here",
                    vpnnat_log::kv(&self.id.terminal_id, Some(*n))
                );
            }
            if inner.state.gateway.is_none() {
                log::info!("no request waits any more: VPN gateway and tunnel given up");
            }
        }
        Ok(ended)
    }

    // -- 6-8. center commands --------------------------------------------

    /// Handles one center command; returns the HTTP status, the response
    /// (headers and body) to send.
    pub async fn center_command(
        self: &Arc<Self>,
        path: &str,
        headers: Option<AuthHeaders>,
        body: &[u8],
    ) -> (u16, Option<Outgoing>, String) {
        let headers = match headers {
            Some(h) => h,
            None => return (400, None, "missing authentication headers".into()),
        };
        let mut inner = self.inner.lock().await;
        let Inner { state, guard, .. } = &mut *inner;
        let outcome = logic::handle_center_command(
            &self.id,
            state,
            guard,
            logic::IncomingCommand {
                path,
                headers: &headers,
                body,
            },
            unix_now(),
            &self.rng,
        );
        match outcome {
            Ok(o) if path == vpnnat_proto::paths::router::VPN_END => {
                // Durable before the center hears "done", but the kernel
                // keeps the tunnel a moment longer: the answer itself
                // travels back through it (SNAT to the server part's
                // VPNNAT address, then the tunnel's policy), so closing
                // the IKE SA and the policies now would lose the answer
                // and leave the center waiting for its timeout.
                if let Err(e) = inner.store.save(&o.next) {
                    log::error!("center command not applied: {e}");
                    return (503, None, "state could not be saved".into());
                }
                vpnnat_crashpoint::hit("router.vpn_end.after_save");
                inner.state = o.next;
                log::info!(
                    "{} center command: {} (tunnel closes in {:?})",
                    vpnnat_log::kv(&self.id.terminal_id, o.acceptance),
                    o.summary,
                    VPN_END_GRACE
                );
                let me = Arc::clone(self);
                tokio::spawn(async move {
                    tokio::time::sleep(VPN_END_GRACE).await;
                    let mut inner = me.inner.lock().await;
                    me.sync(&mut inner);
                });
                (200, Some(o.response), String::new())
            }
            Ok(o) => {
                // Durable before the center hears "done".
                if let Err(e) = self.commit(
                    &mut inner,
                    o.next,
                    vpnnat_crashpoint::name!("router.command.after_save"),
                ) {
                    log::error!("center command not applied: {e}");
                    return (503, None, "state could not be saved".into());
                }
                vpnnat_crashpoint::hit("router.command.after_kernel");
                log::info!(
                    "{} center command: {}",
                    vpnnat_log::kv(&self.id.terminal_id, o.acceptance),
                    o.summary
                );
                (200, Some(o.response), String::new())
            }
            Err(e) => {
                log::warn!("terminal={} center command on {path} refused: {e}", self.id.terminal_id);
                let status = e.http_status();
                // Same text for unknown terminal and bad MAC (proto's rule).
                let text = match &e {
                    CommandError::Proto(p) => p.to_string(),
                    other => other.to_string(),
                };
                (status, None, text)
            }
        }
    }

    // -- maintenance interface ------------------------------------------

    /// Whether `candidate` is this router's maintenance password: checked
    /// against the PBKDF2 hash of the state file (constant time), off the
    /// async workers so a slow check stalls no other request.
    pub async fn check_maintenance_password(&self, candidate: &str) -> bool {
        let hash = {
            let inner = self.inner.lock().await;
            let Some(inst) = &inner.state.installation else {
                return false;
            };
            inst.maintenance_password_hash.clone()
        };
        let candidate = zeroize::Zeroizing::new(candidate.to_owned());
        tokio::task::spawn_blocking(move || hash.verify(&candidate))
            .await
            .unwrap_or(false)
    }

    /// Whether `peer` may use the maintenance interface: the center's
    /// networks (through the tunnel) or the router itself.
    pub async fn is_center_peer(&self, peer: std::net::IpAddr) -> bool {
        let std::net::IpAddr::V4(ip) = peer else {
            return false;
        };
        if ip.is_loopback() {
            return true;
        }
        let inner = self.inner.lock().await;
        inner
            .state
            .gateway
            .iter()
            .flat_map(|g| g.center_networks.iter())
            .any(|net| net.contains(ip))
    }

    /// Asks the daemon to stop; as PID 1 it then reboots.
    pub fn request_reboot(&self) {
        crate::init::want_reboot();
        let _ = self.stop.send(true);
    }

    /// Completes when [`Router::request_reboot`] was called.
    pub async fn stop_requested(&self) {
        let mut rx = self.stop.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    // -- views -----------------------------------------------------------

    pub async fn status(&self) -> StatusView {
        let inner = self.inner.lock().await;
        StatusView::new(
            self.id.terminal_id.as_str(),
            &inner.state,
            inner.ike.status().to_string(),
        )
    }

    pub async fn hosts(&self) -> Vec<HostView> {
        let known = self.resolver().known();
        let state = self.state().await;
        view::hosts(&known, &state)
    }
}

/// A snapshot of every name source of `cfg`, taken now.
fn resolver_for(cfg: &Config) -> Resolver<'_, Option<SystemDns>> {
    // A missing lease file only means dnsmasq has handed out nothing yet.
    let leases = std::fs::read_to_string(&cfg.lease_file)
        .map(|t| parse_leases(&t))
        .unwrap_or_default();
    Resolver {
        statics: &cfg.hosts,
        leases,
        now: unix_now(),
        dns: cfg.dns.then_some(SystemDns),
        lan: &cfg.lan,
        router_part: cfg.router_part_address,
    }
}

/// Runs the daemon's servers and background work on the given listeners
/// until `shutdown` completes: the LAN page, the center port, the
/// installation notice (with retry) when not installed, and the failure
/// watch.
pub async fn serve(
    router: Arc<Router>,
    lan: tokio::net::TcpListener,
    center: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        // Err: the sender is gone, which also means stop.
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(http::serve(
        lan,
        Arc::new(crate::web::LanPage { router: router.clone() }),
        stopped(stop_rx.clone()),
    ));
    tasks.spawn(http::serve(
        center,
        Arc::new(crate::web::CenterPort::new(router.clone())),
        stopped(stop_rx.clone()),
    ));
    if router.state().await.installation.is_none() {
        let r = router.clone();
        let stop = stopped(stop_rx.clone());
        tasks.spawn(async move {
            if let Err(e) = r.install_with_retry(stop).await {
                log::error!("installation notice failed: {e}");
            }
        });
    }
    if logic::tunnel_may_be_lost(&router.state().await) {
        let r = router.clone();
        let stop = stopped(stop_rx.clone());
        tasks.spawn(async move {
            if let Err(e) = r.tunnel_lost_with_retry(stop).await {
                log::error!("tunnel-lost notice failed: {e}");
            }
        });
    }
    {
        let r = router.clone();
        let stop = stopped(stop_rx.clone());
        tasks.spawn(async move { r.watch_failures(stop).await });
    }
    tokio::select! {
        _ = shutdown => {}
        _ = router.stop_requested() => {}
    }
    log::info!("shutting down");
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
}

impl Router {
    /// Every failing condition now (see [`crate::health`]).
    pub async fn problems(&self) -> Vec<Problem> {
        let now = Instant::now();
        let mut out = Vec::new();
        if let Some(p) = self
            .center_health
            .lock()
            .ok()
            .and_then(|c| c.problem(&self.health, now))
        {
            out.push(p);
        }
        {
            let inner = self.inner.lock().await;
            if let Some(e) = &inner.datapath_error {
                out.push(Problem {
                    key: "datapath".into(),
                    code: FailureCode::Vpnnat,
                    detail: format!("datapath apply failed: {e}"),
                });
            }
            if let crate::ike_responder::IkeStatus::Failed(why) = inner.ike.status() {
                out.push(Problem {
                    key: "ike".into(),
                    code: FailureCode::Ipsec,
                    detail: format!("IKE responder down: {why}"),
                });
            }
        }
        out.extend(self.helpers.problems(now, &self.health));
        out
    }

    /// The supervised helpers as the operator sees them.
    pub fn helper_views(&self) -> Vec<HelperView> {
        self.helpers.views(Instant::now(), &self.health)
    }

    /// Every period: retries the kernel reconcile (a full one, which also
    /// repairs what someone changed by hand), collects the failing
    /// conditions and sends a failure notice (then the preset maintenance
    /// request) for the one [`Notifier`] says is due: one per episode of a
    /// condition, rate-limited against flapping.
    pub async fn watch_failures(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut notifier = Notifier::default();
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(self.health.period) => {}
            }
            {
                let mut inner = self.inner.lock().await;
                inner.applied = None;
                self.sync(&mut inner);
            }
            // The first traffic through a grant is noted even while no
            // one has the LAN page open.
            let _ = self.live().await;
            // Site ends the center did not hear yet (issue 19, item 7).
            let unsent = !logic::site_end::unsent_ends(&self.inner.lock().await.state).is_empty();
            if unsent {
                self.send_unsent_ends().await;
            }
            let problems = self.problems().await;
            let now = Instant::now();
            // No Secret(ID2) before installation: nothing to sign a notice with.
            let installed = self.inner.lock().await.state.installation.is_some();
            if let Some(p) = notifier.due(&problems, now, &self.health).filter(|_| installed) {
                notifier.attempted(now);
                match self.report_failure(p).await {
                    Ok(()) => notifier.sent(&p.key, now),
                    Err(e) => log::warn!("failure notice ({}) not sent: {e}", p.key),
                }
            }
            // Requests the center ended while its commands could not reach
            // us (issue 19, item 1). After the notice: an answered exchange
            // clears the "center unreachable" condition that notice reports.
            if let Err(e) = self.sync_request_states().await {
                log::warn!("request states not synced with the center: {e}");
            }
        }
    }
}

#[cfg(test)]
impl Router {
    /// Holds the router's state lock until the guard is dropped: the tests
    /// stand in for a slow password check (the comparison reads the state
    /// under this lock) to put many guesses in flight at once.
    pub(crate) async fn hold_state(&self) -> impl Drop + '_ {
        self.inner.lock().await
    }
}
