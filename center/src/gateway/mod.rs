//! gatewayd: the VPN gateway agent. An authenticated HTTP API for centerd
//! (set up a tunnel, add/remove its VPNNAT addresses, tear it down, report
//! state) over a [`TunnelDriver`], and a task that pushes the driver's
//! tunnel up/down events to centerd as they happen (no polling).

pub mod config;
pub mod driver;
pub mod ike;

use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::Method;
use ring::rand::SystemRandom;
use thiserror::Error;
use tokio::sync::mpsc::UnboundedReceiver;
use vpnnat_proto::auth::{AuthHeaders, MemoryNonceStore, ReplayConfig, ReplayGuard};
use vpnnat_proto::keys::{GatewayApiKey, SecretBytes};
use vpnnat_proto::messages::{
    Ack, AddAddresses, RemoveAddresses, ReportState, SetupTunnel, StateReport, TearDown, TunnelEvent, TunnelState,
};
use vpnnat_proto::seal::FieldKey;
use vpnnat_proto::types::{BoundedSet, FailureDetail, GatewayName, UnicastAddr};
use vpnnat_proto::{decode_request, encode_response, paths, Command, KeyKind, Outgoing, ProtoError, Verified};

use crate::config::HttpEndpoint;
use crate::http::{auth_headers, call, read_body, serve, signed, text, unix_now};
use driver::{DriverError, DriverEvent, TunnelDriver, TunnelSpec};

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

/// gatewayd's command side.
pub struct Gatewayd {
    name: GatewayName,
    api_key: GatewayApiKey,
    field_key: FieldKey,
    driver: Mutex<Box<dyn TunnelDriver>>,
    replay: Mutex<ReplayGuard<MemoryNonceStore>>,
    rng: SystemRandom,
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
        })
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
                self.driver()?.setup(TunnelSpec {
                    terminal_id: c.terminal_id.clone(),
                    slot: c.slot,
                    router_ip: c.router_ip.get(),
                    psk,
                })?;
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
        let tunnels = self.driver()?.tunnels();
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
            });
        }
        Ok(StateReport::new(out).map_err(ProtoError::from)?)
    }
}

/// Serves gatewayd's API on `listener` until `shutdown`.
pub async fn run(listener: tokio::net::TcpListener, shutdown: impl Future<Output = ()>, gw: Arc<Gatewayd>) {
    serve(listener, shutdown, move |req, peer| {
        let gw = gw.clone();
        async move {
            if req.method() == Method::GET && req.uri().path() == "/healthz" {
                return text(200, "ok");
            }
            if req.method() != Method::POST {
                return text(405, "use POST");
            }
            let path = req.uri().path().to_owned();
            let (parts, body) = match read_body(req, 64 * 1024).await {
                Ok(x) => x,
                Err(r) => return r,
            };
            let headers = match auth_headers(&parts.headers) {
                Ok(h) => h,
                Err(e) => return text(e.http_status(), e.to_string()),
            };
            match gw.handle(&path, &headers, &body, unix_now()) {
                Ok(out) => signed(out),
                Err(e) => {
                    log::warn!("{path} from {peer}: {e}");
                    let msg = match &e {
                        GatewayError::Proto(ProtoError::UnknownTerminal | ProtoError::BadMac) => {
                            "message authentication failed".to_owned()
                        }
                        other => other.to_string(),
                    };
                    text(e.http_status(), msg)
                }
            }
        }
    })
    .await
}

/// Pushes driver events to centerd, in order, each retried a few times
/// (centerd may be restarting). Ends when the driver side closes.
pub async fn forward_events(
    mut rx: UnboundedReceiver<DriverEvent>,
    center: HttpEndpoint,
    name: GatewayName,
    key: GatewayApiKey,
    timeout: Duration,
) {
    let rng = SystemRandom::new();
    while let Some(ev) = rx.recv().await {
        let clean: String = ev
            .detail
            .chars()
            .filter(|c| !c.is_control())
            .take(vpnnat_proto::types::MAX_DETAIL_CHARS)
            .collect();
        let Ok(detail) = FailureDetail::new(clean).or_else(|_| FailureDetail::new("")) else {
            log::warn!("tunnel event for {}: detail not sendable; dropped", ev.terminal_id);
            continue;
        };
        let msg = TunnelEvent {
            terminal_id: ev.terminal_id.clone(),
            slot: ev.slot,
            status: ev.status,
            detail,
        };
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=5u32 {
            match call(&center.authority, &name, &key.mac_key(), &msg, timeout, &rng).await {
                Ok(_) => break,
                Err(e) => {
                    log::warn!("tunnel event for {} (attempt {attempt}): {e}", ev.terminal_id);
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(2);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
