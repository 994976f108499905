//! The gateway as IKE responder for routers that dial in (issue 17): which
//! router may open an IKE SA here, with which PSK and selectors.
//!
//! A router is admitted only while it holds one of this gateway's slots in
//! `router` mode (a `SetupTunnel` with `initiation = router`, not torn down
//! since) with at least one address routed into its tunnel (a live
//! request). It is known by its IKE identity (ID_KEY_ID
//! `vpnnat-router:<terminal ID>`), never by its source address, and must
//! authenticate with its own PSK (checked by the IKE core with the
//! configuration this lookup returns). Everything else is refused with
//! AUTHENTICATION_FAILED and nothing is installed; the refusal is logged
//! by terminal ID and reason only.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use vpnnat_ike::codec::id_type;
use vpnnat_ike::{Identity, PeerLookup, SaConfig, Secret, TrafficSelector};
use vpnnat_proto::initiation::{router_key_id, terminal_of_key_id};
use vpnnat_proto::keys::{Psk, SecretBytes};
use vpnnat_proto::types::TerminalId;

/// One router admitted to dial in.
#[derive(Clone)]
pub struct DialIn {
    pub slot: u16,
    pub psk: Psk,
    /// The VPNNAT addresses routed into its tunnel (its side's selectors).
    pub addresses: Vec<Ipv4Addr>,
}

impl std::fmt::Debug for DialIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DialIn")
            .field("slot", &self.slot)
            .field("addresses", &self.addresses)
            .finish_non_exhaustive()
    }
}

/// Why a router was refused (no secrets: safe to log and report).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("not a router identity")]
    NotARouter,
    #[error("terminal={0} holds no router-mode slot on this gateway")]
    NoSlot(TerminalId),
    #[error("terminal={0} has no live request (no address routed)")]
    NothingGranted(TerminalId),
}

/// The router a dial-in identity names, if it may dial in now. Pure.
pub fn authorize<'a>(
    table: &'a BTreeMap<TerminalId, DialIn>,
    idi: &Identity,
) -> Result<(&'a TerminalId, &'a DialIn), Refusal> {
    if idi.ty != id_type::KEY_ID {
        return Err(Refusal::NotARouter);
    }
    let tid = terminal_of_key_id(&idi.data).ok_or(Refusal::NotARouter)?;
    let (tid, entry) = table.get_key_value(&tid).ok_or(Refusal::NoSlot(tid))?;
    if entry.addresses.is_empty() {
        return Err(Refusal::NothingGranted(tid.clone()));
    }
    Ok((tid, entry))
}

/// The identity a router presents when it dials in.
pub fn router_identity(tid: &TerminalId) -> Identity {
    Identity::key_id(&router_key_id(tid))
}

/// The admitted routers, shared between gatewayd's command handlers (which
/// admit and forget) and the IKE responder (which looks up).
#[derive(Debug)]
pub struct DialInTable {
    /// Suites, our identity, timers, the center networks (`local_ts`).
    template: SaConfig,
    routers: Mutex<BTreeMap<TerminalId, DialIn>>,
}

impl DialInTable {
    pub fn new(template: SaConfig) -> Arc<Self> {
        Arc::new(Self {
            template,
            routers: Mutex::new(BTreeMap::new()),
        })
    }

    /// Admits (or updates) a router holding slot `slot` in router mode.
    pub fn admit(&self, tid: TerminalId, slot: u16, psk: Psk) {
        if let Ok(mut m) = self.routers.lock() {
            let addresses = m.get(&tid).map(|d| d.addresses.clone()).unwrap_or_default();
            m.insert(tid, DialIn { slot, psk, addresses });
        }
    }

    /// The addresses routed into `tid`'s tunnel now (ignored for a router
    /// not admitted).
    pub fn set_addresses(&self, tid: &TerminalId, addresses: Vec<Ipv4Addr>) {
        if let Ok(mut m) = self.routers.lock() {
            if let Some(d) = m.get_mut(tid) {
                d.addresses = addresses;
            }
        }
    }

    /// Forgets a router (its VPN ended, or it moved to gateway mode).
    pub fn forget(&self, tid: &TerminalId) -> bool {
        self.routers.lock().is_ok_and(|mut m| m.remove(tid).is_some())
    }

    /// The terminal and slot of an identity that may dial in now.
    pub fn slot_for(&self, idi: &Identity) -> Option<(TerminalId, u16)> {
        let m = self.routers.lock().ok()?;
        authorize(&m, idi).ok().map(|(t, d)| (t.clone(), d.slot))
    }

