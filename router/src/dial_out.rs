//! The router dials out (issue 17, `router` mode): behind a NAT nothing
//! reaches the router unasked, so it initiates IKEv2 toward the gateway it
//! was given (NAT-T on 4500, keepalives and DPD from the core) instead of
//! waiting as responder. It authenticates as ID_KEY_ID
//! `vpnnat-router:<terminal ID>` with its own PSK: the gateway admits it
//! by that identity, never by its (shared, changing) address.
//!
//! [`requests`] is the pure rule (settings before/after -> driver
//! requests); [`DialOutSink`] remembers the tunnel asked for so that the
//! event task can dial again after the tunnel went down on its own (the
//! gateway died, DPD gave up): the tunnel comes back with that gateway, or
//! moves once the center gives another one (new settings).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use vpnnat_datapath::SaSpec;
use vpnnat_ike::{DownReason, Identity};
use vpnnat_ike_driver::{DriverError, DriverEvent, DriverHandle, Request, TunnelConfig};
use vpnnat_proto::initiation::router_key_id;
use vpnnat_proto::keys::SecretBytes;
use vpnnat_proto::types::TerminalId;

use crate::driver_responder::{tunnel_config, DriverSink};
use crate::ike_responder::ResponderSettings;

/// How long after a tunnel went down on its own the router dials again.
pub const REDIAL_AFTER: Duration = Duration::from_secs(5);

/// The identity a router presents (both modes; gateway-initiated tunnels
/// do not check it).
pub fn identity(terminal_id: &TerminalId) -> Identity {
    Identity::key_id(&router_key_id(terminal_id))
}

/// Driver requests for a change of settings when the new or old ones dial
/// out. A new gateway, PSK, reqid or mode starts over; new selectors
/// (grant or release) are a CHILD SA rekey the router starts itself (the
/// gateway's copy of the grants is updated before the router hears of a
/// grant, and a release only narrows).
pub fn requests(old: Option<&ResponderSettings>, new: Option<&ResponderSettings>) -> Vec<Request> {
    match (old, new) {
        (None, None) => Vec::new(),
        (Some(o), None) => vec![Request::Disconnect(o.peer)],
        (None, Some(n)) => vec![Request::Connect(tunnel_config(n))],
        (Some(o), Some(n)) => {
            let restart = o.peer != n.peer
                || o.peer_id != n.peer_id
                || o.psk.expose_secret() != n.psk.expose_secret()
                || o.reqid != n.reqid
                || o.dial_out != n.dial_out;
            if restart {
                // Back to gateway-initiated: wait as responder again.
                let then = if n.dial_out {
                    Request::Connect(tunnel_config(n))
                } else {
                    Request::Accept(tunnel_config(n))
                };
                vec![Request::Disconnect(o.peer), then]
            } else if o.local_ts != n.local_ts || o.remote_ts != n.remote_ts {
                let t = tunnel_config(n);
                vec![Request::SetTrafficSelectors(n.peer, t.local_ts, t.remote_ts)]
            } else {
                Vec::new()
            }
        }
    }
}

/// The driver handle, remembering the dial-out tunnel asked for.
#[derive(Debug, Clone)]
pub struct DialOutSink {
    pub drv: DriverHandle,
    pub wanted: Arc<Mutex<Option<TunnelConfig>>>,
}

impl DriverSink for DialOutSink {
    fn request(&self, r: Request) -> Result<(), DriverError> {
        if let Ok(mut w) = self.wanted.lock() {
            match &r {
                Request::Connect(t) => *w = Some(t.clone()),
                Request::Disconnect(p) if w.as_ref().is_some_and(|t| t.peer == *p) => *w = None,
                Request::Accept(_) => *w = None,
                Request::SetTrafficSelectors(p, l, rts) => {
                    if let Some(t) = w.as_mut().filter(|t| t.peer == *p) {
                        t.local_ts = l.clone();
                        t.remote_ts = rts.clone();
                    }
                }
                _ => {}
            }
        }
        self.drv.request_detached(r)
    }
    fn is_up(&self, peer: std::net::Ipv4Addr) -> bool {
        self.drv.is_up(peer)
    }
    fn installed_sas(&self) -> Vec<SaSpec> {
        self.drv.installed_sas()
    }
    fn stop(self) {
        DriverSink::stop(self.drv);
    }
}

