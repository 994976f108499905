//! 100,000 junk datagrams at a live driver over loopback (issue 18 item 7):
//! its log grows by a bounded number of lines (captured through the `log`
//! crate: this test binary's logger), and the IKE SA it holds with its
//! gateway keeps answering meanwhile (DPD every 300 ms, a CHILD SA rekey)
//! and afterwards (the INFORMATIONAL DELETE of a disconnect). Before, the
//! driver wrote a warning for every dropped datagram. Prints the figures
//! (`cargo test -p vpnnat-ike-driver --test junk_flood -- --nocapture`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedReceiver;
use vpnnat_ike::{DownReason, Secret, TrafficSelector};
use vpnnat_ike_driver::{DriverConfig, DriverEvent, DriverHandle, IkeDriver, Ports, RecordingInstaller, TunnelConfig};

const GW: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const RT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const STRANGER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const JUNK: usize = 100_000;

/// Every line any code of this process logs, at every level.
static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        if let Ok(mut l) = LINES.lock() {
            l.push(format!("{} {}: {}", r.level(), r.target(), r.args()));
        }
    }
    fn flush(&self) {}
}

fn lines() -> Vec<String> {
    LINES.lock().unwrap().clone()
}

struct Side {
    h: DriverHandle,
    ev: UnboundedReceiver<DriverEvent>,
    seen: Vec<DriverEvent>,
}

impl Side {
    async fn wait(&mut self, what: &str, f: impl Fn(&DriverEvent) -> bool) -> DriverEvent {
        common::wait_event(&mut self.ev, &mut self.seen, Duration::from_secs(20), what, f).await
    }

    /// Takes the events that arrived so far.
    fn drain(&mut self) {
        while let Ok(e) = self.ev.try_recv() {
            self.seen.push(e);
        }
    }
}

async fn side(local: Ipv4Addr, ports: Ports, tweak: impl Fn(&mut DriverConfig)) -> Option<Side> {
    let mut cfg = DriverConfig::new(local);
    cfg.ports = ports;
    cfg.kernel_events = false;
    cfg.shutdown_grace = Duration::from_secs(2);
    tweak(&mut cfg);
    let (h, ev) = IkeDriver::start(cfg, Box::new(RecordingInstaller::new())).await.ok()?;
    Some(Side {
        h,
        ev,
        seen: Vec::new(),
    })
}

fn tunnel(peer: Ipv4Addr, local: &str, remote: &str, reqid: u32) -> TunnelConfig {
    let (l, r): (Ipv4Addr, Ipv4Addr) = (local.parse().unwrap(), remote.parse().unwrap());
    TunnelConfig {
        peer,
        psk: Secret::from_slice(b"the right key"),
        local_ts: vec![TrafficSelector::subnet(l, 24)],
        remote_ts: vec![TrafficSelector::subnet(r, 24)],
        reqid,
        remote_id: None,
        log_label: String::new(),
    }
}

fn is_down(e: &DriverEvent) -> bool {
    matches!(e, DriverEvent::TunnelDown { .. })
}

/// Junk of a few shapes: random bytes, IKE-header-sized garbage with
/// random SPIs, the NAT-T non-ESP marker followed by garbage.
fn junk(i: usize) -> Vec<u8> {
    let x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let b = x.to_le_bytes();
    match i % 3 {
        0 => b.to_vec(),
        1 => {
            let mut v = [b, b, b, b].concat();
            v.truncate(28);
            v[17] = 0x21; // "IKE_SA_INIT" after a plausible header
            v
        }
        _ => [&[0u8; 4][..], &b, &b].concat(),
    }
}

