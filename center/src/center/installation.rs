//! 1. Installation notice
//! 2. Failure notice

use std::net::Ipv4Addr;
use vpnnat_proto::keys::SecretBytes;

use vpnnat_proto::auth::{AuthHeaders, ReplayGuard};
use vpnnat_proto::keys::{MaintenancePassword, Psk, SecretId, SecretId2};
use vpnnat_proto::messages::{Ack, FailureNotice, InstallRequest, InstallSecrets};
use vpnnat_proto::types::TerminalId;
use vpnnat_proto::{decode_request, KeyKind, Outgoing, ProtoError};

use crate::storage::UNPROVEN_ACTIONS;
use vpnnat_proto::reinstall::{self, ProofCheck, ReinstallDecision, ReinstallInput};

/// At most this many re-installation attempts without a valid proof per
/// router and [`REINSTALL_WINDOW_SECS`]; beyond it, 429 and nothing stored.
pub const REINSTALL_LIMIT: u32 = 5;
pub const REINSTALL_WINDOW_SECS: u64 = 3600;
/// An operator's approval is good for this long.
pub const REINSTALL_APPROVAL_TTL_SECS: u64 = 24 * 3600;

use super::{unicast, Actor, Center, CenterError, GatewayCommands, LockedNonceStore, RouterCommands};

impl<G: GatewayCommands, R: RouterCommands> Center<G, R> {
    pub fn install(&self, path: &str, headers: &AuthHeaders, body: &[u8], now: u64) -> Result<Outgoing, CenterError> {
        self.install_from(path, headers, body, now, None)
    }

    /// [`Center::install`] from `peer` (the router's global address, for
    /// the audit log).
    pub fn install_from(
        &self,
        path: &str,
        headers: &AuthHeaders,
        body: &[u8],
        now: u64,
        peer: Option<Ipv4Addr>,
    ) -> Result<Outgoing, CenterError> {
        let master = &self.settings.factory_master_key;
        let v = {
            let mut guard = ReplayGuard::new(LockedNonceStore(&self.store), self.settings.replay);
            // Every terminal ID has a Secret(ID): it is derived, not stored.
            decode_request::<InstallRequest, _, _>(&mut guard, path, headers, body, now, |t: &TerminalId, kind| {
                (kind == KeyKind::SecretId).then(|| SecretId::derive(master, t).mac_key())
            })?
        };
        let tid = v.principal().clone();
        let who = Actor::router(tid.as_str(), peer);
        let decision = self.reinstall_decision(&tid, v.command(), now)?;
        let (action, note) = match decision {
            ReinstallDecision::FirstInstall => ("install", String::new()),
            ReinstallDecision::ProvedReinstall => ("reinstall", "proved Secret(ID2); ".to_owned()),
            ReinstallDecision::ApprovedReinstall => {
                let by = self
                    .store()?
                    .reinstall_request(tid.as_str())?
                    .and_then(|r| r.approved_by)
                    .unwrap_or_default();
                ("reinstall", format!("without proof, approved by {by}; "))
            }
            ReinstallDecision::Pending => {
                self.store()?.record_reinstall_pending(tid.as_str(), now, &who.peer)?;
                log::warn!("terminal={tid} re-installation without proof: pending operator approval");
                return Err(CenterError::ReinstallPending);
            }
            ReinstallDecision::WrongProof => {
                self.audit(
                    now,
                    &who,
                    UNPROVEN_ACTIONS[1],
                    Some(tid.as_str()),
                    None,
                    "ALERT: re-installation with a wrong proof of Secret(ID2) refused",
                );
                log::warn!("terminal={tid} re-installation with a wrong proof refused");
                return Err(CenterError::ReinstallWrongProof);
            }
            ReinstallDecision::RateLimited => {
                // Not audited row by row: a flood must not grow the database.
                log::warn!("terminal={tid} re-installation attempt rate-limited");
                return Err(CenterError::ReinstallRateLimited);
            }
        };
        let mut st = self.store()?;
        let psk = Psk::generate(&self.rng).map_err(|_| ProtoError::Crypto)?;
        let sid2 = SecretId2::generate(&self.rng).map_err(|_| ProtoError::Crypto)?;
        // Its own, at every installation: one router's card opens no other.
        let maintenance_password = MaintenancePassword::generate(&self.rng).map_err(|_| ProtoError::Crypto)?;
        // The audit row commits with the installation.
        vpnnat_crashpoint::hit("center.install.before_commit");
        let row = st.install_terminal_audited(
            &crate::storage::InstallRecord {
                terminal_id: tid.as_str(),
                psk_hex: &psk.to_hex(),
                secret_id2_hex: &sid2.to_hex(),
                // Superseded by the password itself (migration 6).
                maintenance_password_hash: "",
                now,
            },
            Some(&who.peer),
            action,
            &note,
            Some(maintenance_password.expose_secret()),
        )?;
        drop(st);
        vpnnat_crashpoint::hit("center.install.after_commit");
        let secrets = InstallSecrets::new(
            psk,
            sid2,
            maintenance_password,
            unicast(row.server_part_vpnnat)?,
            unicast(row.router_part_vpnnat)?,
        )
        .map_err(|e| CenterError::Proto(e.into()))?;
        let resp = secrets.seal(&self.rng, &tid, &v.command().reply_key)?;
        log::info!(
            "terminal={tid} installed: server part {}, router part {}",
            row.server_part_vpnnat,
            row.router_part_vpnnat
        );
        self.answer(&v, &resp, &SecretId::derive(master, &tid).mac_key(), now)
    }

