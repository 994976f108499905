//! What the router asks for after a failure notice (seed [0137], claim 9:
//! once the center answered the notice, the router "shifts to a demand of
//! remote maintenance", with the claimant data "registered a priori",
//! [0140]), as a pure decision: the failing part, the configuration and
//! the state in, "ask with this input" or "an open request already covers
//! this part" out.
//!
//! The preset: with `[button]` configured, a failure asks with the
//! button's claimant data (the site owner chose them for an unattended
//! request, the seed's one table of preset data). Without it, with
//! [`default_preset`]: claimant [`DEFAULT_CLAIMANT`], level administrator.
//! Either way the terminals are the router itself, never the button's LAN
//! hosts (issue 19, item 2): every part the watch names
//! ([`crate::health`]: `wan`, `center`, `ike`, `datapath`, `helper:NAME`)
//! is a part of the router, none a LAN host, so the request names the
//! router's own server part and router part ([`router_itself`]), which
//! the operator reaches at their installation addresses and which the
//! request's end never releases.
//!
//! Suppression: a failure asks for nothing while a request made for the
//! *same* part is open (the router's states: `waiting` until the center's
//! end command or VPN end), and asks again once that request ended. A
//! request for another part, or a person's request, suppresses nothing.

use vpnnat_proto::types::{
    ClaimantLevel, ClaimantName, Phone, RequestContent, TerminalName, Urgency, ValidationError, MAX_CONTENT_CHARS,
    ROUTER_PART_NAME, SERVER_PART_NAME,
};

use crate::config::ButtonPreset;
use crate::health::Problem;
use crate::state::{RequestState, RouterState};

use super::{preset_input, Identity, MaintenanceInput};

/// The claimant of a request the router makes by itself without `[button]`.
pub const DEFAULT_CLAIMANT: &str = "router";
/// The phone of that request. The protocol requires one and no person
/// stands behind the request; all zeros is plainly no number to call (the
/// content says who asked).
pub const DEFAULT_PHONE: &str = "(000) 000-0000";
/// Its urgency: the router's own part is broken, which may cut every
/// maintenance of this site; not an emergency the router could judge.
pub const DEFAULT_URGENCY: Urgency = Urgency::High;

/// The decision after a failure notice the center took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureRequest {
    /// Ask for maintenance with this input (`for_failure` names the part).
    Request(MaintenanceInput),
    /// The open request with this acceptance number was made for the same
    /// part: the operator is already asked to look at it.
    Suppressed { acceptance: u64 },
}

/// The maintenance request that follows the failure notice for `failure`.
/// An error only if the default preset did not validate, which its
/// constants and the cleaning of the text rule out.
pub fn failure_request(
    id: &Identity,
    button: Option<&ButtonPreset>,
    state: &RouterState,
    failure: &Problem,
) -> Result<FailureRequest, ValidationError> {
    if let Some(acceptance) = open_request_for(state, &failure.key) {
        return Ok(FailureRequest::Suppressed { acceptance });
    }
    let mut input = match button {
        Some(b) => preset_input(b),
        None => default_preset(id, failure)?,
    };
    input.terminals = router_itself()?;
    input.for_failure = Some(failure.key.clone());
    Ok(FailureRequest::Request(input))
}

/// The open request made for the failing part `key`, if one.
pub fn open_request_for(state: &RouterState, key: &str) -> Option<u64> {
    state
        .requests
        .iter()
        .find(|(_, r)| r.state == RequestState::Waiting && r.failure.as_deref() == Some(key))
        .map(|(n, _)| *n)
}

/// The built-in preset for a failure when `[button]` is absent.
pub fn default_preset(id: &Identity, failure: &Problem) -> Result<MaintenanceInput, ValidationError> {
    let text = format!(
        "Automatic request of router {} after a failure notice: its part {:?} failed ({:?}): {}",
        id.terminal_id, failure.key, failure.code, failure.detail
    );
    // The detail is the watch's own text, but is cleaned and cut as the
    // notice's is: the request matters more than its wording.
    let clean: String = text
        .chars()
        .filter(|c| !c.is_control() || matches!(c, '\n' | '\t'))
        .take(MAX_CONTENT_CHARS)
        .collect();
    Ok(MaintenanceInput {
        claimant_name: ClaimantName::new(DEFAULT_CLAIMANT)?,
        claimant_level: ClaimantLevel::Administrator,
        urgency: DEFAULT_URGENCY,
        phone: Phone::new(DEFAULT_PHONE)?,
        content: RequestContent::new(clean)?,
        terminals: router_itself()?,
        for_failure: None,
    })
}

/// The router itself as extension terminals: its server part and its
/// router part, by the names router and center give them.
pub fn router_itself() -> Result<Vec<TerminalName>, ValidationError> {
    Ok(vec![
        TerminalName::new(SERVER_PART_NAME)?,
        TerminalName::new(ROUTER_PART_NAME)?,
    ])
}

#[cfg(test)]
mod tests {
    use vpnnat_proto::types::{ClaimantLevel, FailureCode, TerminalName, Urgency, MAX_CONTENT_CHARS};

    use super::*;
    use crate::config::tests::sample_config;
    use crate::state::RequestRecord;

    fn id() -> Identity {
        Identity::from_config(&sample_config())
    }

    fn problem(key: &str, code: FailureCode) -> Problem {
        Problem {
            key: key.into(),
            code,
            detail: format!("{key} broken"),
        }
    }

