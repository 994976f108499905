//! The operator login under a flood of wrong passwords (issue 18 item 4),
//! against the real UI server over loopback: attackers connect from
//! 127.0.0.2..=127.0.0.11 (any 127/8 address is this host's), the
//! operator from 127.0.0.1, the trusted operator network.

use super::*;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;
use tokio::sync::oneshot;

use crate::center::tests::{center_with, TestCenter};

const OPERATOR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

fn attacker(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 1 + i)
}

/// POSTs the login form from `src`: (status, Set-Cookie present).
async fn login_from(addr: SocketAddr, src: Ipv4Addr, password: &str) -> (u16, bool) {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(IpAddr::V4(src), 0)).unwrap();
    let s = sock.connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method("POST")
        .uri("/login")
        .header("host", "ui")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(format!("password={password}"))))
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let cookie = resp.headers().contains_key(SET_COOKIE);
    let _ = resp.into_body().collect().await;
    (status, cookie)
}

async fn start(c: Arc<TestCenter>, hash: PasswordHash, hash_slots: usize) -> (SocketAddr, oneshot::Sender<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let settings = UiSettings {
        operator_hashes: vec![hash],
        session_ttl: Duration::from_secs(600),
        dns_domain: None,
        throttle: ThrottleConfig::default(),
        operator_networks: vec!["127.0.0.1/32".parse().unwrap()],
        hash_slots,
        account_iterations: 1000,
        totp_required_roles: Vec::new(),
        clock: Clock::system(),
    };
    crate::accounts::manage::seed_admins(&mut c.store().unwrap(), &settings.operator_hashes, 0).unwrap();
    tokio::spawn(run(
        l,
        async {
            let _ = rx.await;
        },
        c,
        settings,
    ));
    (addr, tx)
}

/// 10 addresses send 12 wrong passwords each, 120 in all (before, the 50th
/// locked every operator out for 60 s); between their rounds the operator
/// logs in from the trusted network, every time. A right password from an
/// eleventh, untrusted address meets the brake on untrusted sources.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_from_ten_addresses_never_locks_out_the_trusted_operator() {
    let (c, _g, _r) = center_with("10.64.0.0/24", &[2]);
    let c = Arc::new(c);
    let hash = PasswordHash::create("operator pass", 1000, &SystemRandom::new()).unwrap();
    // Enough slots for every guess (no 503): the brakes alone decide.
    let (addr, _stop) = start(c.clone(), hash, 16).await;
    let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
    for round in 0..12 {
        let guesses: Vec<_> = (1..=10)
            .map(|i| tokio::spawn(login_from(addr, attacker(i), "guess")))
            .collect();
        for g in guesses {
            *statuses.entry(g.await.unwrap().0).or_default() += 1;
        }
        let (status, cookie) = login_from(addr, OPERATOR, "operator+pass").await;
        assert_eq!((status, cookie), (303, true), "operator login after round {round}");
    }
    let wrong_but_checked = statuses.get(&401).copied().unwrap_or(0);
    assert_eq!(wrong_but_checked, 50, "{statuses:?}");
    assert!(statuses.get(&429).copied().unwrap_or(0) > 0, "{statuses:?}");
    let (status, _) = login_from(addr, attacker(11), "operator+pass").await;
    assert_eq!(status, 429, "the brake on untrusted sources holds");
    // One audit row per address and wait, not one per refused guess.
    let rows = c
        .store()
        .unwrap()
        .audit_log(&crate::storage::AuditFilter {
            limit: 10_000,
            ..Default::default()
        })
        .unwrap();
    let throttled = rows.iter().filter(|r| r.action == "login_throttled").count();
    assert!((1..=11).contains(&throttled), "{throttled} login_throttled rows");
    println!(
        "ui login flood: attackers' answers {statuses:?}; operator 12/12 logins from the trusted network; \
         {throttled} login_throttled audit rows"
    );
}

/// With the one untrusted hashing slot busy on a slow check, another
/// untrusted login is answered 503 at once instead of queueing, while the
/// trusted operator's login goes through its own slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_hashing_slot_answers_503_at_once_and_spares_the_operator() {
    // A hash that takes about a second to check on this machine.
    let t0 = Instant::now();
    let probe = 20_000;
    PasswordHash::create("x", probe, &SystemRandom::new()).unwrap();
    let per_iter = t0.elapsed().as_secs_f64() / f64::from(probe);
    let iterations = ((1.0 / per_iter.max(1e-9)) as u32).clamp(probe, 50_000_000);
    let hash = PasswordHash::create("operator pass", iterations, &SystemRandom::new()).unwrap();
    let check = t0.elapsed();
    let (c, _g, _r) = center_with("10.64.0.0/24", &[2]);
    let (addr, _stop) = start(Arc::new(c), hash, 1).await;

    let slow = tokio::spawn(login_from(addr, attacker(1), "guess"));
    tokio::time::sleep(check / 4).await;
    let t = Instant::now();
    let (status, _) = login_from(addr, attacker(2), "guess").await;
    let busy = t.elapsed();
    assert_eq!(status, 503);
    assert!(busy < check / 4, "503 after {busy:?} (a check takes {check:?})");
    let (status, cookie) = login_from(addr, OPERATOR, "operator+pass").await;
    assert_eq!((status, cookie), (303, true));
    assert_eq!(slow.await.unwrap().0, 401);
    println!("ui login slots: a check takes ~{check:?}; a login while the untrusted slot is busy: 503 after {busy:?}; the trusted operator logged in meanwhile");
}

/// A slow password check runs beside the async worker, not on it: on a
/// runtime with one worker (a `current_thread` test), a 5 ms ticker keeps
/// ticking while the check takes its half second. Before, the check ran on
/// the worker and the ticker stood still for all of it.
#[tokio::test]
async fn a_password_check_never_stalls_the_async_worker() {
    let t0 = Instant::now();
    let probe = 20_000;
    PasswordHash::create("x", probe, &SystemRandom::new()).unwrap();
    let per_iter = t0.elapsed().as_secs_f64() / f64::from(probe);
    let iterations = ((0.5 / per_iter.max(1e-9)) as u32).clamp(probe, 50_000_000);
    let t1 = Instant::now();
    let hash = PasswordHash::create("operator pass", iterations, &SystemRandom::new()).unwrap();
    let check = t1.elapsed();
    let (c, _g, _r) = center_with("10.64.0.0/24", &[2]);
    let (addr, _stop) = start(Arc::new(c), hash, 1).await;

    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = tokio::spawn({
        let done = done.clone();
        async move {
            let mut worst = Duration::ZERO;
            let mut last = Instant::now();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let now = Instant::now();
                worst = worst.max(now - last);
                last = now;
            }
            worst
        }
    });
    let t = Instant::now();
    let (status, _) = login_from(addr, attacker(1), "guess").await;
    let took = t.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let worst = ticker.await.unwrap();
    assert_eq!(status, 401);
    assert!(took >= check / 2, "the login took {took:?}, a check {check:?}");
    assert!(
        worst < check / 3,
        "the worker stood still for {worst:?} (a check takes {check:?})"
    );
    println!("ui login off the worker: a check {check:?}, the login {took:?}, the 5 ms ticker's worst gap {worst:?}");
}
