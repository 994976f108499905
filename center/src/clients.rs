//! The real command channels of centerd: HTTP to gatewayd on the center LAN
//! and HTTP through the tunnel to a router's server part.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ring::rand::SystemRandom;
use vpnnat_proto::keys::{GatewayApiKey, Psk, SecretBytes};
use vpnnat_proto::messages::{
    AddAddresses, AddressSet, EndCommand, ReleaseCommand, RemoveAddresses, ReportState, RestartTunnel, SetupTunnel,
    StateReport, TearDown, VpnEndCommand,
};
use vpnnat_proto::seal::FieldKey;
use vpnnat_proto::types::{AcceptanceNumber, GatewayName, TerminalId, TerminalName, UnicastAddr};

use crate::center::{CommandError, GatewayCommands, RouterCommands, RouterTarget};
use crate::http::call;

/// How long a probe result is trusted. Probing on every gateway address
/// request would double the load on gateways; a few seconds of staleness
/// only means one failed command before the gateway is skipped.
const PROBE_TTL: Duration = Duration::from_secs(3);

#[derive(Debug)]
struct GatewayClient {
    name: GatewayName,
    authority: String,
    key: GatewayApiKey,
}

/// centerd -> gatewayd over HTTP.
#[derive(Debug)]
pub struct HttpGateways {
    gateways: Vec<GatewayClient>,
    timeout: Duration,
    rng: SystemRandom,
    probes: Mutex<HashMap<String, (Instant, bool)>>,
    /// When each gateway last answered any command (authenticated: a
    /// refusal is an answer too, a time-out or a refused connection not).
    answered: Mutex<HashMap<String, Instant>>,
}

