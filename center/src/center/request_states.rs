//! Request states (issue 19, item 1): a router asks which of its open
//! requests the center has ended meanwhile. The center's end reaches a
//! router as commands through the tunnel; when that tunnel is down at the
//! time (a gateway outage, the router offline), the router would keep the
//! request, its NAT rows and its gateway for good. Read-only: nothing is
//! stored or audited.

use vpnnat_proto::auth::AuthHeaders;
use vpnnat_proto::keys::SecretBytes;
use vpnnat_proto::messages::{RequestStatesAnswer, RequestStatesQuery};
use vpnnat_proto::types::{AcceptanceNumber, BoundedSet};
use vpnnat_proto::Outgoing;

use crate::storage::RequestState;

use super::{Center, CenterError, GatewayCommands, RouterCommands};

/// Of the numbers router `tid` holds open, those that are not open
/// requests of `tid` here: ended, unknown, or another router's (the last
/// two read the same, so a router learns nothing of others' requests).
/// `lookup` gives a number's holder and state.
pub fn ended_of<'a>(
    tid: &str,
    asked: impl IntoIterator<Item = &'a AcceptanceNumber>,
    mut lookup: impl FnMut(u64) -> Result<Option<(String, RequestState)>, CenterError>,
) -> Result<Vec<AcceptanceNumber>, CenterError> {
    let mut ended = Vec::new();
    for n in asked {
        let open_here =
            matches!(lookup(n.get())?, Some((holder, state)) if holder == tid && state != RequestState::Ended);
        if !open_here {
            ended.push(*n);
        }
    }
    Ok(ended)
}

impl<G: GatewayCommands, R: RouterCommands> Center<G, R> {
    /// Answers a router's [`RequestStatesQuery`] with the asked requests
    /// that are no longer open for it. Read under the router's own lock,
    /// which an end holds from before its commands to the router until
    /// after them: a request whose end is still telling the router (end,
    /// release, VPN end through the tunnel) is not reported ended before
    /// those commands went, so the router does not tear its tunnel down
    /// under them.
    pub async fn request_states(
        &self,
        path: &str,
        headers: &AuthHeaders,
        body: &[u8],
        now: u64,
    ) -> Result<Outgoing, CenterError> {
        let (v, _row, sid2) = self.verify_router::<RequestStatesQuery>(path, headers, body, now)?;
        let tid = v.principal().clone();
        let _serial = self.lock_terminal(tid.as_str()).await;
        let reads = self.reads()?;
        let ended = ended_of(tid.as_str(), v.command().open.iter(), |n| {
            Ok(reads.request(n)?.map(|r| (r.terminal_id, r.state)))
        })?;
        if !ended.is_empty() {
            let list: Vec<String> = ended.iter().map(|n| n.to_string()).collect();
            log::info!(
                "{} request states: the router still held {} open; told it they are ended",
                crate::logging::kv(&tid, None),
                list.join(", ")
            );
        }
        // `ended` is a subset of the asked set: distinct and within bounds.
        let ended = BoundedSet::new(ended).map_err(|e| CenterError::Proto(e.into()))?;
        self.answer(&v, &RequestStatesAnswer { ended }, &sid2.mac_key(), now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(v: u64) -> AcceptanceNumber {
        AcceptanceNumber::new(v).unwrap()
    }

    #[test]
    fn only_this_routers_open_requests_stay_open() {
        let table = |k: u64| match k {
            1 => Some(("home-1".to_string(), RequestState::Waiting)),
            2 => Some(("home-1".to_string(), RequestState::Ended)),
            3 => Some(("home-2".to_string(), RequestState::Waiting)),
            4 => Some(("home-1".to_string(), RequestState::InProgress)),
            _ => None,
        };
        let asked = [n(1), n(2), n(3), n(4), n(5)];
        let ended = ended_of("home-1", asked.iter(), |k| Ok(table(k))).unwrap();
        assert_eq!(ended, vec![n(2), n(3), n(5)]);
        // the other router's view of the same table
        let ended = ended_of("home-2", asked.iter(), |k| Ok(table(k))).unwrap();
        assert_eq!(ended, vec![n(1), n(2), n(4), n(5)]);
    }

    #[test]
    fn a_storage_error_is_passed_on() {
        let r = ended_of("home-1", [n(1)].iter(), |_| Err(CenterError::Poisoned));
        assert!(r.is_err());
    }
}
