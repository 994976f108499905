//! gatewayd: the VPN gateway agent. An authenticated HTTP API for centerd
//! (set up a tunnel, add/remove its VPNNAT addresses, tear it down, report
//! state) over a [`TunnelDriver`], and a task that pushes the driver's
//! tunnel up/down events to centerd as they happen (no polling).

pub mod api;
pub mod config;
pub mod daemon;
pub mod dial_in;
pub mod driver;
pub mod filter;
pub mod ike;
pub mod last_use;

use std::collections::BTreeMap;

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vpnnat_proto::initiation::InitiationMode;

use ring::rand::SystemRandom;
use thiserror::Error;
use tokio::sync::mpsc::UnboundedReceiver;
use vpnnat_proto::auth::{AuthHeaders, MemoryNonceStore, ReplayConfig, ReplayGuard};
use vpnnat_proto::keys::{GatewayApiKey, SecretBytes};
use vpnnat_proto::messages::{
    Ack, AddAddresses, RemoveAddresses, ReportState, RestartTunnel, SetupTunnel, StateReport, TearDown, TunnelEvent,
    TunnelState,
};
use vpnnat_proto::seal::FieldKey;
use vpnnat_proto::types::{BoundedSet, FailureDetail, GatewayName, UnicastAddr};
use vpnnat_proto::{decode_request, encode_response, paths, Command, KeyKind, Outgoing, ProtoError, Verified};

use driver::{DriverError, DriverEvent, TunnelDriver, TunnelSpec};
use vpnnat_service::config::HttpEndpoint;
use vpnnat_service::http::{call, Route};
use vpnnat_service::metrics::CommandMetrics;

pub use api::{openapi, router, run, run_with};

#[derive(Debug, Error)]
pub enum GatewayError {
    #[error(transparent)]
    Proto(#[from] ProtoError),
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error("internal state lock poisoned")]
    Poisoned,
}

impl GatewayError {
    pub fn http_status(&self) -> u16 {
        match self {
            GatewayError::Proto(p) => p.http_status(),
            GatewayError::Driver(DriverError::UnknownTunnel(_)) => 404,
            GatewayError::Driver(
                DriverError::SlotInUse { .. }
                | DriverError::AddressInUse { .. }
                | DriverError::SlotOutOfRange(_)
                | DriverError::TooManyAddresses(_),
            ) => 409,
            GatewayError::Driver(DriverError::Datapath(_) | DriverError::Ike(_)) | GatewayError::Poisoned => 500,
        }
    }
}

/// Every route of gatewayd's API (the dispatcher and the OpenAPI check
/// both read this table).
pub const ROUTES: &[Route] = &[
    Route {
        method: "POST",
        path: paths::gateway::SETUP_TUNNEL,
        name: "setup",
    },
    Route {
        method: "POST",
        path: paths::gateway::ADD_ADDRESSES,
        name: "add_addresses",
    },
    Route {
        method: "POST",
        path: paths::gateway::REMOVE_ADDRESSES,
        name: "remove_addresses",
    },
    Route {
        method: "POST",
        path: paths::gateway::TEAR_DOWN,
        name: "teardown",
    },
    Route {
        method: "POST",
        path: paths::gateway::RESTART_TUNNEL,
        name: "restart_tunnel",
    },
    Route {
        method: "POST",
        path: paths::gateway::STATE,
        name: "state",
    },
    Route {
        method: "GET",
        path: "/healthz",
        name: "healthz",
    },
    Route {
        method: "GET",
        path: "/metrics",
        name: "metrics",
    },
    Route {
        method: "GET",
        path: "/openapi.json",
        name: "openapi",
    },
];

/// The command labels of gatewayd's latency metrics.
pub const COMMANDS: &[&str] = &[
    "setup",
    "add_addresses",
    "remove_addresses",
    "teardown",
    "restart_tunnel",
    "state",
];

/// Tunnel events forwarded to centerd, and IKE failures by reason (from
/// the IKE driver's "IKE down: <reason>" events; our own close is not a
/// failure).
#[derive(Debug, Default)]
pub struct EventCounters {
    by_status: Mutex<BTreeMap<&'static str, u64>>,
    ike_failures: Mutex<BTreeMap<String, u64>>,
}