impl HttpGateways {
    /// `gateways`: (name, `host:port`, API key).
    pub fn new(gateways: Vec<(GatewayName, String, GatewayApiKey)>, timeout: Duration) -> Self {
        HttpGateways {
            gateways: gateways
                .into_iter()
                .map(|(name, authority, key)| GatewayClient { name, authority, key })
                .collect(),
            timeout,
            rng: SystemRandom::new(),
            probes: Mutex::new(HashMap::new()),
            answered: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, name: &str) -> Result<&GatewayClient, CommandError> {
        self.gateways
            .iter()
            .find(|g| g.name.as_str() == name)
            .ok_or_else(|| CommandError::Unknown {
                target: name.to_owned(),
            })
    }

    fn remember(&self, name: &str, ok: bool) {
        let now = Instant::now();
        if let Ok(mut p) = self.probes.lock() {
            p.insert(name.to_owned(), (now, ok));
        }
        if ok {
            if let Ok(mut a) = self.answered.lock() {
                a.insert(name.to_owned(), now);
            }
        }
    }

    fn answered_since(&self, name: &str, since: Instant) -> bool {
        self.answered
            .lock()
            .ok()
            .and_then(|a| a.get(name).copied())
            .is_some_and(|at| at >= since)
    }

    async fn send<C>(&self, name: &str, cmd: &C) -> Result<C::Response, CommandError>
    where
        C: vpnnat_proto::Command<Principal = GatewayName>,
    {
        let g = self.get(name)?;
        let r = call(&g.authority, &g.name, &g.key.mac_key(), cmd, self.timeout, &self.rng).await;
        // Any command tells us whether the gateway answers.
        self.remember(name, !matches!(r, Err(CommandError::Unreachable { .. })));
        r
    }

    /// centerd's heartbeat: one authenticated `ReportState` (MAC'd with
    /// the gateway's API key, answer verified) bounded by `timeout`, which
    /// is shorter than the command time-out so a silent gateway is noticed
    /// in seconds. Ok means the gateway answers and is ours. A heartbeat
    /// that timed out while other commands to the same gateway got answers
    /// counts as answered: under load the one state report can queue behind
    /// the tunnel commands, and a gateway busy serving them is not dead.
    /// The report that came back, if one did (its tunnels' last traffic
    /// feeds the idle timeout).
    pub async fn heartbeat(&self, name: &str, timeout: Duration) -> Result<Option<StateReport>, CommandError> {
        let g = self.get(name)?;
        let sent = Instant::now();
        let r = call(
            &g.authority,
            &g.name,
            &g.key.mac_key(),
            &ReportState {},
            timeout,
            &self.rng,
        )
        .await;
        if let Ok(report) = r {
            self.remember(name, true);
            return Ok(Some(report));
        }
        if self.answered_since(name, sent) {
            return Ok(None);
        }
        r.map(Some)
    }

    /// The gateway's whole state (reconciliation, `centerd` tools).
    pub async fn state(&self, name: &str) -> Result<StateReport, CommandError> {
        self.send(name, &ReportState {}).await
    }
}

fn address_set(target: &str, addrs: &[Ipv4Addr]) -> Result<AddressSet, CommandError> {
    let bad = |reason: String| CommandError::BadAnswer {
        target: target.to_owned(),
        reason,
    };
    let v = addrs
        .iter()
        .map(|a| UnicastAddr::new(*a).map_err(|e| bad(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    AddressSet::new(v).map_err(|e| bad(e.to_string()))
}

impl GatewayCommands for HttpGateways {
    async fn probe(&self, gateway: &str) -> bool {
        let cached = self
            .probes
            .lock()
            .ok()
            .and_then(|p| p.get(gateway).copied())
            // Only a recent "answers" is trusted: a gateway that did not
            // answer (e.g. refused while it was still starting, right when
            // centerd's first reconcile ran) is asked again rather than
            // skipped for the whole TTL.
            .filter(|(at, ok)| *ok && at.elapsed() < PROBE_TTL);
        if let Some((_, ok)) = cached {
            return ok;
        }
        self.state(gateway).await.is_ok()
    }

    async fn setup_tunnel(
        &self,
        gateway: &str,
        terminal: &TerminalId,
        router_ip: Ipv4Addr,
        slot: u16,
        psk: &Psk,
    ) -> Result<(), CommandError> {
        let g = self.get(gateway)?;
        let bad = |reason: String| CommandError::BadAnswer {
            target: gateway.to_owned(),
            reason,
        };
        let fk = FieldKey::for_gateway(&g.key, &g.name).map_err(|e| bad(e.to_string()))?;
        let ip = UnicastAddr::new(router_ip).map_err(|e| bad(format!("router address: {e}")))?;
        let cmd = SetupTunnel::new(&self.rng, &fk, terminal.clone(), ip, slot, psk).map_err(|e| bad(e.to_string()))?;
        self.send(gateway, &cmd).await.map(|_| ())
    }

    async fn setup_tunnel_as(
        &self,
        gateway: &str,
        terminal: &TerminalId,
        router_ip: Ipv4Addr,
        slot: u16,
        psk: &Psk,
        mode: vpnnat_proto::initiation::InitiationMode,
    ) -> Result<(), CommandError> {
        let g = self.get(gateway)?;
        let bad = |reason: String| CommandError::BadAnswer {
            target: gateway.to_owned(),
            reason,
        };
        let fk = FieldKey::for_gateway(&g.key, &g.name).map_err(|e| bad(e.to_string()))?;
        let ip = UnicastAddr::new(router_ip).map_err(|e| bad(format!("router address: {e}")))?;
        let mut cmd =
            SetupTunnel::new(&self.rng, &fk, terminal.clone(), ip, slot, psk).map_err(|e| bad(e.to_string()))?;
        cmd.initiation = mode;
        self.send(gateway, &cmd).await.map(|_| ())
    }

    async fn add_addresses(&self, gateway: &str, terminal: &TerminalId, a: &[Ipv4Addr]) -> Result<(), CommandError> {
        let cmd = AddAddresses {
            terminal_id: terminal.clone(),
            addresses: address_set(gateway, a)?,
        };
        self.send(gateway, &cmd).await.map(|_| ())
    }

    async fn remove_addresses(&self, gateway: &str, terminal: &TerminalId, a: &[Ipv4Addr]) -> Result<(), CommandError> {
        let cmd = RemoveAddresses {
            terminal_id: terminal.clone(),
            addresses: address_set(gateway, a)?,
        };
        self.send(gateway, &cmd).await.map(|_| ())
    }

    async fn tear_down(&self, gateway: &str, terminal: &TerminalId) -> Result<(), CommandError> {
        let cmd = TearDown {
            terminal_id: terminal.clone(),
        };
        self.send(gateway, &cmd).await.map(|_| ())
    }

    async fn restart_tunnel(&self, gateway: &str, terminal: &TerminalId) -> Result<(), CommandError> {
        let cmd = RestartTunnel {
            terminal_id: terminal.clone(),
        };
        self.send(gateway, &cmd).await.map(|_| ())
    }

    async fn report(&self, gateway: &str) -> Result<StateReport, CommandError> {
        self.state(gateway).await
    }
}

/// centerd -> router's server part, through the tunnel, authenticated with
/// Secret(ID2).
#[derive(Debug)]
pub struct HttpRouters {
    port: u16,
    timeout: Duration,
    rng: SystemRandom,
}

impl HttpRouters {
    pub fn new(port: u16, timeout: Duration) -> Self {
        HttpRouters {
            port,
            timeout,
            rng: SystemRandom::new(),
        }
    }

    async fn send<C>(&self, to: &RouterTarget, cmd: &C) -> Result<(), CommandError>
    where
        C: vpnnat_proto::Command<Principal = TerminalId>,
    {
        let authority = format!("{}:{}", to.address, self.port);
        call(
            &authority,
            &to.terminal_id,
            &to.secret_id2.mac_key(),
            cmd,
            self.timeout,
            &self.rng,
        )
        .await
        .map(|_| ())
    }
}

impl RouterCommands for HttpRouters {
    async fn end(&self, to: &RouterTarget, n: AcceptanceNumber) -> Result<(), CommandError> {
        self.send(to, &EndCommand { acceptance_number: n }).await
    }

    async fn release(&self, to: &RouterTarget, name: &TerminalName) -> Result<(), CommandError> {
        self.send(
            to,
            &ReleaseCommand {
                terminal_name: name.clone(),
            },
        )
        .await
    }

    async fn vpn_end(&self, to: &RouterTarget) -> Result<(), CommandError> {
        self.send(to, &VpnEndCommand {}).await
    }
}
