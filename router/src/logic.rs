//! The router side of every exchange of PROTOCOL.md, as pure logic.
//!
//! Inputs in (configuration, current state, the center's reply bytes, the
//! time, a random source), decisions out: messages to send, the *next*
//! state, the answer to a center command. Nothing here does I/O. Every
//! state change is returned as a new [`RouterState`] rather than applied in
//! place, so that the I/O shell can make it durable first and adopt it only
//! then, and so that a rejected input provably changes nothing.
//!
//! [`desired_state`] turns a state into the datapath's [`DesiredState`];
//! reconciliation after a crash is `Datapath::reconcile(desired_state(..))`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ring::rand::SecureRandom;
use thiserror::Error;
use vpnnat_datapath::nft::NatObserved;
use vpnnat_datapath::plan::NatDesired;
use vpnnat_datapath::{
    tunnel_policies, DesiredState, Ipv4Cidr, Mapping, ObservedSa, ObservedState, SaCounters, SaSpec, REQID_BASE,
};
use vpnnat_proto::auth::{AuthHeaders, NonceStore, ReplayGuard};
use vpnnat_proto::initiation::{InitiationPreference, WanAddress};
use vpnnat_proto::keys::{KeyError, SecretBytes, SecretId};
use vpnnat_proto::messages::{
    Ack, EndCommand, FailureNotice, GatewayAddressRequest, InstallRequest, MaintenanceDetails, MaintenanceRequest,
    ReleaseCommand, TunnelLostAnswer, TunnelLostNotice, TunnelRebuild, VpnEndCommand,
};
use vpnnat_proto::reinstall::ReinstallProof;
use vpnnat_proto::seal::ReplyKeyPair;
use vpnnat_proto::types::{
    AcceptanceNumber, ClaimantLevel, ClaimantName, FailureCode, FailureDetail, Phone, RequestContent, TerminalId,
    TerminalName, TerminalNames, Urgency,
};
use vpnnat_proto::{decode_request, decode_response, encode_request, encode_response, Command, Outgoing, ProtoError};

use crate::config::Interface;
use crate::ike_responder::ResponderSettings;
use crate::resolve::{DnsLookup, ResolveError, Resolver};
use crate::state::{FailureRecord, Gateway, HostGrant, Installation, RequestRecord, RequestState, RouterState};

/// The reqid of the router's one tunnel: its policies carry it and the IKE
/// driver must give the tunnel's SAs the same.
pub const TUNNEL_REQID: u32 = REQID_BASE + 0x100;
/// Ended requests kept for the page and `routerd status`; older ones are
/// forgotten so the state file does not grow without bound.
pub const MAX_ENDED_REQUESTS: usize = 64;

/// Forgets the oldest ended requests beyond [`MAX_ENDED_REQUESTS`], and
/// their numbers in host rows.
fn prune_ended(state: &mut RouterState) {
    let ended: Vec<u64> = state
        .requests
        .iter()
        .filter(|(_, r)| r.state == RequestState::Ended && !r.end_unsent)
        .map(|(n, _)| *n)
        .collect();
    let excess = ended.len().saturating_sub(MAX_ENDED_REQUESTS);
    for n in ended.iter().take(excess) {
        state.requests.remove(n);
        for h in state.hosts.values_mut() {
            h.requests.remove(n);
        }
    }
}

/// Priority of the router's tunnel policies.
pub const POLICY_PRIORITY: u32 = 1000;