    /// The slot of an admitted router (granted or not).
    pub fn slot_of(&self, tid: &TerminalId) -> Option<u16> {
        self.routers.lock().ok()?.get(tid).map(|d| d.slot)
    }

    /// Whether `tid` is admitted.
    pub fn contains(&self, tid: &TerminalId) -> bool {
        self.routers.lock().is_ok_and(|m| m.contains_key(tid))
    }
}

impl PeerLookup for DialInTable {
    fn config_for(&self, idi: &Identity) -> Option<Arc<SaConfig>> {
        let m = self.routers.lock().ok()?;
        match authorize(&m, idi) {
            Ok((tid, d)) => {
                let mut sa = self.template.clone();
                sa.psk = Secret::from_slice(d.psk.expose_secret());
                sa.remote_ts = d.addresses.iter().map(|a| TrafficSelector::host(*a)).collect();
                sa.remote_id = Some(router_identity(tid));
                sa.peer_lookup = None;
                Some(Arc::new(sa))
            }
            Err(r) => {
                log::warn!("dial-in refused: {r}");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tid(s: &str) -> TerminalId {
        TerminalId::new(s).unwrap()
    }

    fn table() -> Arc<DialInTable> {
        let template = SaConfig::new(
            Secret::from_slice(b"template key, never an SA's"),
            Identity::ipv4(Ipv4Addr::new(198, 51, 100, 21)),
            vec![TrafficSelector::subnet(Ipv4Addr::new(172, 16, 0, 0), 24)],
            vec![TrafficSelector::subnet(Ipv4Addr::new(172, 16, 0, 0), 24)],
        );
        DialInTable::new(template)
    }

    #[test]
    fn an_admitted_router_with_a_grant_gets_its_own_psk_and_addresses() {
        let t = table();
        t.admit(tid("router-1"), 0, Psk::from_array([1; 32]));
        t.admit(tid("router-2"), 1, Psk::from_array([2; 32]));
        t.set_addresses(&tid("router-1"), vec![Ipv4Addr::new(10, 64, 0, 1)]);
        t.set_addresses(&tid("router-2"), vec![Ipv4Addr::new(10, 64, 0, 2)]);
        let c = t.config_for(&router_identity(&tid("router-2"))).unwrap();
        assert_eq!(c.psk.expose(), &[2; 32]);
        assert_eq!(c.remote_ts, vec![TrafficSelector::host(Ipv4Addr::new(10, 64, 0, 2))]);
        assert_eq!(c.remote_id, Some(router_identity(&tid("router-2"))));
        assert!(c.peer_lookup.is_none());
        assert_eq!(c.local_ts, t.template.local_ts, "the center networks");
    }

    #[test]
    fn everyone_else_is_refused() {
        let t = table();
        t.admit(tid("router-1"), 0, Psk::from_array([1; 32]));
        let m = t.routers.lock().unwrap().clone();
        // Slot-less: never admitted here.
        assert_eq!(
            authorize(&m, &router_identity(&tid("router-9"))).unwrap_err(),
            Refusal::NoSlot(tid("router-9"))
        );
        // Admitted but nothing routed: no live request.
        assert_eq!(
            authorize(&m, &router_identity(&tid("router-1"))).unwrap_err(),
            Refusal::NothingGranted(tid("router-1"))
        );
        // Not a router identity at all (the address of a router is not one).
        for idi in [
            Identity::ipv4(Ipv4Addr::new(203, 0, 113, 50)),
            Identity::fqdn("vpnnat-router:router-1"),
            Identity::key_id(b"router-1"),
        ] {
            assert_eq!(authorize(&m, &idi).unwrap_err(), Refusal::NotARouter, "{idi:?}");
        }
        // Its request ended: forgotten, refused again.
        t.set_addresses(&tid("router-1"), vec![Ipv4Addr::new(10, 64, 0, 1)]);
        assert!(t.config_for(&router_identity(&tid("router-1"))).is_some());
        assert!(t.forget(&tid("router-1")));
        assert!(t.config_for(&router_identity(&tid("router-1"))).is_none());
    }

    #[test]
    fn refusals_and_debug_output_carry_no_key() {
        let t = table();
        t.admit(tid("router-1"), 0, Psk::from_array([0xab; 32]));
        let shown = format!("{t:?}");
        assert!(
            !shown.contains("171") && !shown.to_lowercase().contains("abab"),
            "{shown}"
        );
        let r = Refusal::NothingGranted(tid("router-1")).to_string();
        assert_eq!(r, "terminal=router-1 has no live request (no address routed)");
    }
}
