use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use vpnnat_datapath::Ipv4Cidr;
use vpnnat_ike_driver::{DriverError, Request};
use vpnnat_proto::keys::{Psk, SecretBytes};

use super::*;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn settings(peer: &str, psk: u8, hosts: &[&str]) -> ResponderSettings {
    ResponderSettings {
        local: ip("198.51.100.21"),
        peer: ip(peer),
        peer_id: peer.to_string(),
        psk: Psk::from_array([psk; 32]),
        local_ts: hosts.iter().map(|h| Ipv4Cidr::host(ip(h))).collect(),
        remote_ts: vec![Ipv4Cidr::new(ip("10.64.0.0"), 16).unwrap()],
        reqid: 0x5650_0100,
        terminal_id: "home-1".into(),
        dial_out: false,
    }
}

/// A request as text (no PSK: the tests compare its bytes separately).
fn describe(r: &Request) -> String {
    match r {
        Request::Accept(t) => format!("accept {} ts={} reqid={:#x}", t.peer, t.local_ts.len(), t.reqid),
        Request::Connect(t) => format!("connect {}", t.peer),
        Request::Disconnect(p) => format!("disconnect {p}"),
        Request::Restart(t) => format!("restart {}", t.peer),
        Request::SetTrafficSelectors(p, l, _) => format!("set-ts {p} ts={}", l.len()),
        Request::HangUp(i) | Request::RefreshDialIn(i) => format!("dial-in {}", String::from_utf8_lossy(&i.data)),
    }
}

fn texts(v: &[Request]) -> Vec<String> {
    v.iter().map(describe).collect()
}

#[test]
fn requests_follow_the_settings() {
    let a = settings("203.0.113.101", 1, &["100.64.0.1"]);
    assert!(requests(None, None).is_empty());
    assert!(requests(Some(&a), Some(&a.clone())).is_empty());
    assert_eq!(
        texts(&requests(None, Some(&a))),
        ["accept 203.0.113.101 ts=1 reqid=0x56500100"]
    );
    assert_eq!(texts(&requests(Some(&a), None)), ["disconnect 203.0.113.101"]);

    let moved = settings("203.0.113.102", 1, &["100.64.0.1"]);
    assert_eq!(
        texts(&requests(Some(&a), Some(&moved))),
        ["disconnect 203.0.113.101", "accept 203.0.113.102 ts=1 reqid=0x56500100"]
    );
    let rekeyed = settings("203.0.113.101", 2, &["100.64.0.1"]);
    assert_eq!(
        texts(&requests(Some(&a), Some(&rekeyed))),
        ["disconnect 203.0.113.101", "accept 203.0.113.101 ts=1 reqid=0x56500100"]
    );
    let granted = settings("203.0.113.101", 1, &["100.64.0.1", "100.64.0.2"]);
    assert_eq!(
        texts(&requests(Some(&a), Some(&granted))),
        [
            "accept 203.0.113.101 ts=2 reqid=0x56500100",
            "set-ts 203.0.113.101 ts=2"
        ]
    );
    // A release: the gateway narrows the selectors with its own rekey.
    assert_eq!(
        texts(&requests(Some(&granted), Some(&a))),
        ["accept 203.0.113.101 ts=1 reqid=0x56500100"]
    );
    // One address for another: it grows, so we rekey.
    let swapped = settings("203.0.113.101", 1, &["100.64.0.2"]);
    assert_eq!(
        texts(&requests(Some(&a), Some(&swapped))),
        [
            "accept 203.0.113.101 ts=1 reqid=0x56500100",
            "set-ts 203.0.113.101 ts=1"
        ]
    );
    // Another gateway identity: the tunnel starts over, checked against it.
    let mut renamed = a.clone();
    renamed.peer_id = "gw".into();
    assert_eq!(
        texts(&requests(Some(&a), Some(&renamed))),
        ["disconnect 203.0.113.101", "accept 203.0.113.101 ts=1 reqid=0x56500100"]
    );
}

#[test]
fn tunnel_config_carries_psk_and_selectors() {
    let s = settings("203.0.113.101", 7, &["100.64.0.1"]);
    let t = tunnel_config(&s);
    assert_eq!(t.psk.expose(), s.psk.expose_secret().as_slice());
    assert_eq!(t.local_ts, vec![vpnnat_ike::TrafficSelector::host(ip("100.64.0.1"))]);
    assert_eq!(
        t.remote_ts,
        vec![vpnnat_ike::TrafficSelector::subnet(ip("10.64.0.0"), 16)]
    );
    // The gateway must authenticate as the identity the center sent.
    assert_eq!(t.remote_id, Some(vpnnat_ike::Identity::ipv4(ip("203.0.113.101"))));
    let mut named = s.clone();
    named.peer_id = "gw1.center.example".into();
    assert_eq!(
        tunnel_config(&named).remote_id,
        Some(vpnnat_ike::Identity::fqdn("gw1.center.example"))
    );
}