/// Dials again after a tunnel the router initiated went down on its own.
pub fn redial_on(ev: &DriverEvent, sink: &DialOutSink) {
    let DriverEvent::TunnelDown { peer, reason } = ev else {
        return;
    };
    if *reason == DownReason::Closed {
        return;
    }
    let peer = *peer;
    let sink = sink.clone();
    tokio::spawn(async move {
        tokio::time::sleep(REDIAL_AFTER).await;
        let cfg = sink
            .wanted
            .lock()
            .ok()
            .and_then(|w| w.clone())
            .filter(|t| t.peer == peer);
        if let Some(cfg) = cfg {
            if !sink.drv.is_up(peer) {
                log::info!("{} dialing the gateway {peer} again", cfg.log_label);
                let _ = sink.drv.request_detached(Request::Restart(cfg));
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use vpnnat_datapath::Ipv4Cidr;
    use vpnnat_proto::keys::Psk;

    fn settings(gw: &str, hosts: &[u8]) -> ResponderSettings {
        ResponderSettings {
            local: Ipv4Addr::new(192, 0, 2, 2),
            peer: gw.parse().unwrap(),
            peer_id: "gw1".into(),
            psk: Psk::from_array([1; 32]),
            local_ts: hosts
                .iter()
                .map(|h| Ipv4Cidr::host(Ipv4Addr::new(10, 64, 0, *h)))
                .collect(),
            remote_ts: vec![Ipv4Cidr::new(Ipv4Addr::new(172, 16, 0, 0), 24).unwrap()],
            reqid: 0x5650_0100,
            terminal_id: "home-1".into(),
            dial_out: true,
        }
    }

    fn text(v: &[Request]) -> Vec<String> {
        v.iter()
            .map(|r| match r {
                Request::Connect(t) => format!("connect {} ts={}", t.peer, t.local_ts.len()),
                Request::Disconnect(p) => format!("disconnect {p}"),
                Request::SetTrafficSelectors(p, l, _) => format!("rekey {p} ts={}", l.len()),
                Request::Accept(t) => format!("accept {}", t.peer),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn the_router_initiates_rekeys_its_grants_and_hangs_up_at_vpn_end() {
        let a = settings("198.51.100.21", &[1, 2]);
        let b = settings("198.51.100.21", &[1, 2, 3]);
        let moved = settings("198.51.100.22", &[1, 2, 3]);
        assert_eq!(text(&requests(None, Some(&a))), ["connect 198.51.100.21 ts=2"]);
        assert_eq!(text(&requests(Some(&a), Some(&b))), ["rekey 198.51.100.21 ts=3"]);
        assert_eq!(text(&requests(Some(&b), Some(&a))), ["rekey 198.51.100.21 ts=2"]);
        assert!(requests(Some(&a), Some(&a)).is_empty());
        // The center gave another gateway (the old one died): move.
        assert_eq!(
            text(&requests(Some(&b), Some(&moved))),
            ["disconnect 198.51.100.21", "connect 198.51.100.22 ts=3"]
        );
        // VPN end: the router deletes its IKE SA.
        assert_eq!(text(&requests(Some(&b), None)), ["disconnect 198.51.100.21"]);
        // From gateway-initiated to router-initiated and back: start over.
        let waiting = ResponderSettings {
            dial_out: false,
            ..a.clone()
        };
        assert_eq!(
            text(&requests(Some(&waiting), Some(&a))),
            ["disconnect 198.51.100.21", "connect 198.51.100.21 ts=2"]
        );
        assert_eq!(
            text(&crate::driver_responder::requests(Some(&a), Some(&waiting))),
            ["disconnect 198.51.100.21", "accept 198.51.100.21"]
        );
    }

    /// Issue 18, item 12: the router dials out expecting the gateway
    /// identity the center named, and starts over when it names another.
    #[test]
    fn the_gateway_must_be_who_the_center_says() {
        let a = settings("198.51.100.21", &[1]);
        let r = requests(None, Some(&a));
        let [Request::Connect(t)] = r.as_slice() else {
            panic!("one connect: {r:?}")
        };
        assert_eq!(t.remote_id, Some(vpnnat_ike::Identity::fqdn("gw1")));
        let renamed = ResponderSettings {
            peer_id: "gw1.center.example".into(),
            ..a.clone()
        };
        assert_eq!(
            text(&requests(Some(&a), Some(&renamed))),
            ["disconnect 198.51.100.21", "connect 198.51.100.21 ts=1"]
        );
    }

    #[test]
    fn the_identity_names_the_terminal() {
        let id = identity(&TerminalId::new("home-7").unwrap());
        assert_eq!(id.data, b"vpnnat-router:home-7");
    }
}