    /// Reads what [`reinstall::decide`] needs and asks it (pure logic in
    /// `vpnnat_proto::reinstall`).
    fn reinstall_decision(
        &self,
        tid: &TerminalId,
        n: &InstallRequest,
        now: u64,
    ) -> Result<ReinstallDecision, CenterError> {
        let st = self.store()?;
        // An installation the router never used whose predecessor was none
        // (its answer lost, or routerd crashed before saving it) is still
        // a first installation: nobody holds anything to prove.
        let row = st
            .terminal(tid.as_str())?
            .filter(|r| r.confirmed || r.previous_secret_id2_hex.is_some());
        let Some(row) = row else {
            return Ok(reinstall::decide(ReinstallInput {
                installed: false,
                proof: ProofCheck::Absent,
                approved: false,
                recent_unproven_attempts: 0,
                limit: REINSTALL_LIMIT,
            }));
        };
        let proof = match &n.proof {
            None => ProofCheck::Absent,
            Some(p) => {
                let bad = || CenterError::BadStoredSecret {
                    terminal: tid.to_string(),
                };
                let sid2 = SecretId2::from_hex(&row.secret_id2_hex).map_err(|_| bad())?;
                // Unconfirmed: the router may hold the Secret(ID2) from
                // before the installation whose answer it never saved.
                let previous = match (&row.previous_secret_id2_hex, row.confirmed) {
                    (Some(h), false) => Some(SecretId2::from_hex(h).map_err(|_| bad())?),
                    _ => None,
                };
                if p.verify(&sid2, tid, &n.reply_key) || previous.is_some_and(|prev| p.verify(&prev, tid, &n.reply_key))
                {
                    ProofCheck::Valid
                } else {
                    ProofCheck::Invalid
                }
            }
        };
        let approved = st
            .reinstall_request(tid.as_str())?
            .and_then(|r| r.approved_at)
            .is_some_and(|at| now <= at.saturating_add(REINSTALL_APPROVAL_TTL_SECS));
        let recent = st.unproven_reinstall_attempts(tid.as_str(), now.saturating_sub(REINSTALL_WINDOW_SECS))?;
        Ok(reinstall::decide(ReinstallInput {
            installed: true,
            proof,
            approved,
            recent_unproven_attempts: recent,
            limit: REINSTALL_LIMIT,
        }))
    }

    /// An authorised operator (`actor`) approves the pending
    /// re-installation of `terminal_id`; the router's next notice without
    /// proof is then accepted (within [`REINSTALL_APPROVAL_TTL_SECS`]).
    pub fn approve_reinstall(&self, terminal_id: &str, actor: &Actor, now: u64) -> Result<(), CenterError> {
        self.store()?
            .approve_reinstall(terminal_id, &actor.who, now, &actor.peer)?;
        log::warn!("terminal={terminal_id} re-installation approved by {}", actor.who);
        Ok(())
    }

    /// The maintenance password of `terminal_id` for an authorised
    /// operator (`actor`); every reading is audited. A router installed
    /// before per-router passwords has the shared configured one.
    pub fn show_maintenance_password(
        &self,
        terminal_id: &str,
        actor: &Actor,
        now: u64,
    ) -> Result<MaintenancePassword, CenterError> {
        let stored = self.store()?.maintenance_password(terminal_id)?;
        let (pw, how) = match stored {
            Some(p) => (
                MaintenancePassword::new(p).map_err(|_| CenterError::BadStoredSecret {
                    terminal: terminal_id.to_owned(),
                })?,
                "own",
            ),
            None => (
                self.settings.maintenance_password.clone(),
                "shared (installed before per-router passwords)",
            ),
        };
        self.audit(
            now,
            actor,
            "show_maintenance_password",
            Some(terminal_id),
            None,
            &format!("{how} maintenance password shown"),
        );
        Ok(pw)
    }

    pub fn failure(&self, path: &str, headers: &AuthHeaders, body: &[u8], now: u64) -> Result<Outgoing, CenterError> {
        self.failure_from(path, headers, body, now, None)
    }

    /// [`Center::failure`] from `peer` (for the audit log).
    pub fn failure_from(
        &self,
        path: &str,
        headers: &AuthHeaders,
        body: &[u8],
        now: u64,
        peer: Option<Ipv4Addr>,
    ) -> Result<Outgoing, CenterError> {
        let (v, _row, sid2) = self.verify_router::<FailureNotice>(path, headers, body, now)?;
        let n: &FailureNotice = v.command();
        let code = serde_json::to_value(n.code)
            .ok()
            .and_then(|c| c.as_str().map(str::to_owned))
            .unwrap_or_else(|| "other".into());
        self.store()?
            .add_failure(v.principal().as_str(), &code, n.detail.as_str(), now)?;
        log::warn!("terminal={} failure notice: {code}", v.principal());
        self.audit(
            now,
            &Actor::router(v.principal().as_str(), peer),
            "failure",
            Some(v.principal().as_str()),
            None,
            &format!("{code}: {}", n.detail.as_str()),
        );
        self.answer(&v, &Ack {}, &sid2.mac_key(), now)
    }
}