    /// A state holding `requests`: (acceptance number, failing part, state).
    fn state(requests: &[(u64, Option<&str>, RequestState)]) -> RouterState {
        let mut s = crate::state::tests::installed();
        for (n, part, st) in requests {
            s.requests.insert(
                *n,
                RequestRecord {
                    claimant_name: "router".into(),
                    claimant_level: ClaimantLevel::Administrator,
                    urgency: Urgency::High,
                    terminals: router_itself().unwrap(),
                    accepted_at: 1,
                    state: *st,
                    failure: part.map(String::from),
                    ends_at: None,
                    idle_timeout_secs: None,
                    end_unsent: false,
                },
            );
        }
        s
    }

    fn asked(d: Result<FailureRequest, ValidationError>) -> MaintenanceInput {
        match d.unwrap() {
            FailureRequest::Request(i) => i,
            other => panic!("expected a request, got {other:?}"),
        }
    }

    #[test]
    fn without_button_a_failure_asks_with_the_default_preset_for_the_failing_part() {
        let d = failure_request(&id(), None, &state(&[]), &problem("ike", FailureCode::Ipsec));
        let i = asked(d);
        assert_eq!(i.claimant_name.as_str(), "router");
        assert_eq!(i.claimant_level, ClaimantLevel::Administrator);
        // Every part the watch names is a part of the router itself, which
        // a request names by its two parts (issue 19, item 2).
        assert_eq!(
            i.terminals,
            vec![
                TerminalName::new("server-part").unwrap(),
                TerminalName::new("router-part").unwrap()
            ]
        );
        assert_eq!(i.for_failure.as_deref(), Some("ike"));
        let content = i.content.as_str();
        assert!(
            content.contains("ike") && content.contains("Ipsec") && content.contains("ike broken"),
            "{content}"
        );
    }

    #[test]
    fn an_open_request_for_the_same_part_suppresses_a_new_one() {
        let s = state(&[(7, Some("ike"), RequestState::Waiting)]);
        let cfg = sample_config();
        for button in [cfg.button.as_ref(), None] {
            assert_eq!(
                failure_request(&id(), button, &s, &problem("ike", FailureCode::Ipsec)).unwrap(),
                FailureRequest::Suppressed { acceptance: 7 },
                "button configured: {}",
                button.is_some()
            );
        }
    }

    #[test]
    fn another_part_is_not_suppressed_by_an_open_request() {
        // Open: one for the datapath, and a person's (no failing part).
        let s = state(&[
            (7, Some("datapath"), RequestState::Waiting),
            (8, None, RequestState::Waiting),
        ]);
        let cfg = sample_config();
        for button in [cfg.button.as_ref(), None] {
            let i = asked(failure_request(&id(), button, &s, &problem("ike", FailureCode::Ipsec)));
            assert_eq!(i.for_failure.as_deref(), Some("ike"));
        }
    }

    #[test]
    fn after_the_request_ended_the_same_part_asks_again() {
        // The request for the helper ended; another part's is still open.
        let s = state(&[
            (7, Some("helper:dnsmasq"), RequestState::Ended),
            (8, Some("datapath"), RequestState::Waiting),
        ]);
        let cfg = sample_config();
        for button in [cfg.button.as_ref(), None] {
            let d = failure_request(&id(), button, &s, &problem("helper:dnsmasq", FailureCode::Other));
            let i = match d.unwrap() {
                FailureRequest::Request(i) => i,
                other => panic!(
                    "button configured: {}: expected a request, got {other:?}",
                    button.is_some()
                ),
            };
            assert_eq!(i.for_failure.as_deref(), Some("helper:dnsmasq"));
        }
    }

    #[test]
    fn with_button_failures_use_its_preset_tagged_with_the_part() {
        let cfg = sample_config();
        let b = cfg.button.as_ref().unwrap();
        let i = asked(failure_request(
            &id(),
            Some(b),
            &state(&[]),
            &problem("datapath", FailureCode::Vpnnat),
        ));
        // The button's claimant data, but the router itself as the
        // terminals, not the button's LAN host (issue 19, item 2).
        let mut want = preset_input(b);
        assert_ne!(want.terminals, router_itself().unwrap(), "the button names a LAN host");
        want.terminals = router_itself().unwrap();
        want.for_failure = Some("datapath".into());
        assert_eq!(i, want);
    }

    #[test]
    fn default_preset_is_valid_for_any_detail_and_any_terminal_id() {
        // A detail far beyond the content's bound, with control characters.
        let mut p = problem("datapath", FailureCode::Vpnnat);
        p.detail = format!("nft said\u{1b}[31m no\r\n{}", "x".repeat(2 * MAX_CONTENT_CHARS));
        let i = default_preset(&id(), &p).unwrap();
        let content = i.content.as_str();
        assert_eq!(content.chars().count(), MAX_CONTENT_CHARS);
        assert!(content.contains("nft said[31m no\n"), "{content:.80}");
        // Any terminal ID, even of the longest kind (64): the terminals
        // are the router's two parts, not a name made from the ID.
        let long = "r".repeat(vpnnat_proto::types::MAX_ID_LEN);
        let id64 = Identity {
            terminal_id: vpnnat_proto::types::TerminalId::new(long).unwrap(),
            ..id()
        };
        let i = default_preset(&id64, &p).unwrap();
        assert_eq!(i.terminals, router_itself().unwrap());
    }
}
