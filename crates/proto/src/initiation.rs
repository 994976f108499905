//! Who starts the IKEv2 tunnel between a router and its gateway (issue 17).
//!
//! The seed has the gateway initiate toward the router's global address
//! ([0112]); that fails for a router behind its own NAT or a carrier-grade
//! NAT, which no packet from the Internet reaches unasked. There the router
//! dials out instead. The router says what it wants ([`InitiationPreference`])
//! and what its WAN looks like ([`WanAddress`]) in the VPN gateway address
//! request; the center decides ([`decide`]) and says so in its answer
//! ([`InitiationMode`] in `GatewayInfo`) and to the gateway (`SetupTunnel`).
//!
//! All fields that carry these are optional on the wire with the seed's
//! behaviour as their absent value, so messages of routers and centers that
//! predate them still decode and mean what they meant.

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Who initiates the IKE SA of a router's tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum InitiationMode {
    /// The gateway initiates toward the router's global address (the seed).
    #[default]
    Gateway,
    /// The router initiates toward the gateway it was given (NAT-T on
    /// UDP 4500); the gateway only responds.
    Router,
}

impl InitiationMode {
    /// For `skip_serializing_if`: the seed's mode is not written, so an
    /// answer in that mode is byte-for-byte what older routers expect.
    pub fn is_gateway(&self) -> bool {
        *self == InitiationMode::Gateway
    }

    /// `gateway` / `router`, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            InitiationMode::Gateway => "gateway",
            InitiationMode::Router => "router",
        }
    }

    /// The inverse of [`InitiationMode::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "gateway" => Some(InitiationMode::Gateway),
            "router" => Some(InitiationMode::Router),
            _ => None,
        }
    }
}

impl fmt::Display for InitiationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a router is configured to want (`tunnel_initiation` in its config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum InitiationPreference {
    /// Always the gateway (the router has a public address and wants the
    /// seed's behaviour whatever the center sees).
    Gateway,
    /// Always the router.
    Router,
    /// The center decides per request from what it sees.
    #[default]
    Auto,
}

impl InitiationPreference {
    /// For `skip_serializing_if`.
    pub fn is_auto(&self) -> bool {
        *self == InitiationPreference::Auto
    }
}

/// What the router reports about its WAN's IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WanAddress {
    /// The IPv4 address on the router's WAN interface (may be private: a
    /// home NAT's LAN or a carrier NAT's shared space).
    Ipv4(Ipv4Addr),
    /// The WAN has no IPv4 address of its own (e.g. DS-Lite, IPv6-only).
    NoIpv4,
}

/// Why the center chose a mode: stored, shown to the operator and written
/// to the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum InitiationReason {
    /// The router's configuration asked for this mode.
    Configured,
    /// The request came from another address than the WAN address the
    /// router reports: a NAT lies between them.
    BehindNat {
        /// The request's source address, as the center saw it.
        seen: Ipv4Addr,
        /// The router's own WAN address.
        reported: Ipv4Addr,
    },
    /// The router reports no IPv4 address on its WAN.
    NoPublicIpv4,
    /// The request came from the address the router reports: no NAT.
    Public {
        /// That address.
        address: Ipv4Addr,
    },
    /// The router reports nothing about its WAN (older firmware) or the
    /// center does not know the request's source: the seed's mode.
    NotReported,
}

impl fmt::Display for InitiationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InitiationReason::Configured => f.write_str("configured on the router"),
            InitiationReason::BehindNat { seen, reported } => {
                write!(f, "behind NAT: request from {seen}, router's WAN address {reported}")
            }
            InitiationReason::NoPublicIpv4 => f.write_str("the router reports no IPv4 address on its WAN"),
            InitiationReason::Public { address } => write!(f, "public address {address}, no NAT"),
            InitiationReason::NotReported => f.write_str("the router reports no WAN address"),
        }
    }
}

/// In `router` mode the router authenticates as ID_KEY_ID with this
/// prefix and its terminal ID: its addresses say nothing (several routers
/// share one behind a carrier NAT, many use the same private WAN address
/// behind their home NATs), its terminal ID is unique.
pub const ROUTER_KEY_ID_PREFIX: &[u8] = b"vpnnat-router:";

/// The ID_KEY_ID body a router presents in `router` mode.
pub fn router_key_id(terminal_id: &crate::types::TerminalId) -> Vec<u8> {
    let mut v = ROUTER_KEY_ID_PREFIX.to_vec();
    v.extend_from_slice(terminal_id.as_str().as_bytes());
    v
}

/// The terminal ID in a router's ID_KEY_ID body, if it is one (a valid
/// terminal ID after the prefix).
pub fn terminal_of_key_id(body: &[u8]) -> Option<crate::types::TerminalId> {
    let rest = body.strip_prefix(ROUTER_KEY_ID_PREFIX)?;
    let s = std::str::from_utf8(rest).ok()?;
    crate::types::TerminalId::new(s).ok()
}

