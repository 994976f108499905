//! Why a maintenance request's tunnel did not come up, in words for the
//! site owner and the operator, from the gateway's last tunnel event.
//!
//! gatewayd reports each tunnel change with a detail such as
//! `IKE down: AuthenticationFailed` (the IKE core's `DownReason`); the
//! center keeps the last one that was not "up" per router. Pure: the
//! detail in, the sentence out.

/// The reason for a tunnel that was not up in time. `detail` is the
/// gateway's last report about it (None: the gateway said nothing since
/// the request started).
pub fn reason(detail: Option<&str>) -> String {
    let Some(d) = detail.map(str::trim).filter(|d| !d.is_empty()) else {
        return "timeout: the gateway reported no IKE answer from the router".into();
    };
    let cause = d.strip_prefix("IKE down: ").unwrap_or(d);
    let what = match cause {
        "AuthenticationFailed" => "IKE refused: authentication failed (PSK or identity)",
        "NoProposalChosen" => "IKE refused: no acceptable proposal",
        "TsUnacceptable" => "IKE refused: traffic selectors not accepted",
        "PeerDead" | "Timeout" => "timeout: the router did not answer IKE",
        "DeletedByPeer" => "the router closed the tunnel",
        _ => return format!("the gateway reported: {d}"),
    };
    format!("{what} (gateway: {d})")
}

#[cfg(test)]
mod tests {
    use super::reason;

    #[test]
    fn each_ike_outcome_reads_as_what_failed() {
        assert_eq!(
            reason(None),
            "timeout: the gateway reported no IKE answer from the router"
        );
        assert_eq!(reason(Some("  ")), reason(None));
        assert_eq!(
            reason(Some("IKE down: AuthenticationFailed")),
            "IKE refused: authentication failed (PSK or identity) (gateway: IKE down: AuthenticationFailed)"
        );
        assert!(reason(Some("IKE down: Timeout")).starts_with("timeout: the router did not answer IKE"));
        assert!(reason(Some("IKE down: PeerDead")).starts_with("timeout: the router did not answer IKE"));
        assert!(reason(Some("IKE down: NoProposalChosen")).starts_with("IKE refused: no acceptable proposal"));
        assert!(reason(Some("IKE down: TsUnacceptable")).starts_with("IKE refused: traffic selectors"));
        // Anything else is passed on as the gateway said it.
        assert_eq!(
            reason(Some("IKE pending (policies only)")),
            "the gateway reported: IKE pending (policies only)"
        );
        assert_eq!(
            reason(Some("IKE down: PeerError(24)")),
            "the gateway reported: IKE down: PeerError(24)"
        );
    }
}
