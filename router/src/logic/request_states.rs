//! Request states (issue 19, item 1): the router asks the center which of
//! its open requests the center has ended meanwhile. The center's end
//! reaches the router as commands through the tunnel (end, release, VPN
//! end); when the tunnel is down at that moment (a gateway outage, the
//! router offline), the router would keep the request waiting, its NAT
//! rows and its gateway for good, its LAN page would say "waiting", and
//! failure-triggered requests for the same part would stay suppressed.
//! The daemon asks on each health-watch tick while any request waits;
//! the answer ends those requests here as the center's commands would
//! have (the same judgments: [`super::settle`]).

use ring::rand::SecureRandom;
use vpnnat_proto::encode_request;
use vpnnat_proto::keys::SecretBytes;
use vpnnat_proto::messages::{RequestStatesAnswer, RequestStatesQuery, MAX_REQUEST_STATES};
use vpnnat_proto::types::{AcceptanceNumber, BoundedSet};

use super::{installation, prune_ended, settle, CenterReply, ExchangeError, Identity, Pending};
use crate::state::{RequestState, RouterState};

/// The requests the router holds open (the lowest numbers first, at most
/// [`MAX_REQUEST_STATES`]; the center caps a router's open requests far
/// lower).
pub fn open_requests(state: &RouterState) -> Vec<u64> {
    state
        .requests
        .iter()
        .filter(|(_, r)| r.state == RequestState::Waiting)
        .map(|(n, _)| *n)
        .take(MAX_REQUEST_STATES)
        .collect()
}

/// The query for the open requests, or None when none is open.
pub fn begin_request_states(
    id: &Identity,
    state: &RouterState,
    rng: &dyn SecureRandom,
    now: u64,
) -> Result<Option<Pending<()>>, ExchangeError> {
    let open = open_requests(state);
    if open.is_empty() {
        return Ok(None);
    }
    let inst = installation(state)?;
    let numbers = open
        .into_iter()
        .map(AcceptanceNumber::new)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ExchangeError::Build(e.into()))?;
    let open = BoundedSet::new(numbers).map_err(|e| ExchangeError::Build(e.into()))?;
    let outgoing = encode_request(
        &RequestStatesQuery { open },
        &id.terminal_id,
        &inst.secret_id2.mac_key(),
        now,
        rng,
    )
    .map_err(ExchangeError::Build)?;
    Ok(Some(Pending {
        outgoing,
        reply_key: None,
        extra: (),
    }))
}

/// The center's answer, verified: the next state (None when nothing
/// changes) and the requests that ended here by it.
pub fn finish_request_states(
    state: &RouterState,
    p: Pending<()>,
    reply: &CenterReply,
) -> Result<(Option<RouterState>, Vec<u64>), ExchangeError> {
    let inst = installation(state)?;
    let a: RequestStatesAnswer = reply.verified::<RequestStatesQuery>(&p.outgoing, &inst.secret_id2.mac_key())?;
    Ok(apply_ended(state, a.ended.iter().map(|n| n.get())))
}

/// Ends here the requests the center says it has ended (numbers not
/// waiting here are ignored: an answer never ends what the router did not
/// ask about), then applies the center's judgments to the rest: hosts no
/// waiting request names lose their NAT rows, and with no request left
/// waiting the gateway goes (the next request asks for one anew).
pub fn apply_ended(state: &RouterState, ended: impl IntoIterator<Item = u64>) -> (Option<RouterState>, Vec<u64>) {
    let mut next = state.clone();
    let mut done = Vec::new();
    for n in ended {
        if let Some(r) = next.requests.get_mut(&n) {
            if r.state == RequestState::Waiting {
                r.state = RequestState::Ended;
                done.push(n);
            }
        }
    }
    if done.is_empty() {
        return (None, done);
    }
    prune_ended(&mut next);
    let next = settle(&next).unwrap_or(next);
    (Some(next), done)
}