#[derive(Clone, Default)]
struct Recorder {
    log: Arc<Mutex<Vec<String>>>,
    up: Arc<Mutex<BTreeSet<Ipv4Addr>>>,
}

impl DriverSink for Recorder {
    fn request(&self, r: Request) -> Result<(), DriverError> {
        self.log.lock().unwrap().push(describe(&r));
        Ok(())
    }
    fn is_up(&self, peer: Ipv4Addr) -> bool {
        self.up.lock().unwrap().contains(&peer)
    }
    fn installed_sas(&self) -> Vec<SaSpec> {
        Vec::new()
    }
    fn stop(self) {
        self.log.lock().unwrap().push("stop".into());
    }
}

fn responder(rec: &Recorder, fail: bool, starts: Arc<Mutex<Vec<Ipv4Addr>>>) -> IkeDriverResponder<Recorder> {
    let rec = rec.clone();
    IkeDriverResponder::with_starter(Box::new(move |local| {
        starts.lock().unwrap().push(local);
        let rec = rec.clone();
        Box::pin(async move {
            if fail {
                Err(DriverError::Stopped)
            } else {
                Ok(rec)
            }
        })
    }))
}

async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn starts_lazily_and_applies_changes() {
    let rec = Recorder::default();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let mut r = responder(&rec, false, starts.clone());
    assert_eq!(r.status(), IkeStatus::Unconfigured);
    r.configure(None);
    settle().await;
    assert!(starts.lock().unwrap().is_empty());

    let a = settings("203.0.113.101", 1, &["100.64.0.1"]);
    r.configure(Some(a.clone()));
    // A change while the driver starts is applied once it is ready.
    let granted = settings("203.0.113.101", 1, &["100.64.0.1", "100.64.0.2"]);
    r.configure(Some(granted.clone()));
    settle().await;
    assert_eq!(*starts.lock().unwrap(), [ip("198.51.100.21")]);
    assert_eq!(*rec.log.lock().unwrap(), ["accept 203.0.113.101 ts=2 reqid=0x56500100"]);
    assert_eq!(r.status(), IkeStatus::Listening);
    rec.up.lock().unwrap().insert(ip("203.0.113.101"));
    assert_eq!(r.status(), IkeStatus::Established);

    // Unchanged settings: nothing sent.
    r.configure(Some(granted.clone()));
    assert_eq!(rec.log.lock().unwrap().len(), 1);

    let moved = settings("203.0.113.102", 1, &["100.64.0.1"]);
    r.configure(Some(moved));
    r.configure(None);
    assert_eq!(r.status(), IkeStatus::Unconfigured);
    assert_eq!(
        rec.log.lock().unwrap()[1..],
        [
            "disconnect 203.0.113.101",
            "accept 203.0.113.102 ts=1 reqid=0x56500100",
            "disconnect 203.0.113.102"
        ]
    );
    // One driver for the whole time.
    assert_eq!(starts.lock().unwrap().len(), 1);

    // A new local address: the old driver stops, a new one gets the tunnel.
    let mut other = a.clone();
    other.local = ip("198.51.100.22");
    r.configure(Some(other));
    settle().await;
    assert_eq!(*starts.lock().unwrap(), [ip("198.51.100.21"), ip("198.51.100.22")]);
    assert_eq!(
        rec.log.lock().unwrap()[4..],
        ["stop", "accept 203.0.113.101 ts=1 reqid=0x56500100"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_start_is_reported_and_retried_with_back_off() {
    let rec = Recorder::default();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let mut r = responder(&rec, true, starts.clone());
    let a = settings("203.0.113.101", 1, &["100.64.0.1"]);
    r.configure(Some(a.clone()));
    settle().await;
    assert!(matches!(r.status(), IkeStatus::Failed(_)));
    // Every state change calls configure: no new attempt inside the delay.
    for _ in 0..5 {
        r.configure(Some(a.clone()));
        settle().await;
    }
    assert_eq!(starts.lock().unwrap().len(), 1);
    tokio::time::advance(super::RETRY_FIRST).await;
    r.configure(Some(a.clone()));
    settle().await;
    assert_eq!(starts.lock().unwrap().len(), 2);
    // The delay doubles after a second failure.
    tokio::time::advance(super::RETRY_FIRST).await;
    r.configure(Some(a.clone()));
    settle().await;
    assert_eq!(starts.lock().unwrap().len(), 2);
    tokio::time::advance(super::RETRY_FIRST).await;
    r.configure(Some(a));
    settle().await;
    assert_eq!(starts.lock().unwrap().len(), 3);
    assert!(rec.log.lock().unwrap().is_empty());
    assert!(r.installed_sas().is_empty());
}

#[test]
fn outside_a_runtime_the_start_fails_cleanly() {
    let rec = Recorder::default();
    let mut r = responder(&rec, false, Arc::new(Mutex::new(Vec::new())));
    r.configure(Some(settings("203.0.113.101", 1, &["100.64.0.1"])));
    assert!(matches!(r.status(), IkeStatus::Failed(_)));
}
