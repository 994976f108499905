//! gatewayd's tunnel filter (issue 18, item 1): its own nftables table
//! ([`GatewayFilter`]) whose `granted` set follows the VPNNAT addresses of
//! every tunnel, so that out of a tunnel only replies to what the center
//! opened, and the allow-listed services from granted addresses, pass.
//!
//! Created at start with the driver's addresses (replacing whatever a
//! previous run left), then kept in sync after every command by the
//! difference between what the driver routes and what the set holds.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use vpnnat_datapath::nft::gateway::GatewayFilter;
use vpnnat_datapath::nft::NftApply;
use vpnnat_datapath::DatapathError;

/// The table and where its transactions go.
pub struct TunnelFilter {
    filter: GatewayFilter,
    nft: Box<dyn NftApply>,
    /// What the set holds (after our last successful transaction); `None`
    /// until created, or after a failure: the next sync re-creates it.
    granted: Option<BTreeSet<Ipv4Addr>>,
}

impl std::fmt::Debug for TunnelFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelFilter")
            .field("filter", &self.filter)
            .field("granted", &self.granted)
            .finish_non_exhaustive()
    }
}

impl TunnelFilter {
    pub fn new(filter: GatewayFilter, nft: Box<dyn NftApply>) -> Self {
        Self {
            filter,
            nft,
            granted: None,
        }
    }

    /// (Re)creates the table with exactly `addrs` granted, atomically.
    pub fn reconcile(&mut self, addrs: BTreeSet<Ipv4Addr>) -> Result<(), DatapathError> {
        self.granted = None;
        let list: Vec<Ipv4Addr> = addrs.iter().copied().collect();
        self.nft
            .apply_nft("create the tunnel filter", &self.filter.create(&list))?;
        self.granted = Some(addrs);
        Ok(())
    }

    /// Brings the set to `addrs`: one transaction for the new ones, one for
    /// the gone ones (each all or nothing). After a failure the set is
    /// unknown, and the next call re-creates the table.
    pub fn sync(&mut self, addrs: BTreeSet<Ipv4Addr>) -> Result<(), DatapathError> {
        let Some(held) = self.granted.take() else {
            return self.reconcile(addrs);
        };
        let new: Vec<Ipv4Addr> = addrs.difference(&held).copied().collect();
        let gone: Vec<Ipv4Addr> = held.difference(&addrs).copied().collect();
        self.nft
            .apply_nft("grant in the tunnel filter", &self.filter.grant(&new))?;
        self.nft
            .apply_nft("revoke in the tunnel filter", &self.filter.revoke(&gone))?;
        self.granted = Some(addrs);
        Ok(())
    }

    /// What the set holds, if known.
    pub fn granted(&self) -> Option<&BTreeSet<Ipv4Addr>> {
        self.granted.as_ref()
    }
}