/// The center's choice for one request: `seen` is the request's source
/// address (`None` if unknown, e.g. an IPv6 source), `wan` what the router
/// reports. Pure: the same inputs always give the same answer.
pub fn decide(
    preference: InitiationPreference,
    seen: Option<Ipv4Addr>,
    wan: Option<WanAddress>,
) -> (InitiationMode, InitiationReason) {
    match preference {
        InitiationPreference::Gateway => return (InitiationMode::Gateway, InitiationReason::Configured),
        InitiationPreference::Router => return (InitiationMode::Router, InitiationReason::Configured),
        InitiationPreference::Auto => {}
    }
    match (wan, seen) {
        (Some(WanAddress::NoIpv4), _) => (InitiationMode::Router, InitiationReason::NoPublicIpv4),
        (Some(WanAddress::Ipv4(reported)), Some(seen)) if seen != reported => {
            (InitiationMode::Router, InitiationReason::BehindNat { seen, reported })
        }
        (Some(WanAddress::Ipv4(address)), Some(_)) => (InitiationMode::Gateway, InitiationReason::Public { address }),
        (Some(WanAddress::Ipv4(_)), None) | (None, _) => (InitiationMode::Gateway, InitiationReason::NotReported),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn auto_picks_router_behind_a_nat_and_gateway_on_a_public_address() {
        let auto = InitiationPreference::Auto;
        // Home NAT: the router's WAN is private, the center sees the NAT.
        assert_eq!(
            decide(
                auto,
                Some(ip("198.51.100.201")),
                Some(WanAddress::Ipv4(ip("192.0.2.2")))
            ),
            (
                InitiationMode::Router,
                InitiationReason::BehindNat {
                    seen: ip("198.51.100.201"),
                    reported: ip("192.0.2.2")
                }
            )
        );
        assert_eq!(
            decide(
                auto,
                Some(ip("198.51.100.101")),
                Some(WanAddress::Ipv4(ip("198.51.100.101")))
            ),
            (
                InitiationMode::Gateway,
                InitiationReason::Public {
                    address: ip("198.51.100.101")
                }
            )
        );
        assert_eq!(
            decide(auto, Some(ip("198.51.100.101")), Some(WanAddress::NoIpv4)),
            (InitiationMode::Router, InitiationReason::NoPublicIpv4)
        );
        // No IPv4 on the WAN decides even when the source is unknown.
        assert_eq!(
            decide(auto, None, Some(WanAddress::NoIpv4)),
            (InitiationMode::Router, InitiationReason::NoPublicIpv4)
        );
    }

    #[test]
    fn auto_without_a_report_keeps_the_seeds_mode() {
        let auto = InitiationPreference::Auto;
        for (seen, wan) in [
            (Some(ip("198.51.100.101")), None),
            (None, Some(WanAddress::Ipv4(ip("192.0.2.2")))),
            (None, None),
        ] {
            assert_eq!(
                decide(auto, seen, wan),
                (InitiationMode::Gateway, InitiationReason::NotReported)
            );
        }
    }

    #[test]
    fn a_configured_mode_wins_over_what_the_center_sees() {
        let natted = (Some(ip("198.51.100.201")), Some(WanAddress::Ipv4(ip("192.0.2.2"))));
        assert_eq!(
            decide(InitiationPreference::Gateway, natted.0, natted.1),
            (InitiationMode::Gateway, InitiationReason::Configured)
        );
        let public = (Some(ip("198.51.100.101")), Some(WanAddress::Ipv4(ip("198.51.100.101"))));
        assert_eq!(
            decide(InitiationPreference::Router, public.0, public.1),
            (InitiationMode::Router, InitiationReason::Configured)
        );
    }

    #[test]
    fn router_key_ids_round_trip_and_nothing_else_parses() {
        let tid = crate::types::TerminalId::new("router-7").unwrap();
        let body = router_key_id(&tid);
        assert_eq!(body, b"vpnnat-router:router-7");
        assert_eq!(terminal_of_key_id(&body), Some(tid));
        for bad in [
            &b"router-7"[..],
            b"vpnnat-router:",
            b"vpnnat-router:../x",
            b"VPNNAT-ROUTER:router-7",
            b"vpnnat-router:\xff",
        ] {
            assert_eq!(terminal_of_key_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn wire_forms() {
        assert_eq!(serde_json::to_string(&InitiationMode::Router).unwrap(), r#""router""#);
        assert_eq!(serde_json::to_string(&InitiationPreference::Auto).unwrap(), r#""auto""#);
        assert_eq!(
            serde_json::to_string(&WanAddress::Ipv4(ip("192.0.2.2"))).unwrap(),
            r#"{"ipv4":"192.0.2.2"}"#
        );
        assert_eq!(serde_json::to_string(&WanAddress::NoIpv4).unwrap(), r#""no_ipv4""#);
        assert!(serde_json::from_str::<InitiationMode>(r#""auto""#).is_err());
        for m in [InitiationMode::Gateway, InitiationMode::Router] {
            assert_eq!(InitiationMode::parse(m.as_str()), Some(m));
        }
        assert_eq!(InitiationMode::parse("Router"), None);
    }
}
