//! `vpnnat-ike gateway ...`: gatewayd's authenticated command API driven
//! the way centerd drives it (`center/src/clients.rs`: the same messages,
//! MAC'd with the gateway's API key, the PSK sealed for the gateway), for
//! VM scenarios that put a foreign peer (strongSwan) in a router's place
//! without a centerd: set up a tunnel (`router` mode: the peer dials in),
//! route VPNNAT addresses into it, tear it down, print the gateway's state.
//!
//! Keys from the environment, never the command line, never printed:
//! `VPNNAT_GW_API_KEY` (the gateway's API key, hex) and, for `setup`,
//! `VPNNAT_ROUTER_PSK` (the router's 32-byte PSK, hex).

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use ring::rand::SystemRandom;
use vpnnat_proto::initiation::InitiationMode;
use vpnnat_proto::keys::{GatewayApiKey, Psk, SecretBytes};
use vpnnat_proto::messages::{AddAddresses, AddressSet, RemoveAddresses, ReportState, SetupTunnel, TearDown};
use vpnnat_proto::seal::FieldKey;
use vpnnat_proto::types::{GatewayName, TerminalId, UnicastAddr};
use vpnnat_proto::Command;
use vpnnat_service::http::call;

const API_KEY_ENV: &str = "VPNNAT_GW_API_KEY";
const PSK_ENV: &str = "VPNNAT_ROUTER_PSK";

#[derive(Args, Debug)]
pub struct GatewayArgs {
    /// gatewayd's API, host:port.
    #[arg(long)]
    api: String,
    /// The gateway's name (its `name` in gatewayd.toml).
    #[arg(long)]
    name: String,
    #[arg(long, default_value_t = 10)]
    timeout_secs: u64,
    #[command(subcommand)]
    cmd: GatewayCmd,
}

#[derive(Subcommand, Debug)]
enum GatewayCmd {
    /// SetupTunnel (PSK from $VPNNAT_ROUTER_PSK).
    Setup {
        #[arg(long)]
        terminal: String,
        /// Where the router was last seen (`router` mode: informative).
        #[arg(long)]
        router_ip: Ipv4Addr,
        #[arg(long)]
        slot: u16,
        /// `gateway` (the gateway initiates) or `router` (it dials in).
        #[arg(long, default_value = "router")]
        mode: String,
    },
    /// AddAddresses: route these VPNNAT addresses into the tunnel.
    Add {
        #[arg(long)]
        terminal: String,
        #[arg(required = true)]
        addresses: Vec<Ipv4Addr>,
    },
    /// RemoveAddresses.
    Remove {
        #[arg(long)]
        terminal: String,
        #[arg(required = true)]
        addresses: Vec<Ipv4Addr>,
    },
    /// TearDown: the tunnel and its slot go.
    Teardown {
        #[arg(long)]
        terminal: String,
    },
    /// ReportState: one line per tunnel, `TUNNEL <terminal> slot=<n>
    /// router=<ip> status=<up|connecting|down> addresses=<a,b,..>`, then
    /// `TUNNELS <count>`.
    State,
}

fn key_from_env<K: SecretBytes>(var: &str) -> Result<K> {
    let v = zeroize::Zeroizing::new(std::env::var(var).with_context(|| format!("{var} is not set"))?);
    K::from_hex(&v).map_err(|e| anyhow::anyhow!("{var}: {e}"))
}

fn terminal(s: &str) -> Result<TerminalId> {
    TerminalId::new(s).map_err(|e| anyhow::anyhow!("terminal {s:?}: {e}"))
}

fn address_set(addrs: &[Ipv4Addr]) -> Result<AddressSet> {
    let v = addrs
        .iter()
        .map(|a| UnicastAddr::new(*a).map_err(|e| anyhow::anyhow!("{a}: {e}")))
        .collect::<Result<Vec<_>>>()?;
    AddressSet::new(v).map_err(|e| anyhow::anyhow!("addresses: {e}"))
}

/// The one status word of the state line.
fn status_word(s: vpnnat_proto::messages::TunnelStatus) -> &'static str {
    use vpnnat_proto::messages::TunnelStatus as S;
    match s {
        S::Up => "up",
        S::Connecting => "connecting",
        S::Down => "down",
    }
}

struct Client {
    api: String,
    name: GatewayName,
    key: GatewayApiKey,
    timeout: Duration,
    rng: SystemRandom,
}

impl Client {
    async fn send<C: Command<Principal = GatewayName>>(&self, cmd: &C) -> Result<C::Response> {
        call(&self.api, &self.name, &self.key.mac_key(), cmd, self.timeout, &self.rng)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    }
}

pub async fn run(a: GatewayArgs) -> Result<()> {
    let name = GatewayName::new(a.name.as_str()).map_err(|e| anyhow::anyhow!("name: {e}"))?;
    let c = Client {
        api: a.api,
        name,
        key: key_from_env(API_KEY_ENV)?,
        timeout: Duration::from_secs(a.timeout_secs),
        rng: SystemRandom::new(),
    };
    match a.cmd {
        GatewayCmd::Setup {
            terminal: t,
            router_ip,
            slot,
            mode,
        } => {
            let Some(mode) = InitiationMode::parse(&mode) else {
                bail!("--mode {mode:?}: gateway or router");
            };
            let psk: Psk = key_from_env(PSK_ENV)?;
            let fk = FieldKey::for_gateway(&c.key, &c.name).map_err(|e| anyhow::anyhow!("{e}"))?;
            let ip = UnicastAddr::new(router_ip).map_err(|e| anyhow::anyhow!("--router-ip: {e}"))?;
            let mut cmd =
                SetupTunnel::new(&c.rng, &fk, terminal(&t)?, ip, slot, &psk).map_err(|e| anyhow::anyhow!("{e}"))?;
            cmd.initiation = mode;
            c.send(&cmd).await?;
            println!("OK setup {t} slot={slot} mode={mode}");
        }
        GatewayCmd::Add { terminal: t, addresses } => {
            let cmd = AddAddresses {
                terminal_id: terminal(&t)?,
                addresses: address_set(&addresses)?,
            };
            c.send(&cmd).await?;
            println!("OK add {t}");
        }
        GatewayCmd::Remove { terminal: t, addresses } => {
            let cmd = RemoveAddresses {
                terminal_id: terminal(&t)?,
                addresses: address_set(&addresses)?,
            };
            c.send(&cmd).await?;
            println!("OK remove {t}");
        }
        GatewayCmd::Teardown { terminal: t } => {
            c.send(&TearDown {
                terminal_id: terminal(&t)?,
            })
            .await?;
            println!("OK teardown {t}");
        }
        GatewayCmd::State => {
            let r = c.send(&ReportState {}).await?;
            for t in r.tunnels() {
                let addrs: Vec<String> = t.addresses.iter().map(|a| a.get().to_string()).collect();
                println!(
                    "TUNNEL {} slot={} router={} status={} addresses={}",
                    t.terminal_id,
                    t.slot,
                    t.router_ip.get(),
                    status_word(t.status),
                    addrs.join(",")
                );
            }
            println!("TUNNELS {}", r.tunnels().len());
        }
    }
    Ok(())
}
