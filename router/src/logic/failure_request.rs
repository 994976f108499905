//! What the router asks for after a failure notice (seed [0137], claim 9:
//! the router "shifts to a demand of remote maintenance" once the center
//! answered the notice), as a pure decision: the failing part, the
//! configuration and the state in, "ask with this input" or "an open
//! request already covers it" out.

use crate::config::ButtonPreset;
use crate::health::Problem;
use crate::state::{RequestState, RouterState};

use super::{preset_input, Identity, MaintenanceInput};

/// The decision after a failure notice the center took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureRequest {
    /// Ask for maintenance with this input (tagged with the failing part).
    Request(MaintenanceInput),
    /// An open request already covers the failure.
    Suppressed { acceptance: u64 },
    /// Nothing to ask with.
    NoPreset,
}

/// The maintenance request that follows the failure notice for `failure`.
pub fn failure_request(
    _id: &Identity,
    button: Option<&ButtonPreset>,
    state: &RouterState,
    failure: &Problem,
) -> FailureRequest {
    let Some(b) = button else {
        return FailureRequest::NoPreset;
    };
    // One open request is enough for the operator to come and look: a
    // second failure must not pile up requests.
    if let Some((n, _)) = state.requests.iter().find(|(_, r)| r.state == RequestState::Waiting) {
        return FailureRequest::Suppressed { acceptance: *n };
    }
    let mut input = preset_input(b);
    input.for_failure = Some(failure.key.clone());
    FailureRequest::Request(input)
}
