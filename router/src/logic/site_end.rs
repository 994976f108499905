//! Site end (issue 19, item 7): the site owner ends one of this router's
//! requests here (LAN page, `routerd end N`). The end goes to the center,
//! which ends it as for an operator's end; the router does not wait for
//! that to stop mapping: the request's hosts that no other open request
//! names lose their NAT rows at once ([`end_locally`]), and the request
//! is flagged until the center acknowledges the end ([`unsent_ends`]),
//! which the daemon retries on later exchanges.

use ring::rand::SecureRandom;
use thiserror::Error;
use vpnnat_proto::encode_request;
use vpnnat_proto::keys::SecretBytes;
use vpnnat_proto::messages::{SiteEndAnswer, SiteEndOutcome, SiteEndRequest};
use vpnnat_proto::types::{AcceptanceNumber, TerminalName};

use super::{installation, CenterReply, ExchangeError, Identity, Pending};
use crate::state::{RequestState, RouterState};

/// Why the site owner's end was refused here. Nothing changed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LocalEndError {
    #[error("request {0} is not one of this router's requests")]
    Unknown(u64),
    #[error("request {0} is ended already")]
    NotOpen(u64),
}

impl LocalEndError {
    pub fn http_status(&self) -> u16 {
        match self {
            LocalEndError::Unknown(_) => 404,
            LocalEndError::NotOpen(_) => 409,
        }
    }
}

/// The state after the site owner ends request `n` here, and the hosts it
/// stops mapping: the request is ended and flagged for the center, and
/// every host it named that no other open request names leaves the host
/// table (its NAT row goes with the next datapath sync). A host that
/// another waiting request still names stays (the center's judgment 1).
/// The gateway stays: the center's VPN end closes the tunnel (it carries
/// the center's commands of this very end).
pub fn end_locally(state: &RouterState, n: u64) -> Result<(RouterState, Vec<TerminalName>), LocalEndError> {
    let r = state.requests.get(&n).ok_or(LocalEndError::Unknown(n))?;
    if r.state != RequestState::Waiting {
        return Err(LocalEndError::NotOpen(n));
    }
    let mut next = state.clone();
    if let Some(r) = next.requests.get_mut(&n) {
        r.state = RequestState::Ended;
        r.end_unsent = true;
    }
    let still_named = |name: &TerminalName| {
        next.requests
            .values()
            .any(|o| o.state == RequestState::Waiting && o.terminals.contains(name))
    };
    let gone: Vec<TerminalName> = next
        .hosts
        .iter()
        .filter(|(name, h)| (h.requests.contains(&n) || r.terminals.contains(name)) && !still_named(name))
        .map(|(name, _)| name.clone())
        .collect();
    for name in &gone {
        next.hosts.remove(name);
    }
    Ok((next, gone))
}

/// The requests whose site end the center has not acknowledged yet.
pub fn unsent_ends(state: &RouterState) -> Vec<u64> {
    state
        .requests
        .iter()
        .filter(|(_, r)| r.end_unsent)
        .map(|(n, _)| *n)
        .collect()
}

/// Whether the center's release of `name`, which the host table no longer
/// holds, is one this router already did by itself: a site end not yet
/// acknowledged named it. Such a release is acknowledged, not refused.
pub fn released_by_site_end(state: &RouterState, name: &TerminalName) -> bool {
    !state.hosts.contains_key(name)
        && state
            .requests
            .values()
            .any(|r| r.end_unsent && r.terminals.contains(name))
}

/// The state with request `n`'s site end no longer due (acknowledged, or
/// refused for good).
pub fn end_sent(state: &RouterState, n: u64) -> RouterState {
    let mut next = state.clone();
    if let Some(r) = next.requests.get_mut(&n) {
        r.end_unsent = false;
    }
    next
}

/// Whether a failed site end is refused for good (the center says the
/// request is not ours or does not exist): sending it again cannot help.
/// Anything else (unreachable, failing, an answer that did not verify)
/// is tried again later.
pub fn refused_for_good(e: &ExchangeError) -> bool {
    matches!(e, ExchangeError::Refused { status: 403 | 404, .. })
}

/// The site-end message for request `n`.
pub fn begin_site_end(
    id: &Identity,
    state: &RouterState,
    n: u64,
    rng: &dyn SecureRandom,
    now: u64,
) -> Result<Pending<u64>, ExchangeError> {
    let inst = installation(state)?;
    let acceptance_number = AcceptanceNumber::new(n).map_err(|e| ExchangeError::Build(e.into()))?;
    let outgoing = encode_request(
        &SiteEndRequest { acceptance_number },
        &id.terminal_id,
        &inst.secret_id2.mac_key(),
        now,
        rng,
    )
    .map_err(ExchangeError::Build)?;
    Ok(Pending {
        outgoing,
        reply_key: None,
        extra: n,
    })
}

/// The center's answer: the next state (the end no longer due) and what
/// the center did.
pub fn finish_site_end(
    state: &RouterState,
    p: Pending<u64>,
    reply: &CenterReply,
) -> Result<(RouterState, SiteEndOutcome), ExchangeError> {
    let inst = installation(state)?;
    let a: SiteEndAnswer = reply.verified::<SiteEndRequest>(&p.outgoing, &inst.secret_id2.mac_key())?;
    Ok((end_sent(state, p.extra), a.outcome))
}
