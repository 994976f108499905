//! gatewayd's tunnel filter (issue 18, item 1): its own nftables table
//! ([`GatewayFilter`]): out of a tunnel only replies to what the center
//! opened, and the allow-listed services, pass.
//!
//! Installed once at start (replacing whatever a previous run left) and
//! never touched by a command: which addresses a tunnel may send from is
//! the XFRM policies' business (see the builder's documentation), so a
//! grant costs no `nft` transaction.

use vpnnat_datapath::nft::gateway::GatewayFilter;
use vpnnat_datapath::nft::NftApply;
use vpnnat_datapath::DatapathError;

/// What the transaction is called in logs and errors.
pub const CREATE: &str = "create the tunnel filter";

/// (Re)creates the table, atomically.
pub fn install(filter: &GatewayFilter, nft: &mut dyn NftApply) -> Result<(), DatapathError> {
    nft.apply_nft(CREATE, &filter.create())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vpnnat_datapath::nft::RecordingNft;

    #[test]
    fn install_replaces_a_previous_runs_table_in_one_transaction() {
        let mut nft = RecordingNft::default();
        install(&GatewayFilter::new(vec![], vec![]), &mut nft).unwrap();
        let log = nft.log.lock().unwrap().clone();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].0, CREATE);
        let cmds = log[0].1["nftables"].as_array().unwrap();
        assert_eq!(cmds[1]["delete"]["table"]["name"], "vpnnat_gw");
    }

    #[test]
    fn a_failed_install_is_an_error() {
        let mut nft = RecordingNft::default();
        nft.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(install(&GatewayFilter::new(vec![], vec![]), &mut nft).is_err());
    }
}