/// The IKE down reason of an event detail, as a metric label (`peer_dead`).
fn ike_failure_reason(detail: &str) -> Option<String> {
    let reason = detail.strip_prefix("IKE down: ")?;
    let mut out = String::new();
    for (i, c) in reason
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .take(40)
        .enumerate()
    {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    (!out.is_empty() && out != "closed").then_some(out)
}

impl EventCounters {
    pub fn record(&self, ev: &DriverEvent) {
        let status = match ev.status {
            vpnnat_proto::messages::TunnelStatus::Up => "up",
            vpnnat_proto::messages::TunnelStatus::Connecting => "connecting",
            vpnnat_proto::messages::TunnelStatus::Down => "down",
        };
        if let Ok(mut m) = self.by_status.lock() {
            let e = m.entry(status).or_insert(0);
            *e = e.saturating_add(1);
        }
        if ev.status == vpnnat_proto::messages::TunnelStatus::Down {
            if let Some(r) = ike_failure_reason(&ev.detail) {
                if let Ok(mut m) = self.ike_failures.lock() {
                    let e = m.entry(r).or_insert(0);
                    *e = e.saturating_add(1);
                }
            }
        }
    }
}

/// gatewayd's command side.
pub struct Gatewayd {
    name: GatewayName,
    api_key: GatewayApiKey,
    field_key: FieldKey,
    driver: Mutex<Box<dyn TunnelDriver>>,
    replay: Mutex<ReplayGuard<MemoryNonceStore>>,
    rng: SystemRandom,
    metrics: CommandMetrics,
    events: Arc<EventCounters>,
}

impl std::fmt::Debug for Gatewayd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gatewayd")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Gatewayd {
    pub fn new(name: GatewayName, api_key: GatewayApiKey, driver: Box<dyn TunnelDriver>) -> Result<Self, GatewayError> {
        let field_key = FieldKey::for_gateway(&api_key, &name).map_err(ProtoError::from)?;
        Ok(Gatewayd {
            name,
            api_key,
            field_key,
            driver: Mutex::new(driver),
            // One gatewayd per gateway: its nonces can live in memory.
            replay: Mutex::new(ReplayGuard::new(MemoryNonceStore::default(), ReplayConfig::default())),
            rng: SystemRandom::new(),
            metrics: CommandMetrics::new(COMMANDS),
            events: Arc::new(EventCounters::default()),
        })
    }

    /// Counters of the events [`forward_events_counted`] forwards.
    pub fn event_counters(&self) -> Arc<EventCounters> {
        self.events.clone()
    }

    /// The Prometheus exposition: tunnels by state, addresses routed,
    /// tunnel events, IKE failures by reason, command latency.
    pub fn render_metrics(&self) -> Result<String, GatewayError> {
        use vpnnat_service::metrics::family;
        let tunnels = self.driver()?.tunnels();
        #[allow(clippy::cast_precision_loss)] // counts far below 2^53
        let f = |v: usize| v as f64;
        let count = |st: vpnnat_proto::messages::TunnelStatus| tunnels.iter().filter(|t| t.status == st).count();
        let mut out = String::new();
        use vpnnat_proto::messages::TunnelStatus as S;
        family(
            &mut out,
            "vpnnat_gateway_tunnels",
            "gauge",
            "Tunnels by state.",
            &[
                (vec![("state", "up".to_owned())], f(count(S::Up))),
                (vec![("state", "connecting".to_owned())], f(count(S::Connecting))),
                (vec![("state", "down".to_owned())], f(count(S::Down))),
            ],
        );
        family(
            &mut out,
            "vpnnat_gateway_tunnels_up",
            "gauge",
            "Tunnels up.",
            &[(vec![], f(count(S::Up)))],
        );
        family(
            &mut out,
            "vpnnat_gateway_addresses",
            "gauge",
            "VPNNAT addresses routed into tunnels.",
            &[(vec![], f(tunnels.iter().map(|t| t.addresses.len()).sum()))],
        );
        #[allow(clippy::cast_precision_loss)]
        let by_status: Vec<_> = self
            .events
            .by_status
            .lock()
            .map_err(|_| GatewayError::Poisoned)?
            .iter()
            .map(|(k, v)| (vec![("status", (*k).to_owned())], *v as f64))
            .collect();
        family(
            &mut out,
            "vpnnat_gateway_tunnel_events_total",
            "counter",
            "Tunnel events forwarded to centerd, by status.",
            &by_status,
        );
        #[allow(clippy::cast_precision_loss)]
        let ike: Vec<_> = self
            .events
            .ike_failures
            .lock()
            .map_err(|_| GatewayError::Poisoned)?
            .iter()
            .map(|(k, v)| (vec![("reason", k.clone())], *v as f64))
            .collect();
        family(
            &mut out,
            "vpnnat_gateway_ike_failures_total",
            "counter",
            "IKE SAs that went down other than by our own close, by reason.",
            &ike,
        );
        self.metrics.render("vpnnat_gateway", "centerd", &mut out);
        Ok(out)
    }

    fn driver(&self) -> Result<std::sync::MutexGuard<'_, Box<dyn TunnelDriver>>, GatewayError> {
        self.driver.lock().map_err(|_| GatewayError::Poisoned)
    }

    /// Reconciles the kernel with the driver's state (at start: removes
    /// whatever a previous run left; centerd then re-sends what it wants).
    pub fn reconcile(&self) -> Result<(), GatewayError> {
        Ok(self.driver()?.reconcile()?)
    }

    fn verify<C: Command<Principal = GatewayName>>(
        &self,
        path: &str,
        headers: &AuthHeaders,
        body: &[u8],
        now: u64,
    ) -> Result<Verified<C>, GatewayError> {
        let mut guard = self.replay.lock().map_err(|_| GatewayError::Poisoned)?;
        Ok(decode_request::<C, _, _>(
            &mut guard,
            path,
            headers,
            body,
            now,
            |p: &GatewayName, kind| (kind == KeyKind::GatewayApiKey && *p == self.name).then(|| self.api_key.mac_key()),
        )?)
    }

    fn answer<C: Command>(&self, v: &Verified<C>, r: &C::Response, now: u64) -> Result<Outgoing, GatewayError> {
        Ok(encode_response(v, r, &self.api_key.mac_key(), now, &self.rng)?)
    }

    /// Handles one command from centerd.
    pub fn handle(&self, path: &str, headers: &AuthHeaders, body: &[u8], now: u64) -> Result<Outgoing, GatewayError> {
        match path {
            paths::gateway::SETUP_TUNNEL => {
                let v = self.verify::<SetupTunnel>(path, headers, body, now)?;
                let c = v.command();
                let psk = c.open_psk(&self.field_key)?;
                let spec = TunnelSpec {
                    terminal_id: c.terminal_id.clone(),
                    slot: c.slot,
                    router_ip: c.router_ip.get(),
                    psk,
                };
                match c.initiation {
                    InitiationMode::Gateway => self.driver()?.setup(spec)?,
                    // Issue 17: the router dials in; it is admitted by
                    // its identity and PSK, not connected to.
                    InitiationMode::Router => self.driver()?.setup_dial_in(spec)?,
                }
                self.answer(&v, &Ack {}, now)
            }
            paths::gateway::ADD_ADDRESSES => {
                let v = self.verify::<AddAddresses>(path, headers, body, now)?;
                let c = v.command();
                let a: Vec<Ipv4Addr> = c.addresses.iter().map(|a| a.get()).collect();
                self.driver()?.add_addresses(&c.terminal_id, &a)?;
                self.answer(&v, &Ack {}, now)
            }
            paths::gateway::REMOVE_ADDRESSES => {
                let v = self.verify::<RemoveAddresses>(path, headers, body, now)?;
                let c = v.command();
                let a: Vec<Ipv4Addr> = c.addresses.iter().map(|a| a.get()).collect();
                self.driver()?.remove_addresses(&c.terminal_id, &a)?;
                self.answer(&v, &Ack {}, now)
            }
            paths::gateway::TEAR_DOWN => {
                let v = self.verify::<TearDown>(path, headers, body, now)?;
                self.driver()?.teardown(&v.command().terminal_id)?;
                self.answer(&v, &Ack {}, now)
            }
            paths::gateway::RESTART_TUNNEL => {
                let v = self.verify::<RestartTunnel>(path, headers, body, now)?;
                self.driver()?.restart(&v.command().terminal_id)?;
                self.answer(&v, &Ack {}, now)
            }
            paths::gateway::STATE => {
                let v = self.verify::<ReportState>(path, headers, body, now)?;
                let report = self.state()?;
                self.answer(&v, &report, now)
            }
            other => Err(ProtoError::UnknownPath {
                path: other.chars().take(64).collect(),
            }
            .into()),
        }
    }

    /// The driver's tunnels as a [`StateReport`].
    pub fn state(&self) -> Result<StateReport, GatewayError> {
        // Taken first: every event numbered up to it happened before the
        // tunnels are read below, so the report reflects it.
        let seq = driver::event_seq_now();
        let (tunnels, last_use) = {
            let mut d = self.driver()?;
            // Unknown when the policies cannot be read: the center then
            // ends nothing as idle (logged, the report still goes out).
            let last_use = d
                .last_use()
                .map_err(|e| log::warn!("tunnels' last traffic unknown: {e}"))
                .ok();
            (d.tunnels(), last_use)
        };
        let mut out = Vec::with_capacity(tunnels.len());
        for t in tunnels {
            let addrs = t
                .addresses
                .iter()
                .map(|a| UnicastAddr::new(*a))
                .collect::<Result<Vec<_>, _>>()
                .map_err(ProtoError::from)?;
            out.push(TunnelState {
                terminal_id: t.terminal_id,
                slot: t.slot,
                router_ip: UnicastAddr::new(t.router_ip).map_err(ProtoError::from)?,
                status: t.status,
                addresses: BoundedSet::new(addrs).map_err(ProtoError::from)?,
                last_use: last_use.as_ref().map(|m| m.get(&t.slot).copied().unwrap_or(0)),
            });
        }
        Ok(StateReport::new(out).map_err(ProtoError::from)?.with_seq(seq))
    }
}