/// Why an exchange (router -> center) failed. Nothing of the state changed.
#[derive(Debug, Error)]
pub enum ExchangeError {
    #[error("the router is not installed yet (no Secret(ID2)); send the installation notice first")]
    NotInstalled,
    #[error("no VPN gateway assigned yet")]
    NoGateway,
    /// The center answered with an error status; its text is shown as is.
    #[error("the center refused ({status}): {message}")]
    Refused { status: u16, message: String },
    /// The answer did not authenticate, open or parse.
    #[error("bad answer from the center: {0}")]
    BadAnswer(#[source] ProtoError),
    /// Building or signing our own message failed.
    #[error("cannot build the message: {0}")]
    Build(#[source] ProtoError),
    #[error("{0}")]
    Resolve(#[from] ResolveError),
    #[error("the center's grants do not match the request: {0}")]
    GrantMismatch(String),
    #[error("{0}")]
    Key(#[from] KeyError),
}

impl ExchangeError {
    /// Whether trying again later can help (the center unreachable or
    /// temporarily unable), as opposed to a refusal that will repeat.
    pub fn is_transient(&self) -> bool {
        matches!(self, ExchangeError::Refused { status, .. } if *status >= 500 || *status == 429 || *status == 423)
    }
}

/// Why a center command was refused. The state did not change.
#[derive(Debug, Error)]
pub enum CommandError {
    #[error("{0}")]
    Proto(#[from] ProtoError),
    #[error("unknown acceptance number {0}")]
    UnknownRequest(u64),
    #[error("extension terminal {0:?} holds no VPNNAT address")]
    NotGranted(String),
}

impl CommandError {
    pub fn http_status(&self) -> u16 {
        match self {
            CommandError::Proto(p) => p.http_status(),
            CommandError::UnknownRequest(_) | CommandError::NotGranted(_) => 404,
        }
    }
}

/// The center's answer as the HTTP client received it.
#[derive(Debug, Clone)]
pub struct CenterReply {
    pub status: u16,
    /// The four authentication headers, if all were present.
    pub headers: Option<AuthHeaders>,
    pub body: Vec<u8>,
}

impl CenterReply {
    fn verified<C: Command>(
        &self,
        request: &Outgoing,
        key: &vpnnat_proto::keys::MacKey,
    ) -> Result<C::Response, ExchangeError> {
        if self.status != 200 {
            let message: String = String::from_utf8_lossy(&self.body).chars().take(300).collect();
            return Err(ExchangeError::Refused {
                status: self.status,
                message: message.trim().to_string(),
            });
        }
        let headers = self
            .headers
            .as_ref()
            .ok_or_else(|| ExchangeError::BadAnswer(ProtoError::malformed("missing authentication headers")))?;
        decode_response::<C>(request, key, headers, &self.body).map_err(ExchangeError::BadAnswer)
    }
}

/// A message on its way to the center and what opens its answer.
#[derive(Debug)]
pub struct Pending<X> {
    pub outgoing: Outgoing,
    reply_key: Option<ReplyKeyPair>,
    extra: X,
}

/// A maintenance request as a person fills it in (web page, command line,
/// the button's preset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintenanceInput {
    pub claimant_name: ClaimantName,
    pub claimant_level: ClaimantLevel,
    pub urgency: Urgency,
    pub phone: Phone,
    pub content: RequestContent,
    pub terminals: Vec<TerminalName>,
    /// The failing part (health key) when the router asks by itself after a
    /// failure notice, kept on the request's record; `None` for a person.
    pub for_failure: Option<String>,
}

/// The button's preset as a maintenance request (a person's: no failing
/// part).
pub fn preset_input(b: &crate::config::ButtonPreset) -> MaintenanceInput {
    MaintenanceInput {
        claimant_name: b.claimant_name.clone(),
        claimant_level: b.claimant_level,
        urgency: b.urgency,
        phone: b.phone.clone(),
        content: b.content.clone(),
        terminals: b.terminals.clone(),
        for_failure: None,
    }
}

/// What a finished maintenance request gives back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub acceptance_number: AcceptanceNumber,
    /// (name, real, VPNNAT) per granted terminal.
    pub grants: Vec<(TerminalName, Ipv4Addr, Ipv4Addr)>,
    /// When the center ends the request by itself (None: not told).
    pub ends_at: Option<u64>,
    /// The center's idle limit in seconds (None: not told).
    pub idle_timeout_secs: Option<u64>,
}

/// The answer to a center command, and the state to adopt before sending it.
#[derive(Debug)]
pub struct CommandOutcome {
    pub response: Outgoing,
    pub next: RouterState,
    /// What it did, for the log.
    pub summary: String,
    /// The request it concerns, if one (an end; a release or the VPN end
    /// concerns hosts and the tunnel).
    pub acceptance: Option<u64>,
}

/// The static facts the logic needs from the configuration.
#[derive(Debug, Clone)]
pub struct Identity {
    pub terminal_id: TerminalId,
    pub lan: Interface,
    pub wan_address: Ipv4Addr,
    pub router_part_address: Ipv4Addr,
}

impl Identity {
    pub fn from_config(c: &crate::config::Config) -> Self {
        Identity {
            terminal_id: c.terminal_id.clone(),
            lan: c.lan.clone(),
            wan_address: c.wan.address,
            router_part_address: c.router_part_address,
        }
    }
}

fn installation(state: &RouterState) -> Result<&Installation, ExchangeError> {
    state.installation.as_ref().ok_or(ExchangeError::NotInstalled)
}

fn reply_key(rng: &dyn SecureRandom) -> Result<ReplyKeyPair, ExchangeError> {
    ReplyKeyPair::generate(rng).map_err(|e| ExchangeError::Build(e.into()))
}

// ---------------------------------------------------------------------------
// 1. Installation notice
// ---------------------------------------------------------------------------

/// The installation notice. An installed router (`state` holds an
/// installation) proves its current Secret(ID2), without which the center
/// refuses to replace it (or waits for an operator's approval).
pub fn begin_install(
    id: &Identity,
    secret_id: &SecretId,
    state: &RouterState,
    rng: &dyn SecureRandom,
    now: u64,
) -> Result<Pending<()>, ExchangeError> {
    let reply = reply_key(rng)?;
    let reply_key = reply.public_key();
    let proof = state
        .installation
        .as_ref()
        .map(|i| ReinstallProof::compute(&i.secret_id2, &id.terminal_id, &reply_key));
    let req = InstallRequest { reply_key, proof };
    let outgoing =
        encode_request(&req, &id.terminal_id, &secret_id.mac_key(), now, rng).map_err(ExchangeError::Build)?;
    Ok(Pending {
        outgoing,
        reply_key: Some(reply),
        extra: (),
    })
}

/// Opens the installation answer; the next state holds the new secrets and
/// addresses. Grants and requests are kept: a re-installation changes keys,
/// not what the center granted.
pub fn finish_install(
    id: &Identity,
    secret_id: &SecretId,
    state: &RouterState,
    p: Pending<()>,
    reply: &CenterReply,
    rng: &dyn SecureRandom,
) -> Result<RouterState, ExchangeError> {
    let resp = reply.verified::<InstallRequest>(&p.outgoing, &secret_id.mac_key())?;
    let key = p
        .reply_key
        .ok_or_else(|| ExchangeError::Build(ProtoError::malformed("reply key already used")))?;
    let secrets = resp.open(key, &id.terminal_id).map_err(ExchangeError::BadAnswer)?;
    let server = secrets.server_part_vpnnat().get();
    let router = secrets.router_part_vpnnat().get();
    if state.hosts.values().any(|h| h.vpnnat == server || h.vpnnat == router) {
        return Err(ExchangeError::GrantMismatch(
            "the installation addresses collide with a granted host".into(),
        ));
    }
    let mut next = state.clone();
    next.installation = Some(Installation {
        psk: secrets.psk().clone(),
        secret_id2: secrets.secret_id2().clone(),
        // Only the hash is kept (issue 18, item 3): reading the SD card
        // does not open the maintenance page.
        maintenance_password_hash: crate::state::hash_maintenance_password(secrets.maintenance_password(), rng)
            .map_err(|e| ExchangeError::Build(ProtoError::malformed(e.to_string())))?,
        server_part_vpnnat: server,
        router_part_vpnnat: router,
    });
    Ok(next)
}

// ---------------------------------------------------------------------------
// 2. Failure notice
// ---------------------------------------------------------------------------

pub fn begin_failure(
    id: &Identity,
    state: &RouterState,
    code: FailureCode,
    detail: &str,
    rng: &dyn SecureRandom,
    now: u64,
) -> Result<Pending<FailureRecord>, ExchangeError> {
    let inst = installation(state)?;
    // A detail that does not validate is cut down rather than refused: the
    // notice matters more than its wording.
    let clean: String = detail
        .chars()
        .filter(|c| !c.is_control() || matches!(c, '\n' | '\t'))
        .take(vpnnat_proto::types::MAX_DETAIL_CHARS)
        .collect();
    let detail = FailureDetail::new(clean.clone()).map_err(|e| ExchangeError::Build(e.into()))?;
    let notice = FailureNotice { code, detail };
    let outgoing =
        encode_request(&notice, &id.terminal_id, &inst.secret_id2.mac_key(), now, rng).map_err(ExchangeError::Build)?;
    Ok(Pending {
        outgoing,
        reply_key: None,
        extra: FailureRecord {
            code,
            detail: clean,
            at: now,
            reported: true,
        },
    })
}

pub fn finish_failure(
    state: &RouterState,
    p: Pending<FailureRecord>,
    reply: &CenterReply,
) -> Result<RouterState, ExchangeError> {
    let inst = installation(state)?;
    let Ack {} = reply.verified::<FailureNotice>(&p.outgoing, &inst.secret_id2.mac_key())?;
    let mut next = state.clone();
    next.last_failure = Some(p.extra);
    Ok(next)
}

// ---------------------------------------------------------------------------
// 3. VPN gateway address request
// ---------------------------------------------------------------------------

pub fn begin_gateway(
    id: &Identity,
    state: &RouterState,
    rng: &dyn SecureRandom,
    now: u64,
) -> Result<Pending<()>, ExchangeError> {
    begin_gateway_as(id, state, rng, now, InitiationPreference::Auto, None)
}

/// [`begin_gateway`] saying which initiation mode the router wants and
/// what its WAN looks like, so the center can tell whether it sits behind
/// a NAT (issue 17).
pub fn begin_gateway_as(
    id: &Identity,
    state: &RouterState,
    rng: &dyn SecureRandom,
    now: u64,
    initiation: InitiationPreference,
    wan: Option<WanAddress>,
) -> Result<Pending<()>, ExchangeError> {
    let inst = installation(state)?;
    let reply = reply_key(rng)?;
    let req = GatewayAddressRequest {
        reply_key: reply.public_key(),
        initiation,
        wan,
    };
    let outgoing =
        encode_request(&req, &id.terminal_id, &inst.secret_id2.mac_key(), now, rng).map_err(ExchangeError::Build)?;
    Ok(Pending {
        outgoing,
        reply_key: Some(reply),
        extra: (),
    })
}

pub fn finish_gateway(
    id: &Identity,
    state: &RouterState,
    p: Pending<()>,
    reply: &CenterReply,
) -> Result<RouterState, ExchangeError> {
    let inst = installation(state)?;
    let resp = reply.verified::<GatewayAddressRequest>(&p.outgoing, &inst.secret_id2.mac_key())?;
    let key = p
        .reply_key
        .ok_or_else(|| ExchangeError::Build(ProtoError::malformed("reply key already used")))?;
    let info = resp.open(key, &id.terminal_id).map_err(ExchangeError::BadAnswer)?;
    let center_networks = info.center_networks.as_slice().to_vec();
    let mut next = state.clone();
    next.gateway = Some(Gateway {
        ip: info.gateway_ip.get(),
        ike_id: info.gateway_ike_id.to_string(),
        center_networks,
        initiation: info.initiation,
    });
    Ok(next)
}

// ---------------------------------------------------------------------------
// Tunnel lost (beyond the seed)
// ---------------------------------------------------------------------------

/// Whether a starting routerd must send the tunnel-lost notice: it holds a
/// gateway (from exchange 3 until VPN end), so the gateway may hold an IKE
/// SA that this new process knows nothing of.
pub fn tunnel_may_be_lost(state: &RouterState) -> bool {
    state.installation.is_some() && state.gateway.is_some()
}

pub fn begin_tunnel_lost(
    id: &Identity,
    state: &RouterState,
    rng: &dyn SecureRandom,
    now: u64,
) -> Result<Pending<()>, ExchangeError> {
    let inst = installation(state)?;
    let outgoing = encode_request(
        &TunnelLostNotice {},
        &id.terminal_id,
        &inst.secret_id2.mac_key(),
        now,
        rng,
    )
    .map_err(ExchangeError::Build)?;
    Ok(Pending {
        outgoing,
        reply_key: None,
        extra: (),
    })
}

/// What the center did; the router's state does not change (the tunnel
/// comes up through the IKE responder as usual).
pub fn finish_tunnel_lost(
    state: &RouterState,
    p: Pending<()>,
    reply: &CenterReply,
) -> Result<TunnelRebuild, ExchangeError> {
    let inst = installation(state)?;
    let a: TunnelLostAnswer = reply.verified::<TunnelLostNotice>(&p.outgoing, &inst.secret_id2.mac_key())?;
    Ok(a.tunnel)
}

// ---------------------------------------------------------------------------
// 4. Maintenance request
// ---------------------------------------------------------------------------

/// Builds the maintenance request. Every name is resolved first, so that an
/// unknown name is refused before the center allocates anything.
pub fn begin_maintenance<D: DnsLookup>(
    id: &Identity,
    state: &RouterState,
    input: &MaintenanceInput,
    resolver: &Resolver<'_, D>,
    rng: &dyn SecureRandom,
    now: u64,
) -> Result<Pending<MaintenanceInput>, ExchangeError> {
    let inst = installation(state)?;
    if state.gateway.is_none() {
        return Err(ExchangeError::NoGateway);
    }
    for name in &input.terminals {
        resolver.resolve(name)?;
    }
    let names = TerminalNames::new(input.terminals.clone()).map_err(|e| ExchangeError::Build(e.into()))?;
    let details = MaintenanceDetails {
        claimant_name: input.claimant_name.clone(),
        terminal_names: names,
        phone: input.phone.clone(),
        content: input.content.clone(),
    };
    let reply = reply_key(rng)?;
    let req = MaintenanceRequest::new(
        rng,
        &inst.secret_id2,
        &id.terminal_id,
        reply.public_key(),
        input.claimant_level,
        input.urgency,
        &details,
    )
    .map_err(ExchangeError::Build)?;
    let outgoing =
        encode_request(&req, &id.terminal_id, &inst.secret_id2.mac_key(), now, rng).map_err(ExchangeError::Build)?;
    Ok(Pending {
        outgoing,
        reply_key: Some(reply),
        extra: input.clone(),
    })
}

/// Opens the grants, resolves each name and returns the state with all of
/// them installed in the host table, or an error and nothing installed.
pub fn finish_maintenance<D: DnsLookup>(
    id: &Identity,
    state: &RouterState,
    p: Pending<MaintenanceInput>,
    reply: &CenterReply,
    resolver: &Resolver<'_, D>,
    now: u64,
) -> Result<(RouterState, Accepted), ExchangeError> {
    let inst = installation(state)?;
    let resp = reply.verified::<MaintenanceRequest>(&p.outgoing, &inst.secret_id2.mac_key())?;
    let key = p
        .reply_key
        .ok_or_else(|| ExchangeError::Build(ProtoError::malformed("reply key already used")))?;
    let grants = resp.open(key, &id.terminal_id).map_err(ExchangeError::BadAnswer)?;
    let n = resp.acceptance_number;
    let asked: BTreeSet<&TerminalName> = p.extra.terminals.iter().collect();
    let got: BTreeSet<&TerminalName> = grants.as_slice().iter().map(|g| &g.terminal_name).collect();
    if asked != got {
        return Err(ExchangeError::GrantMismatch(
            "the granted names differ from the requested ones".into(),
        ));
    }
    if state.requests.contains_key(&n.get()) {
        return Err(ExchangeError::GrantMismatch(format!(
            "acceptance number {n} is already in use"
        )));
    }
    let mut next = state.clone();
    let mut out = Vec::new();
    let own = [inst.server_part_vpnnat, inst.router_part_vpnnat];
    let own_real = [id.lan.address, id.router_part_address];
    for g in grants.as_slice() {
        let (real, _) = resolver.resolve(&g.terminal_name)?;
        let vpnnat = g.vpnnat_addr.get();
        // The router itself (issue 19, item 2; [0078], [0228]): its parts
        // are mapped since the installation, under the addresses it
        // granted. The request adds no address and no NAT row, so nothing
        // of it is released at its end (the center's judgment 2); an
        // answer with another address for them is a center in error.
        if let Some(installed) = own_part_vpnnat(inst, g.terminal_name.as_str()) {
            if vpnnat != installed {
                return Err(ExchangeError::GrantMismatch(format!(
                    "{} was granted {vpnnat}, but its installation address is {installed}",
                    g.terminal_name
                )));
            }
            out.push((g.terminal_name.clone(), real, vpnnat));
            continue;
        }
        if own.contains(&vpnnat) || own_real.contains(&real) {
            return Err(ExchangeError::GrantMismatch(format!(
                "{} collides with the router's own addresses",
                g.terminal_name
            )));
        }
        // The NAT maps are 1:1 both ways: another terminal must hold neither
        // this VPNNAT address nor this real address.
        if let Some((other, _)) = next
            .hosts
            .iter()
            .find(|(name, h)| **name != g.terminal_name && (h.vpnnat == vpnnat || h.real == real))
        {
            return Err(ExchangeError::GrantMismatch(format!(
                "{} ({real} / {vpnnat}) collides with the grant of {other}",
                g.terminal_name
            )));
        }
        let entry = next.hosts.entry(g.terminal_name.clone()).or_insert_with(|| HostGrant {
            real,
            vpnnat,
            requests: BTreeSet::new(),
        });
        // The center reuses a terminal's address while it is granted; if it
        // handed out another one, the newest grant is the truth.
        entry.real = real;
        entry.vpnnat = vpnnat;
        entry.requests.insert(n.get());
        out.push((g.terminal_name.clone(), real, vpnnat));
    }
    next.requests.insert(
        n.get(),
        RequestRecord {
            claimant_name: p.extra.claimant_name.to_string(),
            claimant_level: p.extra.claimant_level,
            urgency: p.extra.urgency,
            terminals: p.extra.terminals.clone(),
            accepted_at: now,
            state: RequestState::Waiting,
            failure: p.extra.for_failure.clone(),
            ends_at: resp.ends_at,
            idle_timeout_secs: resp.idle_timeout_secs,
            end_unsent: false,
        },
    );
    Ok((
        next,
        Accepted {
            acceptance_number: n,
            grants: out,
            ends_at: resp.ends_at,
            idle_timeout_secs: resp.idle_timeout_secs,
        },
    ))
}

/// The installation's VPNNAT address of the router's own part `name`
/// ([`vpnnat_proto::types::SERVER_PART_NAME`] or `ROUTER_PART_NAME`), or
/// None for any other name.
pub fn own_part_vpnnat(inst: &Installation, name: &str) -> Option<Ipv4Addr> {
    match name {
        vpnnat_proto::types::SERVER_PART_NAME => Some(inst.server_part_vpnnat),
        vpnnat_proto::types::ROUTER_PART_NAME => Some(inst.router_part_vpnnat),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// 6-8. Commands from the center
// ---------------------------------------------------------------------------

/// A center command as it arrived: path, authentication headers, body.
#[derive(Debug, Clone, Copy)]
pub struct IncomingCommand<'a> {
    pub path: &'a str,
    pub headers: &'a AuthHeaders,
    pub body: &'a [u8],
}

impl<'a> IncomingCommand<'a> {
    /// What a center built with [`encode_request`] (tests, tools).
    pub fn from_outgoing(o: &'a Outgoing) -> Self {
        IncomingCommand {
            path: o.path,
            headers: &o.headers,
            body: &o.body,
        }
    }
}

/// Verifies and executes one center command (end, release, VPN end) that
/// arrived on `path`. On error nothing changed (the nonce store records only
/// fully verified messages).
pub fn handle_center_command<S: NonceStore>(
    id: &Identity,
    state: &RouterState,
    guard: &mut ReplayGuard<S>,
    cmd: IncomingCommand<'_>,
    now: u64,
    rng: &dyn SecureRandom,
) -> Result<CommandOutcome, CommandError> {
    let IncomingCommand { path, headers, body } = cmd;
    use vpnnat_proto::paths::router as p;
    // Without an installation there is no Secret(ID2): every command is
    // from an unknown terminal as far as we can tell.
    let key_for = |t: &TerminalId, _| {
        let inst = state.installation.as_ref()?;
        (t == &id.terminal_id).then(|| inst.secret_id2.mac_key())
    };
    let mac_key = || {
        state
            .installation
            .as_ref()
            .map(|i| i.secret_id2.mac_key())
            .ok_or(CommandError::Proto(ProtoError::UnknownTerminal))
    };
    match path {
        p::END => {
            let v = decode_request::<EndCommand, _, _>(guard, path, headers, body, now, key_for)?;
            let n = v.command().acceptance_number.get();
            let mut next = state.clone();
            let r = next.requests.get_mut(&n).ok_or(CommandError::UnknownRequest(n))?;
            r.state = RequestState::Ended;
            prune_ended(&mut next);
            let response = encode_response(&v, &Ack {}, &mac_key()?, now, rng)?;
            Ok(CommandOutcome {
                response,
                next,
                summary: "maintenance request ended".into(),
                acceptance: Some(n),
            })
        }
        p::RELEASE => {
            let v = decode_request::<ReleaseCommand, _, _>(guard, path, headers, body, now, key_for)?;
            let name = &v.command().terminal_name;
            let mut next = state.clone();
            let summary = match next.hosts.remove(name) {
                Some(h) => format!("released {name} ({} <-> {})", h.vpnnat, h.real),
                // Issue 19, item 7: the site owner's end removed it here
                // already; the center's release of it is acknowledged.
                None if site_end::released_by_site_end(state, name) => {
                    format!("released {name} (already, by the site owner's end)")
                }
                None => return Err(CommandError::NotGranted(name.to_string())),
            };
            let response = encode_response(&v, &Ack {}, &mac_key()?, now, rng)?;
            Ok(CommandOutcome {
                response,
                next,
                summary,
                acceptance: None,
            })
        }
        p::VPN_END => {
            let v = decode_request::<VpnEndCommand, _, _>(guard, path, headers, body, now, key_for)?;
            let mut next = state.clone();
            let released = next.hosts.len();
            next.hosts.clear();
            for r in next.requests.values_mut() {
                r.state = RequestState::Ended;
            }
            // The center frees our gateway slot: the next request asks anew.
            next.gateway = None;
            prune_ended(&mut next);
            let response = encode_response(&v, &Ack {}, &mac_key()?, now, rng)?;
            Ok(CommandOutcome {
                response,
                next,
                summary: format!("VPN end: released {released} terminal(s)"),
                acceptance: None,
            })
        }
        other => Err(CommandError::Proto(ProtoError::UnknownPath {
            path: other.chars().take(64).collect(),
        })),
    }
}

// ---------------------------------------------------------------------------
// State -> datapath and IKE
// ---------------------------------------------------------------------------

/// The proto crate's CIDR (validated on the wire) as the datapath's. Both
/// enforce the same rules, so the conversion cannot fail in practice.
pub fn to_datapath_cidr(c: &vpnnat_proto::types::Ipv4Cidr) -> Option<Ipv4Cidr> {
    Ipv4Cidr::new(c.addr(), c.prefix_len()).ok()
}

/// Every 1:1 mapping the state grants: the server part and router part
/// (from installation) and each host of the host table.
pub fn mappings(id: &Identity, state: &RouterState) -> BTreeSet<Mapping> {
    let mut out = BTreeSet::new();
    if let Some(i) = &state.installation {
        out.insert(Mapping {
            vpnnat: i.server_part_vpnnat,
            real: id.lan.address,
        });
        out.insert(Mapping {
            vpnnat: i.router_part_vpnnat,
            real: id.router_part_address,
        });
    }
    for h in state.hosts.values() {
        out.insert(Mapping {
            vpnnat: h.vpnnat,
            real: h.real,
        });
    }
    out
}

/// The state a restart settles to after a crash cut a center exchange
/// short: the center ends a request with "end", then releases each host
/// (judgment 1: no open request names it) and ends the VPN (judgment 3: no
/// open request). A crash after "end" was saved but before the release or
/// VPN end arrived would keep those hosts mapped and the gateway
/// configured, although the center, which does not retry through a tunnel
/// it has ended, has freed them. The router applies the same two judgments
/// to its own requests. Also covers a crash between the gateway address
/// (exchange 3) and the maintenance request: the next request asks for the
/// gateway again (the center gives back the slot it holds for us).
/// Returns None when there is nothing to settle.
pub fn settle(state: &RouterState) -> Option<RouterState> {
    let open: Vec<&TerminalName> = state
        .requests
        .values()
        .filter(|r| r.state == RequestState::Waiting)
        .flat_map(|r| r.terminals.iter())
        .collect();
    let mut next = state.clone();
    next.hosts.retain(|name, _| open.contains(&name));
    if !state.requests.values().any(|r| r.state == RequestState::Waiting) {
        next.gateway = None;
    }
    // RouterState holds secrets and has no PartialEq; only these two change.
    let changed = next.hosts != state.hosts || next.gateway != state.gateway;
    changed.then_some(next)
}

/// The kernel state the router wants: its NAT table (always, so the tunnel
/// reaches nothing before installation), and with a gateway the tunnel
/// policies per granted VPNNAT /32 and center network. `sas` are the SAs the
/// IKE driver installed (kept as they are).
pub fn desired_state(id: &Identity, state: &RouterState, sas: Vec<SaSpec>) -> DesiredState {
    let maps = mappings(id, state);
    let center: BTreeSet<Ipv4Cidr> = state
        .gateway
        .iter()
        .flat_map(|g| g.center_networks.iter().filter_map(to_datapath_cidr))
        .collect();
    let mut policies = Vec::new();
    if let (Some(_), Some(gw)) = (&state.installation, &state.gateway) {
        for m in &maps {
            let host = Ipv4Cidr::host(m.vpnnat);
            for net in &center {
                policies.extend(tunnel_policies(
                    host,
                    *net,
                    id.wan_address,
                    gw.ip,
                    POLICY_PRIORITY,
                    TUNNEL_REQID,
                ));
            }
        }
    }
    DesiredState {
        sas,
        policies,
        nat: Some(NatDesired { center, mappings: maps }),
        keep_sas: BTreeSet::new(),
    }
}

/// The kernel state a successful apply of `d` left behind, as if observed:
/// the base for planning the next change without reading the kernel back
/// (each read spawns `nft`). SAs are taken as present whatever they are:
/// the IKE driver installs them, and only a full reconcile judges them.
pub fn assumed_observed(d: &DesiredState, sas: &[SaSpec]) -> ObservedState {
    ObservedState {
        sas: sas
            .iter()
            .map(|s| ObservedSa {
                id: s.id(),
                src: s.src,
                reqid: s.reqid,
                encap: s.encap,
                counters: SaCounters::default(),
            })
            .collect(),
        policies: d.policies.clone(),
        nat: d.nat.as_ref().map(|n| NatObserved {
            center: n.center.clone(),
            mappings: n.mappings.clone(),
            consistent: true,
        }),
    }
}

/// The IKE responder's settings, or `None` (accept nobody) before
/// installation or without a gateway.
pub fn ike_settings(id: &Identity, state: &RouterState) -> Option<ResponderSettings> {
    let inst = state.installation.as_ref()?;
    let gw = state.gateway.as_ref()?;
    Some(ResponderSettings {
        local: id.wan_address,
        peer: gw.ip,
        peer_id: gw.ike_id.clone(),
        psk: inst.psk.clone(),
        local_ts: mappings(id, state).iter().map(|m| Ipv4Cidr::host(m.vpnnat)).collect(),
        remote_ts: gw.center_networks.iter().filter_map(to_datapath_cidr).collect(),
        reqid: TUNNEL_REQID,
        terminal_id: id.terminal_id.to_string(),
        dial_out: gw.initiation == vpnnat_proto::initiation::InitiationMode::Router,
    })
}

/// Names of the hosts with a grant, with (real, VPNNAT), for display.
pub fn host_table(state: &RouterState) -> BTreeMap<String, (Ipv4Addr, Ipv4Addr)> {
    state
        .hosts
        .iter()
        .map(|(n, h)| (n.to_string(), (h.real, h.vpnnat)))
        .collect()
}

pub mod failure_request;
pub mod request_states;
pub mod site_end;
#[cfg(test)]
mod tests;