/// The summaries' counts: datagrams the driver said it dropped.
fn dropped_in(lines: &[String]) -> u64 {
    lines
        .iter()
        .filter_map(|l| l.split_once("IKE: dropped ")?.1.split_once(' ')?.0.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_flood_logs_a_bounded_number_of_lines_and_the_tunnel_keeps_answering() {
    // One logger per process: whichever test comes first installs it.
    let _ = log::set_boxed_logger(Box::new(Capture));
    log::set_max_level(log::LevelFilter::Trace);
    let interval = Duration::from_millis(500);
    let (mut g, mut r, ports) = 'pair: {
        for _ in 0..20 {
            let a = UdpSocket::bind((GW, 0)).unwrap();
            let b = UdpSocket::bind((GW, 0)).unwrap();
            let ports = Ports {
                ike: a.local_addr().unwrap().port(),
                natt: b.local_addr().unwrap().port(),
            };
            drop((a, b));
            let g = side(GW, ports, |c| c.dpd_interval = Some(Duration::from_millis(300))).await;
            let r = side(RT, ports, |c| c.drop_log_interval = interval).await;
            if let (Some(g), Some(r)) = (g, r) {
                break 'pair (g, r, ports);
            }
        }
        panic!("no free port pair on loopback");
    };
    r.h.accept(tunnel(GW, "10.64.0.0", "172.16.0.0", 0x5650_0008))
        .await
        .unwrap();
    g.h.connect(tunnel(RT, "172.16.0.0", "10.64.0.0", 0x5650_0007))
        .await
        .unwrap();
    g.wait("gw up", |e| matches!(e, DriverEvent::TunnelUp { .. })).await;
    r.wait("rt up", |e| matches!(e, DriverEvent::TunnelUp { .. })).await;

    let before = lines().len();
    let t0 = Instant::now();
    // Half from a stranger, half from the gateway's own address (another
    // port: the router's tunnel core sees and rejects them), paced a little
    // so that most reach the driver rather than overflow the socket buffer.
    let sender = std::thread::spawn(move || {
        let stranger = UdpSocket::bind((STRANGER, 0)).unwrap();
        let spoof = UdpSocket::bind((GW, 0)).unwrap();
        let ike = SocketAddr::from((RT, ports.ike));
        let natt = SocketAddr::from((RT, ports.natt));
        for i in 0..JUNK {
            let from = if i % 2 == 0 { &stranger } else { &spoof };
            let to = if i % 3 == 2 { natt } else { ike };
            let _ = from.send_to(&junk(i), to);
            if i % 64 == 63 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    // Meanwhile the gateway rekeys the CHILD SA: an exchange the flooded
    // router must answer (and DPD runs every 300 ms of silence).
    tokio::time::sleep(Duration::from_millis(200)).await;
    g.h.rekey_child(RT).await.unwrap();
    g.wait("child rekey during the flood", |e| {
        matches!(e, DriverEvent::ChildSaRemoved { .. })
    })
    .await;
    tokio::task::spawn_blocking(move || sender.join().unwrap())
        .await
        .unwrap();
    let flood = t0.elapsed();
    // Quiet for a while: DPD exchanges go on, the last summary comes out.
    tokio::time::sleep(interval * 3).await;
    g.drain();
    r.drain();
    assert!(!g.seen.iter().any(is_down), "{:?}", g.seen);
    assert!(!r.seen.iter().any(is_down), "{:?}", r.seen);
    // This test's lines (the other test's stranger is 127.0.0.4).
    let during: Vec<String> = lines()[before..]
        .iter()
        .filter(|l| !l.contains("127.0.0.4"))
        .cloned()
        .collect();
    let summaries: Vec<&String> = during.iter().filter(|l| l.contains("IKE: dropped ")).collect();
    let seen = dropped_in(&during);

    // The informational DELETE after the flood is answered too, and at
    // once: had a DPD of the gateway gone unanswered, the DELETE would wait
    // behind its retransmission (1 s, the exchange window is one).
    let t_delete = Instant::now();
    g.h.disconnect(RT).await.unwrap();
    assert_eq!(
        r.wait("rt down", is_down).await,
        DriverEvent::TunnelDown {
            peer: GW,
            reason: DownReason::DeletedByPeer
        }
    );
    let delete = t_delete.elapsed();
    assert!(delete < Duration::from_millis(900), "the DELETE took {delete:?}");
    assert_eq!(
        g.wait("gw down", is_down).await,
        DriverEvent::TunnelDown {
            peer: RT,
            reason: DownReason::Closed
        }
    );

    let elapsed = t0.elapsed();
    println!(
        "junk flood: {JUNK} datagrams sent in {flood:?}, {seen} dropped by the driver (the rest by the kernel: \
         socket buffer, ESP on the NAT-T port); {} log lines in {elapsed:?}, {} of them summaries; the DELETE \
         after it answered in {delete:?}:",
        during.len(),
        summaries.len()
    );
    for s in &summaries {
        println!("  {s}");
    }
    // The driver did see a flood (not just the kernel).
    assert!(seen >= (JUNK / 10) as u64, "only {seen} drops reported: {during:#?}");
    // Both kinds of sender were counted, at their levels.
    assert!(
        summaries.iter().any(|l| l.contains("not a configured peer")),
        "{summaries:#?}"
    );
    assert!(summaries.iter().any(|l| l.contains("rejected: ")), "{summaries:#?}");
    assert!(
        summaries
            .iter()
            .any(|l| l.starts_with("WARN ") && l.contains("rejected: ")),
        "{summaries:#?}"
    );
    // One summary per interval at most, and a handful of other lines (the
    // rekey): bounded by time, not by the datagrams sent.
    let intervals = (elapsed.as_millis() / interval.as_millis()) as usize + 2;
    assert!(
        summaries.len() <= intervals,
        "{} summaries in {elapsed:?}",
        summaries.len()
    );
    assert!(during.len() <= intervals + 40, "{} lines: {during:#?}", during.len());
    // The owner's event channel got a bounded number of rejections too
    // (before: one per rejected datagram, tens of thousands).
    let rejections = r
        .seen
        .iter()
        .filter(|e| matches!(e, DriverEvent::Rejected { .. }))
        .count();
    let allowed = intervals * usize::try_from(vpnnat_ike_driver::drop_log::MAX_EVENTS).unwrap();
    assert!(
        rejections <= allowed,
        "{rejections} rejection events, {allowed} allowed"
    );
    println!("  {rejections} rejection events reached the owner");
}

/// Only strangers: the summary is debug, not a warning (the internet's
/// noise at a router's WAN address is not news).
#[tokio::test]
async fn strangers_alone_are_summed_up_at_debug_level() {
    // One logger per process: whichever test comes first installs it.
    let _ = log::set_boxed_logger(Box::new(Capture));
    log::set_max_level(log::LevelFilter::Trace);
    let a = UdpSocket::bind((RT, 0)).unwrap();
    let b = UdpSocket::bind((RT, 0)).unwrap();
    let ports = Ports {
        ike: a.local_addr().unwrap().port(),
        natt: b.local_addr().unwrap().port(),
    };
    drop((a, b));
    let Some(r) = side(RT, ports, |c| c.drop_log_interval = Duration::from_millis(200)).await else {
        return; // port taken meanwhile: nothing to test
    };
    r.h.accept(tunnel(GW, "10.64.0.0", "172.16.0.0", 0x5650_0009))
        .await
        .unwrap();
    let stranger = UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 4), 0)).unwrap();
    for i in 0..100 {
        stranger.send_to(&junk(i), (RT, ports.ike)).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let found = lines()
            .into_iter()
            .find(|l| l.contains("IKE: dropped ") && l.contains("127.0.0.4:"));
        if let Some(l) = found {
            break l;
        }
        assert!(Instant::now() < deadline, "no summary: {:#?}", lines());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(line.starts_with("DEBUG "), "{line}");
    assert!(line.contains(" not a configured peer (first from 127.0.0.4:"), "{line}");
    assert!(
        !lines()
            .iter()
            .any(|l| l.contains("127.0.0.4") && !l.contains("IKE: dropped ")),
        "a line per datagram: {:#?}",
        lines()
    );
}
