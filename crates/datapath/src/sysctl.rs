//! IPv4 settings of the current network namespace (`/proc/sys/net/ipv4`)
//! that a daemon sets for itself.

use std::io;
use std::path::Path;

use crate::error::DatapathError;

/// Where the per-interface IPv4 settings of the current namespace live.
const CONF: &str = "/proc/sys/net/ipv4/conf";

/// Stops this host from sending ICMP redirects: on `all`, on `default`
/// (interfaces made later) and on every interface there now. Returns how
/// many settings it cleared.
///
/// Why centerd needs it: it routes each VPNNAT address to the gateway that
/// carries the tunnel (a host route per address), and operators, gateways
/// and the center often share one LAN segment. The kernel then answers an
/// operator's first packet to an address with a redirect ("reach 10.64.0.5
/// directly via gw1"), which the operator's host caches with no end. When
/// the address is granted again through another gateway (its router moved
/// to gw2 while gw1 was down), the operator keeps sending to gw1 and never
/// reaches the host (found by `tests/vm/gateway-failure.sh`'s move round,
/// about one run in two). Every packet must pass the center's own route,
/// which always names the gateway of now. The kernel sends a redirect when
/// `all` *or* the interface says so, hence every entry.
pub fn stop_icmp_redirects() -> Result<usize, DatapathError> {
    stop_icmp_redirects_in(Path::new(CONF))
}

/// [`stop_icmp_redirects`] on the `conf` directory at `conf` (a test's copy).
pub fn stop_icmp_redirects_in(conf: &Path) -> Result<usize, DatapathError> {
    let err = |key: &Path| {
        let key = key.display().to_string();
        move |reason: io::Error| DatapathError::Sysctl { key, reason }
    };
    let mut cleared: usize = 0;
    for entry in std::fs::read_dir(conf).map_err(err(conf))? {
        let key = entry.map_err(err(conf))?.path().join("send_redirects");
        // An interface that went away between the listing and the write
        // needs nothing.
        match std::fs::write(&key, "0") {
            Ok(()) => cleared = cleared.saturating_add(1),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(&key)(e)),
        }
    }
    Ok(cleared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_interface_all_and_default_are_cleared() {
        let dir = std::env::temp_dir().join(format!("vpnnat-sysctl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for i in ["all", "default", "lo", "eth0", "eth1"] {
            std::fs::create_dir_all(dir.join(i)).unwrap();
            std::fs::write(dir.join(i).join("send_redirects"), "1").unwrap();
        }
        assert_eq!(stop_icmp_redirects_in(&dir).unwrap(), 5);
        for i in ["all", "default", "lo", "eth0", "eth1"] {
            assert_eq!(
                std::fs::read_to_string(dir.join(i).join("send_redirects")).unwrap(),
                "0",
                "{i}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_directory_is_a_clear_error() {
        let e = stop_icmp_redirects_in(Path::new("/nonexistent/vpnnat/conf")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/vpnnat/conf"), "{e}");
    }
}
