//! Who initiates a router's tunnel (issue 17): decided per gateway address
//! request by the pure [`vpnnat_proto::initiation::decide`], remembered for
//! the maintenance request and reconciliation, shown to the operator and
//! written to the audit log with its reason when it changes.

use std::net::Ipv4Addr;

use vpnnat_proto::initiation::{decide, InitiationMode};
use vpnnat_proto::messages::GatewayAddressRequest;
use vpnnat_proto::types::TerminalId;

use super::{Actor, Center, CenterError, GatewayCommands, RouterCommands};

impl<G: GatewayCommands, R: RouterCommands> Center<G, R> {
    /// Decides and records the mode for this request. Audited when it
    /// differs from the last decision (every request would flood the log
    /// with repeats; a change is what the operator needs to see).
    pub(super) fn decide_initiation(
        &self,
        tid: &TerminalId,
        req: &GatewayAddressRequest,
        seen: Option<Ipv4Addr>,
        now: u64,
    ) -> Result<InitiationMode, CenterError> {
        let (mode, reason) = decide(req.initiation, seen, req.wan);
        let reason = reason.to_string();
        let before = self.reads()?.initiation_of(tid.as_str())?;
        self.store()?.set_initiation(tid.as_str(), mode, &reason, seen, now)?;
        let changed = before.is_none_or(|b| b.mode() != mode || b.reason != reason);
        if changed {
            log::info!("terminal={tid} tunnel initiation: {mode} ({reason})");
            self.audit(
                now,
                &Actor::router(tid.as_str(), seen),
                "initiation",
                Some(tid.as_str()),
                None,
                &format!("{mode}-initiated tunnel: {reason}"),
            );
        }
        Ok(mode)
    }

    /// The mode to command the gateway in for `tid` (the seed's when never
    /// decided: a router that skipped exchange 3 or predates issue 17).
    pub(super) fn initiation_of(&self, tid: &str) -> Result<InitiationMode, CenterError> {
        Ok(self.reads()?.initiation_of(tid)?.map(|r| r.mode()).unwrap_or_default())
    }
}