/// Pushes driver events to centerd, in order, each retried a few times
/// (centerd may be restarting). Ends when the driver side closes.
pub async fn forward_events(
    rx: UnboundedReceiver<DriverEvent>,
    center: HttpEndpoint,
    name: GatewayName,
    key: GatewayApiKey,
    timeout: Duration,
) {
    forward_events_counted(rx, center, name, key, timeout, Arc::new(EventCounters::default())).await
}

/// [`forward_events`], counting each event in `counters` (gatewayd's
/// metrics).
pub async fn forward_events_counted(
    mut rx: UnboundedReceiver<DriverEvent>,
    center: HttpEndpoint,
    name: GatewayName,
    key: GatewayApiKey,
    timeout: Duration,
    counters: Arc<EventCounters>,
) {
    let rng = SystemRandom::new();
    while let Some(ev) = rx.recv().await {
        counters.record(&ev);
        let clean: String = ev
            .detail
            .chars()
            .filter(|c| !c.is_control())
            .take(vpnnat_proto::types::MAX_DETAIL_CHARS)
            .collect();
        let Ok(detail) = FailureDetail::new(clean).or_else(|_| FailureDetail::new("")) else {
            log::warn!("terminal={} tunnel event: detail not sendable; dropped", ev.terminal_id);
            continue;
        };
        let msg = TunnelEvent {
            terminal_id: ev.terminal_id.clone(),
            slot: ev.slot,
            status: ev.status,
            detail,
            seq: ev.seq,
        };
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=5u32 {
            match call(&center.authority, &name, &key.mac_key(), &msg, timeout, &rng).await {
                Ok(_) => break,
                Err(e) => {
                    log::warn!("terminal={} tunnel event (attempt {attempt}): {e}", ev.terminal_id);
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(2);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
