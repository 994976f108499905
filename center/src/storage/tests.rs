use super::*;
use vpnnat_proto::auth::{Nonce, NonceStore};
use vpnnat_proto::types::Ipv4Cidr;

fn cidr(s: &str) -> Ipv4Cidr {
    s.parse().unwrap()
}

fn db(pool: &str) -> Storage {
    let mut s = Storage::open_in_memory().unwrap();
    s.init_pool(&cidr(pool)).unwrap();
    s
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn install(s: &mut Storage, id: &str, now: u64) -> TerminalRow {
    s.install_terminal(&InstallRecord {
        terminal_id: id,
        psk_hex: &"11".repeat(32),
        secret_id2_hex: &"22".repeat(32),
        maintenance_password_hash: "h",
        now,
    })
    .unwrap()
}

fn new_req<'a>(id: &'a str, names: &'a [String], level: &'a str) -> NewRequest<'a> {
    NewRequest {
        terminal_id: id,
        router_ip: ip("203.0.113.5"),
        claimant_name: "Taro",
        claimant_level: level,
        phone: "03-1234-5678",
        urgency: "high",
        content: "printer broken",
        terminal_names: names,
        now: 100,
        max_open: None,
        expires_at: None,
    }
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn migrations_are_versioned_and_idempotent() {
    let dir = std::env::temp_dir().join(format!("vpnnat-center-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.db");
    let _ = std::fs::remove_file(&path);
    {
        let s = Storage::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), Storage::schema_version_known());
    }
    // Reopening runs nothing twice.
    let mut s = Storage::open(&path).unwrap();
    assert_eq!(s.schema_version().unwrap(), Storage::schema_version_known());
    s.init_pool(&cidr("10.64.0.0/24")).unwrap();
    s.init_pool(&cidr("10.64.0.0/24")).unwrap();
    assert!(matches!(
        s.init_pool(&cidr("10.65.0.0/24")),
        Err(StorageError::PoolMismatch { .. })
    ));
    // A database from a newer build is refused.
    s.conn.pragma_update(None, "user_version", 99).unwrap();
    drop(s);
    assert!(matches!(
        Storage::open(&path),
        Err(StorageError::SchemaTooNew { found: 99, .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pool_bounds_skip_network_and_broadcast() {
    assert_eq!(
        pool_bounds(&cidr("10.64.0.0/30")),
        Some((u32::from(ip("10.64.0.1")), u32::from(ip("10.64.0.2"))))
    );
    assert_eq!(
        pool_bounds(&cidr("10.64.0.0/31")),
        Some((u32::from(ip("10.64.0.0")), u32::from(ip("10.64.0.1"))))
    );
    assert_eq!(
        pool_bounds(&cidr("10.64.0.5/32")).map(|b| b.0),
        Some(u32::from(ip("10.64.0.5")))
    );
    let (a, b) = pool_bounds(&cidr("10.0.0.0/8")).unwrap();
    assert_eq!(b - a + 1, (1 << 24) - 2);
}

#[test]
fn assign_reuse_release_and_merge() {
    let mut s = db("10.64.0.0/29"); // 6 usable: .1 - .6
    let a = s.assign_address("r1", "pc1", 1).unwrap();
    let b = s.assign_address("r1", "pc2", 1).unwrap();
    let c = s.assign_address("r2", "pc1", 1).unwrap();
    assert_eq!((a, b, c), (ip("10.64.0.1"), ip("10.64.0.2"), ip("10.64.0.3")));
    // Same (router, name) -> same address.
    assert_eq!(s.assign_address("r1", "pc1", 2).unwrap(), a);
    s.check_pool().unwrap();
    // Release the middle one, then its neighbours: ranges merge back.
    assert_eq!(s.release_address("r1", "pc2").unwrap(), Some(b));
    assert_eq!(s.release_address("r1", "pc2").unwrap(), None);
    s.check_pool().unwrap();
    assert_eq!(s.pool_usage().unwrap().free_ranges, 2);
    s.release_address("r1", "pc1").unwrap();
    s.check_pool().unwrap();
    s.release_address("r2", "pc1").unwrap();
    s.check_pool().unwrap();
    let u = s.pool_usage().unwrap();
    assert_eq!((u.allocated, u.free, u.free_ranges), (0, 6, 1));
    // Lowest free first again.
    assert_eq!(s.assign_address("r3", "x", 3).unwrap(), a);
}

#[test]
fn release_merges_every_neighbour_case() {
    let mut s = db("10.64.0.0/28"); // .1 - .14
    for i in 0..14 {
        s.assign_address("r", &format!("h{i}"), 0).unwrap();
    }
    assert_eq!(s.pool_usage().unwrap().free_ranges, 0);
    // isolated
    s.release_address("r", "h5").unwrap();
    // merge into predecessor
    s.release_address("r", "h6").unwrap();
    // merge into successor
    s.release_address("r", "h3").unwrap();
    assert_eq!(s.pool_usage().unwrap().free_ranges, 2);
    // bridge both
    s.release_address("r", "h4").unwrap();
    assert_eq!(s.pool_usage().unwrap().free_ranges, 1);
    s.check_pool().unwrap();
    let u = s.pool_usage().unwrap();
    assert_eq!(u.free, 4);
}

#[test]
fn pool_exhaustion_is_clear_and_leaves_nothing() {
    let mut s = db("10.64.0.0/30"); // 2 usable
    install(&mut s, "r1", 1); // takes both
    assert_eq!(s.pool_usage().unwrap().free, 0);
    let e = s.assign_address("r1", "pc1", 2).unwrap_err();
    assert!(matches!(e, StorageError::PoolExhausted { .. }), "{e}");
    assert!(e.to_string().contains("10.64.0.0/30"));
    // A request for two names on a pool with one free address: nothing of it stays.
    let mut s = db("10.64.0.0/29"); // 6 usable
    install(&mut s, "r1", 1);
    install(&mut s, "r2", 1);
    s.assign_address("r3", "a", 1).unwrap();
    let n = names(&["pc1", "pc2"]);
    let before = s.pool_usage().unwrap();
    let e = s.create_request(&new_req("r1", &n, "general"), None).unwrap_err();
    assert!(matches!(e, StorageError::PoolExhausted { .. }));
    assert_eq!(s.pool_usage().unwrap(), before);
    assert!(s.list_requests(10).unwrap().is_empty());
    s.check_pool().unwrap();
}

#[test]
fn install_keeps_addresses_and_overwrites_secrets() {
    let mut s = db("10.64.0.0/24");
    let t1 = install(&mut s, "r1", 1);
    assert_ne!(t1.server_part_vpnnat, t1.router_part_vpnnat);
    let t2 = s
        .install_terminal(&InstallRecord {
            terminal_id: "r1",
            psk_hex: &"33".repeat(32),
            secret_id2_hex: &"44".repeat(32),
            maintenance_password_hash: "h2",
            now: 5,
        })
        .unwrap();
    assert_eq!(t1.server_part_vpnnat, t2.server_part_vpnnat);
    assert_eq!(t1.router_part_vpnnat, t2.router_part_vpnnat);
    let row = s.terminal("r1").unwrap().unwrap();
    assert_eq!(row.psk_hex, "33".repeat(32));
    assert_eq!(row.installed_at, 5);
    assert_eq!(s.pool_usage().unwrap().allocated, 2);
    assert!(!format!("{row:?}").contains("3333"), "secrets never in Debug");
    assert_eq!(s.count_terminals().unwrap(), 1);
}

#[test]
fn large_pool_10_slash_8_is_cheap() {
    let mut s = db("10.0.0.0/8");
    let u = s.pool_usage().unwrap();
    assert_eq!(u.size, (1 << 24) - 2);
    assert_eq!(u.free_ranges, 1);
    let start = std::time::Instant::now();
    let mut addrs = Vec::new();
    for i in 0..2000 {
        addrs.push(s.assign_address("r", &format!("h{i}"), 0).unwrap());
    }
    assert_eq!(addrs[0], ip("10.0.0.1"));
    assert_eq!(addrs[1999], ip("10.0.7.208"));
    // Free every other one: 1000 ranges, each release a couple of index probes.
    for i in (0..2000).step_by(2) {
        s.release_address("r", &format!("h{i}")).unwrap();
    }
    assert_eq!(s.pool_usage().unwrap().free_ranges, 1001);
    s.check_pool().unwrap();
    // Far below what a linear scan of 16M addresses would take.
    assert!(start.elapsed() < std::time::Duration::from_secs(20));
    // Addresses come back lowest first.
    assert_eq!(s.assign_address("q", "x", 0).unwrap(), ip("10.0.0.1"));
}

#[test]
fn requests_table_names_and_transitions() {
    let mut s = db("10.64.0.0/24");
    install(&mut s, "r1", 1);
    let n = names(&["pc1", "printer"]);
    let (num, grants) = s.create_request(&new_req("r1", &n, "general"), None).unwrap();
    assert_eq!(num, 1);
    assert_eq!(grants.len(), 2);
    assert!(grants.iter().all(|g| g.newly_assigned));
    assert_eq!(grants[0].table_name, "pc1");
    let (num2, grants2) = s
        .create_request(&new_req("r1", &names(&["pc1"]), "administrator"), None)
        .unwrap();
    assert_eq!(num2, 2);
    assert_eq!(grants2[0].vpnnat, grants[0].vpnnat, "reused per terminal name");
    assert!(!grants2[0].newly_assigned);
    assert_eq!(grants2[0].table_name, "administrator");
    let list = s.list_requests(10).unwrap();
    assert_eq!(list.iter().map(|r| r.acceptance_number).collect::<Vec<_>>(), vec![2, 1]);
    assert_eq!(list[1].state, RequestState::Waiting);
    // waiting -> in progress -> ended; no other way.
    assert_eq!(s.start_request(1, 10).unwrap().state, RequestState::InProgress);
    assert!(matches!(
        s.start_request(1, 11),
        Err(StorageError::BadTransition { .. })
    ));
    assert_eq!(s.end_request(1, 12).unwrap().state, RequestState::Ended);
    assert!(matches!(s.end_request(1, 13), Err(StorageError::BadTransition { .. })));
    assert!(matches!(
        s.start_request(1, 13),
        Err(StorageError::BadTransition { .. })
    ));
    assert!(matches!(s.start_request(77, 13), Err(StorageError::NotFound { .. })));
    // Judgments 1 and 3.
    assert!(!s.all_ended_for_name("r1", "pc1").unwrap(), "request 2 still names pc1");
    assert!(s.all_ended_for_name("r1", "printer").unwrap());
    assert!(!s.all_ended_for_terminal("r1").unwrap());
    s.end_request(2, 14).unwrap();
    assert!(s.all_ended_for_name("r1", "pc1").unwrap());
    assert!(s.all_ended_for_terminal("r1").unwrap());
}

#[test]
fn open_request_cap_counts_waiting_and_in_progress_per_router_and_writes_nothing() {
    let mut s = db("10.64.0.0/24");
    install(&mut s, "r1", 1);
    install(&mut s, "r2", 1);
    s.sync_gateways(&gws()).unwrap();
    let n = names(&["pc1"]);
    let capped = |id| NewRequest {
        max_open: Some(2),
        expires_at: None,
        ..new_req(id, &n, "general")
    };
    s.create_request(&capped("r1"), None).unwrap();
    s.start_request(1, 10).unwrap();
    s.create_request(&capped("r1"), None).unwrap();
    let before = s.dump(&[]).unwrap();
    let e = s.create_request(&capped("r1"), None).unwrap_err();
    assert!(
        matches!(e, StorageError::TooManyOpen { ref terminal, limit: 2 } if terminal == "r1"),
        "{e}"
    );
    // with a slot to claim: refused before the claim
    assert!(matches!(
        s.create_request(&capped("r1"), Some("gw1")),
        Err(StorageError::TooManyOpen { .. })
    ));
    assert_eq!(s.dump(&[]).unwrap(), before, "nothing written");
    // another router is not affected; an ended request no longer counts
    s.create_request(&capped("r2"), None).unwrap();
    s.end_request(1, 11).unwrap();
    s.create_request(&capped("r1"), None).unwrap();
    // no cap: as before
    s.create_request(&new_req("r1", &n, "general"), None).unwrap();
}

#[test]
fn abort_request_frees_only_new_addresses() {
    let mut s = db("10.64.0.0/24");
    install(&mut s, "r1", 1);
    let (_, g1) = s
        .create_request(&new_req("r1", &names(&["pc1"]), "general"), None)
        .unwrap();
    let (n2, _) = s
        .create_request(&new_req("r1", &names(&["pc1", "pc2"]), "general"), None)
        .unwrap();
    s.abort_request(n2).unwrap();
    assert_eq!(s.address_of("r1", "pc1").unwrap(), Some(g1[0].vpnnat));
    assert_eq!(s.address_of("r1", "pc2").unwrap(), None);
    assert!(s.request(n2).unwrap().is_none());
    s.check_pool().unwrap();
}

fn gws() -> Vec<GatewaySpec> {
    vec![
        GatewaySpec {
            name: "gw1".into(),
            global_ip: ip("198.51.100.11"),
            slots: 2,
        },
        GatewaySpec {
            name: "gw2".into(),
            global_ip: ip("198.51.100.12"),
            slots: 1,
        },
    ]
}

#[test]
fn gateway_slots_scan_from_head_and_skip() {
    let mut s = db("10.64.0.0/24");
    s.sync_gateways(&gws()).unwrap();
    s.sync_gateways(&gws()).unwrap(); // idempotent
    assert_eq!(s.first_free_slot(&[]).unwrap(), Some(("gw1".into(), 0)));
    assert!(s.claim_slot("gw1", 0, "r1", 1).unwrap());
    assert!(!s.claim_slot("gw1", 0, "r2", 1).unwrap(), "taken");
    assert_eq!(s.first_free_slot(&[]).unwrap(), Some(("gw1".into(), 1)));
    assert_eq!(s.first_free_slot(&["gw1".into()]).unwrap(), Some(("gw2".into(), 0)));
    assert!(s.claim_slot("gw1", 1, "r2", 1).unwrap());
    assert!(s.claim_slot("gw2", 0, "r3", 1).unwrap());
    assert_eq!(s.first_free_slot(&[]).unwrap(), None);
    // A router holds at most one slot: claiming another frees the old one.
    s.free_slot("r3", 2).unwrap();
    assert!(s.claim_slot("gw2", 0, "r1", 3).unwrap());
    assert_eq!(s.slot_of("r1").unwrap().unwrap().gateway, "gw2");
    assert_eq!(s.first_free_slot(&[]).unwrap(), Some(("gw1".into(), 0)));
    // Tunnel state only for the holder.
    assert!(s.set_tunnel_state("gw2", 0, "r1", TunnelState::Up, 4).unwrap());
    assert!(!s.set_tunnel_state("gw2", 0, "r9", TunnelState::Up, 4).unwrap());
    let usage = s.gateway_usage().unwrap();
    assert_eq!((usage[0].used, usage[0].free), (1, 1));
    assert_eq!((usage[1].used, usage[1].free, usage[1].up), (1, 0, 1));
    // Draining: no new tunnels there.
    s.set_draining("gw1", true).unwrap();
    assert_eq!(s.first_free_slot(&[]).unwrap(), None);
    assert!(matches!(
        s.set_draining("nope", true),
        Err(StorageError::NotFound { .. })
    ));
    // Shrinking a gateway keeps held slots.
    s.sync_gateways(&[GatewaySpec {
        name: "gw1".into(),
        global_ip: ip("198.51.100.11"),
        slots: 1,
    }])
    .unwrap();
    assert_eq!(s.slots_of_gateway("gw1").unwrap().len(), 1);
}

#[test]
fn create_request_with_slot_is_atomic() {
    let mut s = db("10.64.0.0/24");
    s.sync_gateways(&gws()).unwrap();
    install(&mut s, "r1", 1);
    assert!(s.claim_slot("gw2", 0, "other", 1).unwrap());
    let n = names(&["pc1"]);
    let e = s
        .create_request(&new_req("r1", &n, "general"), Some("gw2"))
        .unwrap_err();
    assert!(matches!(e, StorageError::GatewayFull { .. }));
    assert!(s.list_requests(10).unwrap().is_empty());
    assert_eq!(s.address_of("r1", "pc1").unwrap(), None);
    s.create_request(&new_req("r1", &n, "general"), Some("gw1")).unwrap();
    assert_eq!(s.slot_of("r1").unwrap().unwrap().slot, 0);
    // Claiming on a gateway takes its lowest free slot, or says it is full.
    assert_eq!(s.claim_slot_on("gw1", "r5", 1).unwrap(), Some(1));
    assert_eq!(s.claim_slot_on("gw1", "r5", 1).unwrap(), Some(1), "held: same slot");
    assert_eq!(s.claim_slot_on("gw1", "r6", 1).unwrap(), None);
}

#[test]
fn end_vpn_frees_grants_and_slot_but_not_router_parts() {
    let mut s = db("10.64.0.0/24");
    s.sync_gateways(&gws()).unwrap();
    let t = install(&mut s, "r1", 1);
    s.create_request(&new_req("r1", &names(&["pc1", "pc2"]), "general"), Some("gw1"))
        .unwrap();
    let (freed, slot) = s.end_vpn("r1", 5).unwrap();
    assert_eq!(freed.len(), 2);
    assert_eq!(slot.unwrap().gateway, "gw1");
    assert!(s.slot_of("r1").unwrap().is_none());
    assert_eq!(
        s.address_of("r1", SERVER_PART_NAME).unwrap(),
        Some(t.server_part_vpnnat)
    );
    assert_eq!(s.pool_usage().unwrap().allocated, 2);
    s.check_pool().unwrap();
}

#[test]
fn failures_newest_first() {
    let mut s = db("10.64.0.0/24");
    s.add_failure("r1", "ipsec", "charon died", 1).unwrap();
    s.add_failure("r2", "wan", "", 2).unwrap();
    s.add_failure("r1", "lan", "", 3).unwrap();
    let all = s.failures(None, 10).unwrap();
    assert_eq!(
        all.iter().map(|f| f.code.as_str()).collect::<Vec<_>>(),
        vec!["lan", "wan", "ipsec"]
    );
    let r1 = s.failures(Some("r1"), 10).unwrap();
    assert_eq!(r1.len(), 2);
}

#[test]
fn nonces_are_kept_in_the_database() {
    let s = db("10.64.0.0/24");
    let n = Nonce::from_bytes([7; 16]);
    let mut st = s.nonce_store();
    assert!(st.insert_if_absent("r1", &n, 100).unwrap());
    assert!(!st.insert_if_absent("r1", &n, 100).unwrap());
    assert!(st.insert_if_absent("r2", &n, 100).unwrap());
    st.purge_expired(100).unwrap();
    assert_eq!(s.nonce_count().unwrap(), 2);
    let mut st = s.nonce_store();
    st.purge_expired(101).unwrap();
    assert_eq!(s.nonce_count().unwrap(), 0);
}

#[test]
fn sessions_expire() {
    let mut s = db("10.64.0.0/24");
    s.add_session("abc", 10).unwrap();
    assert!(s.session_valid("abc", 10).unwrap());
    assert!(!s.session_valid("abc", 11).unwrap());
    assert!(!s.session_valid("zzz", 1).unwrap());
    s.delete_session("abc").unwrap();
    assert!(!s.session_valid("abc", 1).unwrap());
    s.purge_sessions(100).unwrap();
}

#[test]
fn two_connections_share_one_pool() {
    let dir = std::env::temp_dir().join(format!("vpnnat-center-share-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.db");
    let _ = std::fs::remove_file(&path);
    let mut a = Storage::open(&path).unwrap();
    let mut b = Storage::open(&path).unwrap();
    a.init_pool(&cidr("10.64.0.0/29")).unwrap();
    b.init_pool(&cidr("10.64.0.0/29")).unwrap();
    let x = a.assign_address("r1", "h", 0).unwrap();
    let y = b.assign_address("r2", "h", 0).unwrap();
    assert_ne!(x, y, "two processes never get the same address");
    a.check_pool().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A steady stream of commits keeps the WAL bounded: SQLite's automatic
/// checkpoint copies it back and the next writer restarts it. (A background
/// `PASSIVE` checkpointer with the automatic one off was tried for the
/// benchmark: under steady writes the WAL is never fully copied when a
/// writer starts, so it never restarts; it grew to 2 GB in 30 s.)
#[test]
fn wal_stays_bounded_under_steady_writes() {
    let dir = std::env::temp_dir().join(format!("vpnnat-wal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("w.db");
    let mut writer = Storage::open(&path).unwrap();
    writer.init_pool(&cidr("10.0.0.0/8")).unwrap();
    // A reader on another connection, as another centerd would be.
    let other = Storage::open(&path).unwrap();
    let wal = dir.join("w.db-wal");
    let mut largest = 0u64;
    for i in 0..6000u32 {
        writer.assign_address("r", &format!("t{i}"), 1).unwrap();
        writer.add_failure("r", "wan", &"x".repeat(2000), 1).unwrap();
        if i % 100 == 0 {
            assert_eq!(other.pool_usage().unwrap().allocated, u64::from(i) + 1);
            largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
        }
    }
    // Unbounded, 12,000 commits of 2-4 pages each would be 100-200 MB.
    assert!(largest < 16 * 1024 * 1024, "the WAL grew to {largest} bytes");
    drop((writer, other));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 19, item 8: migration 7 on a database of version 6 with an open
/// request: the request stays, gets no stored end (the configured maximum
/// applies) and is found by the expiry's query; nothing else changes.
#[test]
fn migration_7_keeps_open_requests_with_only_the_configured_maximum() {
    let conn = Connection::open_in_memory().unwrap();
    for sql in &MIGRATIONS[..6] {
        conn.execute_batch(sql).unwrap();
    }
    conn.pragma_update(None, "user_version", 6).unwrap();
    conn.execute(
        "INSERT INTO requests (terminal_id, router_ip, claimant_name, claimant_level, phone, urgency,
                               content, received_at, state)
         VALUES ('router-1', '203.0.113.5', 'Taro', 'general', '03', 'high', 'x', 1000, 'waiting')",
        [],
    )
    .unwrap();
    let s = Storage::init(conn, false).unwrap();
    assert_eq!(s.schema_version().unwrap(), Storage::schema_version_known());
    let r = s.request(1).unwrap().unwrap();
    assert_eq!((r.expires_at, r.limit_set_by.as_deref()), (None, None));
    let open = s.open_limits().unwrap();
    assert_eq!(open.len(), 1);
    let max = crate::limits::DEFAULT_MAX_LIFETIME_SECS;
    assert!(crate::limits::due(&open, max, 1000 + max - 1).is_empty());
    assert_eq!(crate::limits::due(&open, max, 1000 + max)[0].acceptance_number, 1);
}

#[test]
fn an_expiry_that_lost_the_race_to_an_operators_end_or_new_limit_does_nothing() {
    let mut s = db("10.64.0.0/24");
    install(&mut s, "router-1", 1);
    let n1 = s
        .create_request(&new_req("router-1", &names(&["pc1"]), "general"), None)
        .unwrap()
        .0;
    let n2 = s
        .create_request(&new_req("router-1", &names(&["pc2"]), "general"), None)
        .unwrap()
        .0;
    let max = 3600;
    // n1 was ended by the operator first: the expiry finds nothing to do.
    s.end_request_by(n1, 150, "operator#1", "local").unwrap();
    assert!(s
        .expire_request(n1, 100 + max, max, "centerd", "local")
        .unwrap()
        .is_none());
    // n2 got a longer limit (within the maximum) meanwhile: not due yet.
    s.limit_request_by(n2, 100, 2 * max, 200, "operator#1", "local")
        .unwrap();
    assert!(s
        .expire_request(n2, 100 + max, 2 * max, "centerd", "local")
        .unwrap()
        .is_none());
    let (row, why) = s
        .expire_request(n2, 200 + 6000, 2 * max, "centerd", "local")
        .unwrap()
        .unwrap();
    assert_eq!(row.state, RequestState::Ended);
    assert_eq!(why.limit_set_by.as_deref(), Some("operator#1"));
}

/// Issue 20, item 6: migration 11 on a version-10 database with an ended
/// request: it stays, without a reason; a new end stores its reason with
/// the state change and its audit row in one transaction.
#[test]
fn migration_11_keeps_ended_requests_and_an_end_stores_its_reason() {
    let conn = Connection::open_in_memory().unwrap();
    for sql in &MIGRATIONS[..10] {
        conn.execute_batch(sql).unwrap();
    }
    conn.pragma_update(None, "user_version", 10).unwrap();
    conn.execute(
        "INSERT INTO requests (terminal_id, router_ip, claimant_name, claimant_level, phone, urgency,
                               content, received_at, state, ended_at)
         VALUES ('router-1', '203.0.113.5', 'Taro', 'general', '03', 'high', 'x', 1000, 'ended', 1100)",
        [],
    )
    .unwrap();
    let mut s = Storage::init(conn, false).unwrap();
    assert_eq!(s.schema_version().unwrap(), Storage::schema_version_known());
    let old = s.request(1).unwrap().unwrap();
    assert_eq!((old.state, old.end_reason), (RequestState::Ended, None));
    s.init_pool(&cidr("10.64.0.0/24")).unwrap();
    install(&mut s, "router-2", 1);
    let n = s
        .create_request(&new_req("router-2", &names(&["pc1"]), "general"), None)
        .unwrap()
        .0;
    let why = crate::end_reason::parse(" swapped the PLC ").unwrap();
    let row = s
        .end_request_with_reason(n, 200, "operator:ada", "10.0.0.1", Some(&why))
        .unwrap();
    assert_eq!(row.end_reason.as_deref(), Some("swapped the PLC"));
    let audit = s
        .audit_log(&AuditFilter {
            action: Some("end".into()),
            limit: 10,
            ..AuditFilter::default()
        })
        .unwrap();
    assert_eq!(audit[0].detail, "request ended: swapped the PLC");
    // An end without one (the CLI may) says so plainly.
    let m = s
        .create_request(&new_req("router-2", &names(&["pc2"]), "general"), None)
        .unwrap()
        .0;
    assert_eq!(s.end_request_by(m, 300, "cli:root", "local").unwrap().end_reason, None);
}
