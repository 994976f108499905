//! Site end (issue 19, item 7): the site owner ends one of its router's
//! requests from the router (LAN page, `routerd end N`).

use std::net::Ipv4Addr;

use vpnnat_proto::auth::AuthHeaders;
use vpnnat_proto::keys::SecretBytes;
use vpnnat_proto::messages::{SiteEndAnswer, SiteEndOutcome, SiteEndRequest};
use vpnnat_proto::Outgoing;

use crate::storage::{RequestState, StorageError};

use super::{Actor, Center, CenterError, GatewayCommands, RouterCommands};

/// Whether request `number`, held by `holder` in state `state` (None: no
/// such request), may be ended by router `tid`, and how: `Ok(true)` end
/// it now, `Ok(false)` it is ended already, `Err` not this router's (an
/// unknown number reads the same, so a router learns nothing of other
/// routers' requests).
pub fn site_end_decision(tid: &str, number: u64, request: Option<(&str, RequestState)>) -> Result<bool, CenterError> {
    match request {
        Some((holder, state)) if holder == tid => Ok(state != RequestState::Ended),
        _ => Err(CenterError::NotThisRoutersRequest { number }),
    }
}

impl<G: GatewayCommands, R: RouterCommands> Center<G, R> {
    /// A router's site end: request `acceptance_number` of *this* router
    /// ends through the operator's path ([`Center::end_by`]: end command,
    /// judgments, releases, VPN end) under the actor `router:<terminal
    /// id>` with `peer`, so the audit log and the UI say who ended it. A
    /// request of another router (or no such request) is refused, and
    /// nothing changes; one that is ended already answers so (the router
    /// repeats its request until it has an answer).
    pub async fn site_end(
        &self,
        path: &str,
        headers: &AuthHeaders,
        body: &[u8],
        now: u64,
        peer: Option<Ipv4Addr>,
    ) -> Result<Outgoing, CenterError> {
        let (v, _row, sid2) = self.verify_router::<SiteEndRequest>(path, headers, body, now)?;
        let tid = v.principal().clone();
        let number = v.command().acceptance_number.get();
        let current = self.reads()?.request(number)?;
        let due = match site_end_decision(
            tid.as_str(),
            number,
            current.as_ref().map(|r| (r.terminal_id.as_str(), r.state)),
        ) {
            Ok(due) => due,
            Err(e) => {
                log::warn!("terminal={tid} site end of request {number} refused: not this router's request");
                return Err(e);
            }
        };
        let outcome = if due {
            let actor = Actor::router(tid.as_str(), peer);
            match self.end_by(number, now, &actor).await {
                Ok(_) => SiteEndOutcome::Ended,
                // An operator's end or the time limit came first.
                Err(CenterError::Storage(StorageError::BadTransition { .. })) => SiteEndOutcome::AlreadyEnded,
                Err(e) => return Err(e),
            }
        } else {
            SiteEndOutcome::AlreadyEnded
        };
        log::info!(
            "{} site end by the router: {}",
            crate::logging::kv(&tid, Some(number)),
            match outcome {
                SiteEndOutcome::Ended => "ended",
                SiteEndOutcome::AlreadyEnded => "was ended already",
            }
        );
        self.answer(&v, &SiteEndAnswer { outcome }, &sid2.mac_key(), now)
    }
}
