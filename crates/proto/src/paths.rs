//! Every URL path of the protocol, in one place. All commands are `POST`
//! with a JSON body (possibly `{}`) and the authentication headers of
//! [`crate::auth`].

/// Router -> center (plain HTTP over the Internet; application-layer auth).
pub mod center {
    /// 1. Installation notice (MAC with Secret(ID)).
    pub const INSTALL: &str = "/v1/router/install";
    /// 2. Failure notice.
    pub const FAILURE: &str = "/v1/router/failure";
    /// 3. VPN gateway address request.
    pub const GATEWAY_ADDRESS: &str = "/v1/router/gateway-address";
    /// 4. Maintenance request.
    pub const MAINTENANCE: &str = "/v1/router/maintenance";
    /// Tunnel lost (beyond the seed): the router restarted and lost its
    /// IKE state; the center has the gateway build the tunnel afresh.
    pub const TUNNEL_LOST: &str = "/v1/router/tunnel-lost";
    /// Site end (issue 19, item 7): the site owner ends one of this
    /// router's requests; the center ends it as for an operator's end.
    pub const SITE_END: &str = "/v1/router/end";
    /// Request states (issue 19, item 1): which of the router's open
    /// requests the center has ended meanwhile (while the tunnel that
    /// carries the center's end commands was down).
    pub const REQUEST_STATES: &str = "/v1/router/request-states";
    /// gatewayd -> centerd: tunnel up/down event.
    pub const GATEWAY_EVENT: &str = "/v1/gateway/event";
}

/// Center -> router, through the tunnel to the router's server-part VPNNAT
/// address.
pub mod router {
    /// 6. Maintenance end.
    pub const END: &str = "/v1/center/end";
    /// 7. VPNNAT release.
    pub const RELEASE: &str = "/v1/center/release";
    /// 8. VPN end.
    pub const VPN_END: &str = "/v1/center/vpn-end";
}

/// centerd -> gatewayd, over the center LAN.
pub mod gateway {
    pub const SETUP_TUNNEL: &str = "/v1/tunnel/setup";
    pub const ADD_ADDRESSES: &str = "/v1/tunnel/add-addresses";
    pub const REMOVE_ADDRESSES: &str = "/v1/tunnel/remove-addresses";
    pub const TEAR_DOWN: &str = "/v1/tunnel/teardown";
    pub const RESTART_TUNNEL: &str = "/v1/tunnel/restart";
    pub const STATE: &str = "/v1/state";
}

/// Every path, for routers of HTTP servers and for tests.
pub const ALL: &[&str] = &[
    center::INSTALL,
    center::FAILURE,
    center::GATEWAY_ADDRESS,
    center::MAINTENANCE,
    center::TUNNEL_LOST,
    center::SITE_END,
    center::REQUEST_STATES,
    center::GATEWAY_EVENT,
    router::END,
    router::RELEASE,
    router::VPN_END,
    gateway::SETUP_TUNNEL,
    gateway::ADD_ADDRESSES,
    gateway::REMOVE_ADDRESSES,
    gateway::TEAR_DOWN,
    gateway::RESTART_TUNNEL,
    gateway::STATE,
];

#[cfg(test)]
mod tests {
    #[test]
    fn paths_are_distinct_and_absolute() {
        let mut seen = std::collections::HashSet::new();
        for p in super::ALL {
            assert!(p.starts_with("/v1/"), "{p}");
            assert!(seen.insert(*p), "duplicate {p}");
        }
    }
}
