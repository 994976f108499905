//! 1. Installation notice
//! 2. Failure notice

use std::net::Ipv4Addr;
use vpnnat_proto::keys::SecretBytes;

use vpnnat_proto::auth::{AuthHeaders, ReplayGuard};
use vpnnat_proto::keys::{Psk, SecretId, SecretId2};
use vpnnat_proto::messages::{Ack, FailureNotice, InstallRequest, InstallSecrets};
use vpnnat_proto::types::TerminalId;
use vpnnat_proto::{decode_request, KeyKind, Outgoing, ProtoError};

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
        let mut st = self.store()?;
        let tid = v.principal().clone();
        let psk = Psk::generate(&self.rng).map_err(|_| ProtoError::Crypto)?;
        let sid2 = SecretId2::generate(&self.rng).map_err(|_| ProtoError::Crypto)?;
        // The audit row commits with the installation.
        let who = Actor::router(tid.as_str(), peer);
        vpnnat_crashpoint::hit("center.install.before_commit");
        let row = st.install_terminal_from(
            &crate::storage::InstallRecord {
                terminal_id: tid.as_str(),
                psk_hex: &psk.to_hex(),
                secret_id2_hex: &sid2.to_hex(),
                maintenance_password_hash: &self.settings.maintenance_password_hash,
                now,
            },
            Some(&who.peer),
        )?;
        drop(st);
        vpnnat_crashpoint::hit("center.install.after_commit");
        let secrets = InstallSecrets::new(
            psk,
            sid2,
            self.settings.maintenance_password.clone(),
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
