//! After establishment: INFORMATIONAL (delete, liveness) and
//! CREATE_CHILD_SA (CHILD SA and IKE SA rekeys), in memory.

mod common;

use std::time::Duration;

use common::*;
use vpnnat_ike::codec::{Message, Payload};
use vpnnat_ike::{DownReason, Error, Event, Initiator, InitiatorConfig, ResponderConfig};

fn rekeyed(ev: &[Event]) -> Option<((u64, u64), (u64, u64))> {
    ev.iter().find_map(|e| match e {
        Event::IkeSaRekeyed { old, new } => Some((*old, *new)),
        _ => None,
    })
}

#[test]
fn delete_child_from_gateway() {
    let mut net = Net::default_pair();
    let (g, r) = established(&mut net);
    net.gw.delete_child(net.now, g.inbound_spi, &net.rng).unwrap();
    net.run();
    let (ge, re) = net.take_events();
    assert_eq!(downs(&ge), vec![(g.inbound_spi, g.outbound_spi)]);
    assert_eq!(downs(&re), vec![(r.inbound_spi, r.outbound_spi)]);
    assert!(tunnel_down(&ge).is_none() && tunnel_down(&re).is_none());
    assert!(net.gw.child_sas().is_empty() && net.rt.child_sas().is_empty());
    // the IKE SA stays
    assert!(net.gw.is_established() && net.rt.is_established());
    assert_eq!(
        net.gw.delete_child(net.now, g.inbound_spi, &net.rng),
        Err(Error::UnknownChild(g.inbound_spi))
    );
}

#[test]
fn delete_child_from_router() {
    let mut net = Net::default_pair();
    let (g, r) = established(&mut net);
    net.rt.delete_child(net.now, r.inbound_spi, &net.rng).unwrap();
    net.run();
    let (ge, re) = net.take_events();
    assert_eq!(downs(&ge), vec![(g.inbound_spi, g.outbound_spi)]);
    assert_eq!(downs(&re), vec![(r.inbound_spi, r.outbound_spi)]);
}

#[test]
fn close_ike_sa() {
    let mut net = Net::default_pair();
    let (g, r) = established(&mut net);
    net.gw.close(net.now, &net.rng).unwrap();
    net.run();
    let (ge, re) = net.take_events();
    assert_eq!(downs(&ge), vec![(g.inbound_spi, g.outbound_spi)]);
    assert_eq!(downs(&re), vec![(r.inbound_spi, r.outbound_spi)]);
    assert_eq!(tunnel_down(&ge), Some(DownReason::Closed));
    assert_eq!(tunnel_down(&re), Some(DownReason::DeletedByPeer));
    assert!(!net.gw.is_established() && !net.rt.is_established());
    assert_eq!(net.rt.sa_count(), 0);
    // the SA is gone: further API calls say so
    assert_eq!(net.gw.check_liveness(net.now, &net.rng), Err(Error::NotEstablished));
}

#[test]
fn liveness_check_answered() {
    let mut net = Net::default_pair();
    established(&mut net);
    net.gw.check_liveness(net.now, &net.rng).unwrap();
    net.run();
    let (ge, re) = net.take_events();
    assert!(ge.is_empty() && re.is_empty());
    let dpd = Message::parse(&net.to_rt.last().unwrap().payload).unwrap();
    assert_eq!(dpd.header.message_id, 2);
    // the router can probe too (its own message id space)
    net.rt.check_liveness(net.now, &net.rng).unwrap();
    net.run();
    let probe = Message::parse(&net.to_gw.last().unwrap().payload).unwrap();
    assert_eq!(probe.header.message_id, 0);
    assert!(net.gw_errors.is_empty() && net.rt_errors.is_empty());
}

#[test]
fn dead_peer_detected_by_dpd_schedule() {
    let mut net = Net::default_pair();
    let (g, _) = established(&mut net);
    net.cut = true;
    // nothing until the DPD interval (30 s) passes
    net.advance(Duration::from_secs(29));
    assert_eq!(net.to_rt.len(), 2);
    net.advance(Duration::from_secs(1));
    assert_eq!(net.to_rt.len(), 3);
    for _ in 0..120 {
        net.advance(Duration::from_secs(1));
    }
    // DPD + 5 identical retransmissions
    assert_eq!(net.to_rt.len(), 8);
    assert!(net.to_rt[3..].iter().all(|d| *d == net.to_rt[2]));
    let (ge, _) = net.take_events();
    assert_eq!(downs(&ge), vec![(g.inbound_spi, g.outbound_spi)]);
    assert_eq!(tunnel_down(&ge), Some(DownReason::PeerDead));
    assert!(!net.gw.is_established());
}

#[test]
fn traffic_keeps_dpd_quiet_and_responses_refresh() {
    let mut net = Net::default_pair();
    established(&mut net);
    net.advance(Duration::from_secs(30));
    // a DPD went out and was answered by both
    let (ge, re) = net.take_events();
    assert!(ge.is_empty() && re.is_empty());
    assert!(net.gw.is_established() && net.rt.is_established());
}

#[test]
fn rekey_child_sa() {
    let mut net = Net::default_pair();
    let (g, r) = established(&mut net);
    net.gw.rekey_child(net.now, g.inbound_spi, &net.rng).unwrap();
    net.run();
    assert!(
        net.gw_errors.is_empty() && net.rt_errors.is_empty(),
        "{:?} {:?}",
        net.gw_errors,
        net.rt_errors
    );
    let (ge, re) = net.take_events();
    let (gn, rn) = (child_ups(&ge), child_ups(&re));
    assert_eq!((gn.len(), rn.len()), (1, 1));
    assert_pair(&gn[0], &rn[0]);
    assert_eq!(gn[0].replaces, Some((g.inbound_spi, g.outbound_spi)));
    assert_eq!(rn[0].replaces, Some((r.inbound_spi, r.outbound_spi)));
    assert_ne!(gn[0].inbound_spi, g.inbound_spi);
    assert_ne!(gn[0].inbound_key, g.inbound_key);
    assert_eq!(gn[0].local_ts, g.local_ts);
    // install new before removing old, on both sides
    let pos_up = ge.iter().position(|e| matches!(e, Event::ChildSaUp(_))).unwrap();
    let pos_down = ge.iter().position(|e| matches!(e, Event::ChildSaDown { .. })).unwrap();
    assert!(pos_up < pos_down);
    assert_eq!(downs(&ge), vec![(g.inbound_spi, g.outbound_spi)]);
    assert_eq!(downs(&re), vec![(r.inbound_spi, r.outbound_spi)]);
    assert_eq!(net.gw.child_sas(), vec![(gn[0].inbound_spi, gn[0].outbound_spi)]);
    // the initiator of the rekey switches at once; the responder installs
    // the new inbound SA and switches outbound only when the old pair goes
    assert!(!gn[0].outbound_deferred);
    assert!(rn[0].outbound_deferred);
    assert!(!ge.iter().any(|e| matches!(e, Event::ChildSaOutbound { .. })));
    let sw = re
        .iter()
        .position(|e| {
            *e == Event::ChildSaOutbound {
                inbound_spi: rn[0].inbound_spi,
                outbound_spi: rn[0].outbound_spi,
            }
        })
        .unwrap();
    assert!(matches!(re[sw + 1], Event::ChildSaDown { inbound_spi, .. } if inbound_spi == r.inbound_spi));
    assert!(matches!(re[0], Event::ChildSaUp(_)));
    assert_eq!(net.rt.child_sas(), vec![(rn[0].inbound_spi, rn[0].outbound_spi)]);
    // the REKEY_SA notify carried the old inbound SPI
    let req = &net.to_rt[2];
    assert_eq!(Message::parse(&req.payload).unwrap().header.message_id, 2);
}

#[test]
fn rekey_child_sa_with_pfs_from_router() {
    let mut gw = gw_sa(PSK);
    gw.child_pfs = true;
    let mut rt = rt_sa(PSK);
    rt.child_pfs = true;
    let mut net = Net::new(gw, ResponderConfig::new(addr(GW).ip(), rt));
    let (g, r) = established(&mut net);
    net.rt.rekey_child(net.now, r.inbound_spi, &net.rng).unwrap();
    net.run();
    assert!(
        net.gw_errors.is_empty() && net.rt_errors.is_empty(),
        "{:?} {:?}",
        net.gw_errors,
        net.rt_errors
    );
    let (ge, re) = net.take_events();
    let (gn, rn) = (child_ups(&ge), child_ups(&re));
    assert_eq!((gn.len(), rn.len()), (1, 1));
    assert_pair(&gn[0], &rn[0]);
    assert_eq!(downs(&ge), vec![(g.inbound_spi, g.outbound_spi)]);
    assert_eq!(downs(&re), vec![(r.inbound_spi, r.outbound_spi)]);
    // the request carried a KE payload
    let n = net.to_gw.len();
    let _ = n;
}

#[test]
fn rekey_unknown_child_is_refused() {
    let mut net = Net::default_pair();
    established(&mut net);
    assert_eq!(
        net.gw.rekey_child(net.now, 0xdead_beef, &net.rng),
        Err(Error::UnknownChild(0xdead_beef))
    );
}

#[test]
fn rekey_ike_sa_from_gateway_then_use_it() {
    let mut net = Net::default_pair();
    let (g, _) = established(&mut net);
    let old = net.gw.ike_spis().unwrap();
    net.gw.rekey_ike(net.now, &net.rng).unwrap();
    net.run();
    assert!(
        net.gw_errors.is_empty() && net.rt_errors.is_empty(),
        "{:?} {:?}",
        net.gw_errors,
        net.rt_errors
    );
    let (ge, re) = net.take_events();
    let (o1, n1) = rekeyed(&ge).unwrap();
    let (o2, n2) = rekeyed(&re).unwrap();
    assert_eq!((o1, n1), (o2, n2));
    assert_eq!(o1, old);
    assert_ne!(n1, old);
    // no CHILD SA or tunnel events: the children moved over
    assert!(downs(&ge).is_empty() && downs(&re).is_empty());
    assert!(tunnel_down(&ge).is_none() && tunnel_down(&re).is_none());
    assert_eq!(net.gw.ike_spis(), Some(n1));
    assert_eq!(net.rt.ike_spis(), Some(n1));
    assert_eq!(net.rt.sa_count(), 1);
    assert_eq!(net.gw.child_sas(), vec![(g.inbound_spi, g.outbound_spi)]);
    // the new SA works: child rekey and liveness over it, fresh message ids
    net.gw.rekey_child(net.now, g.inbound_spi, &net.rng).unwrap();
    net.run();
    let (ge, re) = net.take_events();
    assert_eq!(child_ups(&ge).len(), 1);
    assert_eq!(child_ups(&re).len(), 1);
    let m = Message::parse(&net.to_rt[net.to_rt.len() - 2].payload).unwrap();
    assert_eq!((m.header.spi_i, m.header.spi_r), n1);
    assert_eq!(m.header.message_id, 0);
    net.gw.close(net.now, &net.rng).unwrap();
    net.run();
    let (ge, re) = net.take_events();
    assert_eq!(tunnel_down(&ge), Some(DownReason::Closed));
    assert_eq!(tunnel_down(&re), Some(DownReason::DeletedByPeer));
}

#[test]
fn rekey_ike_sa_from_router_swaps_roles() {
    let mut net = Net::default_pair();
    let (g, r) = established(&mut net);
    net.rt.rekey_ike(net.now, &net.rng).unwrap();
    net.run();
    assert!(
        net.gw_errors.is_empty() && net.rt_errors.is_empty(),
        "{:?} {:?}",
        net.gw_errors,
        net.rt_errors
    );
    let (ge, re) = net.take_events();
    let (_, n) = rekeyed(&re).unwrap();
    assert_eq!(rekeyed(&ge).unwrap().1, n);
    // the router is the original initiator of the new SA: its requests
    // carry the I flag now
    net.rt.check_liveness(net.now, &net.rng).unwrap();
    net.run();
    let probe = net
        .to_gw
        .iter()
        .rev()
        .map(|d| Message::parse(&d.payload).unwrap())
        .find(|m| !m.header.is_response())
        .unwrap();
    assert!(probe.header.from_initiator());
    assert_eq!((probe.header.spi_i, probe.header.spi_r), n);
    // and both sides can still rekey children over it
    net.gw.rekey_child(net.now, g.inbound_spi, &net.rng).unwrap();
    net.run();
    let (ge, re) = net.take_events();
    assert_eq!(child_ups(&ge).len(), 1);
    assert_eq!(downs(&re), vec![(r.inbound_spi, r.outbound_spi)]);
    assert!(net.gw_errors.is_empty() && net.rt_errors.is_empty());
}

#[test]
fn requests_queue_behind_the_window() {
    let mut net = Net::default_pair();
    let (g, _) = established(&mut net);
    net.gw.check_liveness(net.now, &net.rng).unwrap();
    net.gw.rekey_child(net.now, g.inbound_spi, &net.rng).unwrap();
    net.gw.rekey_ike(net.now, &net.rng).unwrap();
    net.run();
    assert!(
        net.gw_errors.is_empty() && net.rt_errors.is_empty(),
        "{:?} {:?}",
        net.gw_errors,
        net.rt_errors
    );
    let (ge, re) = net.take_events();
    assert_eq!(child_ups(&ge).len(), 1);
    assert_eq!(child_ups(&re).len(), 1);
    assert!(rekeyed(&ge).is_some());
    assert_eq!(net.gw.child_sas().len(), 1);
    assert_eq!(
        net.rt.child_sas(),
        net.gw.child_sas().iter().map(|(a, b)| (*b, *a)).collect::<Vec<_>>()
    );
}

#[test]
fn initial_contact_replaces_stale_sa() {
    let mut net = Net::default_pair();
    let (_, r_old) = established(&mut net);
    let old_spis = net.rt.ike_spis().unwrap();
    // The gateway restarts and builds a new tunnel (with INITIAL_CONTACT).
    net.gw = Initiator::new(InitiatorConfig {
        local: addr(GW),
        peer: addr(RT),
        sa: gw_sa(PSK),
    });
    net.connect();
    let (ge, re) = net.take_events();
    assert_eq!(child_ups(&ge).len(), 1);
    let r_new = child_ups(&re);
    assert_eq!(r_new.len(), 1);
    // the new pair is installed, then the stale one removed
    assert_eq!(downs(&re), vec![(r_old.inbound_spi, r_old.outbound_spi)]);
    assert!(re.contains(&Event::TunnelDown {
        ike_spis: old_spis,
        reason: DownReason::Replaced
    }));
    assert_eq!(net.rt.sa_count(), 1);
    assert_ne!(net.rt.ike_spis(), Some(old_spis));
}

#[test]
fn rejects_traffic_selectors_outside_policy() {
    let mut gw = gw_sa(PSK);
    gw.remote_ts = vec![vpnnat_ike::TrafficSelector::host("192.168.1.10".parse().unwrap())];
    let mut net = Net::new(gw, ResponderConfig::new(addr(GW).ip(), rt_sa(PSK)));
    net.connect();
    assert_eq!(net.rt_errors, vec![Error::TsUnacceptable]);
    let (ge, re) = net.take_events();
    assert!(child_ups(&ge).is_empty() && child_ups(&re).is_empty());
    assert_eq!(tunnel_down(&ge), Some(DownReason::TsUnacceptable));
    // the gateway closed the useless IKE SA
    assert_eq!(net.rt.sa_count(), 0);
    assert!(!net.gw.is_established());
    let _ = Payload::Nonce(vec![]);
}

#[test]
fn superseded_ike_sa_expires_without_delete() {
    let mut net = Net::default_pair();
    established(&mut net);
    // The router rekeys and the gateway answers, but the router's Delete
    // of the old SA is lost.
    net.rt.rekey_ike(net.now, &net.rng).unwrap();
    let Some(vpnnat_ike::Output::Send(req)) = net.rt.poll_output() else {
        panic!()
    };
    net.gw
        .handle_datagram(net.now, req.src, req.dst, &req.payload, &net.rng)
        .unwrap();
    let mut resp = None;
    while let Some(o) = net.gw.poll_output() {
        if let vpnnat_ike::Output::Send(d) = o {
            resp = Some(d);
        }
    }
    let resp = resp.unwrap();
    net.rt
        .handle_datagram(net.now, resp.src, resp.dst, &resp.payload, &net.rng)
        .unwrap();
    while net.rt.poll_output().is_some() {}
    // the gateway holds old + new until the Delete, which never comes
    net.now += Duration::from_secs(31);
    net.gw.poll_timers(net.now);
    let mut events = Vec::new();
    while let Some(o) = net.gw.poll_output() {
        if let vpnnat_ike::Output::Event(e) = o {
            events.push(e);
        }
    }
    assert!(events.is_empty(), "{events:?}");
    assert!(net.gw.is_established());
    assert_eq!(net.gw.child_sas().len(), 1);
}

#[test]
fn new_vpnnat_address_takes_effect_on_child_rekey() {
    let mut net = Net::default_pair();
    let (g, _) = established(&mut net);
    assert_eq!(g.remote_ts.len(), 2);
    // The center grants 100.64.0.7 and 192.0.2.99 (the latter outside what
    // the router allows); the router keeps its policy.
    let mut remote = net.gw.config().remote_ts.clone();
    remote.push(vpnnat_ike::TrafficSelector::host("100.64.0.7".parse().unwrap()));
    remote.push(vpnnat_ike::TrafficSelector::host("192.0.2.99".parse().unwrap()));
    let local = net.gw.config().local_ts.clone();
    net.gw.set_traffic_selectors(local, remote);
    net.gw.rekey_child(net.now, g.inbound_spi, &net.rng).unwrap();
    net.run();
    assert!(
        net.gw_errors.is_empty() && net.rt_errors.is_empty(),
        "{:?} {:?}",
        net.gw_errors,
        net.rt_errors
    );
    let (ge, re) = net.take_events();
    let n = &child_ups(&ge)[0];
    assert_eq!(
        n.remote_ts,
        vec![
            vpnnat_ike::TrafficSelector::host("100.64.0.5".parse().unwrap()),
            vpnnat_ike::TrafficSelector::host("100.64.0.6".parse().unwrap()),
            vpnnat_ike::TrafficSelector::host("100.64.0.7".parse().unwrap()),
        ]
    );
    assert_eq!(child_ups(&re)[0].local_ts, n.remote_ts);
    assert_eq!(downs(&ge), vec![(g.inbound_spi, g.outbound_spi)]);
}

#[test]
fn child_sa_debug_does_not_print_keys() {
    let mut net = Net::default_pair();
    let (g, _) = established(&mut net);
    let text = format!("{g:?} {:?}", net.gw);
    for key in [&g.inbound_key, &g.outbound_key] {
        assert!(!text.contains(&hex::encode(&key.expose()[..8])), "{text}");
        assert!(!text.contains(&format!("{:?}", &key.expose()[..4])), "{text}");
    }
}

#[test]
fn simultaneous_child_rekey_resolved_by_nonces() {
    for round in 0..8 {
        let mut net = Net::default_pair();
        let (g, r) = established(&mut net);
        net.gw.rekey_child(net.now, g.inbound_spi, &net.rng).unwrap();
        net.rt.rekey_child(net.now, r.inbound_spi, &net.rng).unwrap();
        net.run();
        assert!(
            net.gw_errors.is_empty() && net.rt_errors.is_empty(),
            "{:?} {:?}",
            net.gw_errors,
            net.rt_errors
        );
        let (ge, re) = net.take_events();
        assert!(!ge
            .iter()
            .chain(re.iter())
            .any(|e| matches!(e, Event::RekeyFailed { .. })));
        // exactly one new pair survives, the same on both sides
        let gs = net.gw.child_sas();
        let rs = net.rt.child_sas();
        assert_eq!(gs.len(), 1, "round {round}: {ge:?}");
        assert_eq!(rs, vec![(gs[0].1, gs[0].0)]);
        assert_ne!(gs[0].0, g.inbound_spi);
        let gup = child_ups(&ge).into_iter().find(|c| c.inbound_spi == gs[0].0).unwrap();
        let rup = child_ups(&re).into_iter().find(|c| c.inbound_spi == rs[0].0).unwrap();
        assert_pair(&gup, &rup);
        // every pair announced is removed again except the survivor, and the
        // side that answered the surviving exchange switched its outbound
        for (ev, keep) in [(&ge, gs[0].0), (&re, rs[0].0)] {
            let mut announced: Vec<u32> = child_ups(ev).iter().map(|c| c.inbound_spi).collect();
            announced.push(if std::ptr::eq(ev, &ge) {
                g.inbound_spi
            } else {
                r.inbound_spi
            });
            let downed: Vec<u32> = downs(ev).iter().map(|d| d.0).collect();
            for spi in announced {
                assert_eq!(downed.contains(&spi), spi != keep, "round {round}");
            }
        }
        let survivor_deferred = [&gup, &rup].iter().filter(|c| c.outbound_deferred).count();
        assert_eq!(survivor_deferred, 1);
        let switched = ge
            .iter()
            .chain(re.iter())
            .filter(|e| matches!(e, Event::ChildSaOutbound { .. }))
            .count();
        assert_eq!(switched, 1);
    }
}

#[test]
fn simultaneous_ike_rekey_resolved_by_nonces() {
    for round in 0..8 {
        let mut net = Net::default_pair();
        let (g, r) = established(&mut net);
        let old = net.gw.ike_spis();
        net.gw.rekey_ike(net.now, &net.rng).unwrap();
        net.rt.rekey_ike(net.now, &net.rng).unwrap();
        net.run();
        assert!(
            net.gw_errors.is_empty() && net.rt_errors.is_empty(),
            "{:?} {:?}",
            net.gw_errors,
            net.rt_errors
        );
        let (ge, re) = net.take_events();
        assert!(
            !ge.iter().chain(re.iter()).any(|e| matches!(
                e,
                Event::RekeyFailed { .. } | Event::TunnelDown { .. } | Event::ChildSaDown { .. }
            )),
            "round {round}: {ge:?} {re:?}"
        );
        // one new IKE SA survives on both sides, holding the CHILD SA
        let spis = net.gw.ike_spis();
        assert_ne!(spis, old);
        assert_eq!(net.rt.ike_spis(), spis, "round {round}");
        assert_eq!(net.rt.sa_count(), 1, "round {round}");
        assert_eq!(net.gw.child_sas(), vec![(g.inbound_spi, g.outbound_spi)]);
        assert_eq!(net.rt.child_sas(), vec![(r.inbound_spi, r.outbound_spi)]);
        // and it works
        net.gw.rekey_child(net.now, g.inbound_spi, &net.rng).unwrap();
        net.run();
        assert!(net.gw_errors.is_empty() && net.rt_errors.is_empty());
        assert_eq!(child_ups(&net.gw_events).len(), 1);
        net.take_events();
        net.advance(Duration::from_secs(60));
        assert!(net.gw.is_established() && net.rt.is_established());
        let (ge, re) = net.take_events();
        assert!(ge.is_empty() && re.is_empty(), "{ge:?} {re:?}");
    }
}

/// The crossing seen by one side only: the gateway gets the answer to its
/// rekey before the router's request, so for it there is no collision.
#[test]
fn crossed_ike_rekey_seen_by_one_side_only() {
    let mut net = Net::default_pair();
    let (g, r) = established(&mut net);
    net.gw.rekey_ike(net.now, &net.rng).unwrap();
    net.rt.rekey_ike(net.now, &net.rng).unwrap();
    let take = |o: Option<vpnnat_ike::Output>| match o {
        Some(vpnnat_ike::Output::Send(d)) => d,
        other => panic!("{other:?}"),
    };
    let gw_req = take(net.gw.poll_output());
    let rt_req = take(net.rt.poll_output());
    net.rt
        .handle_datagram(net.now, gw_req.src, gw_req.dst, &gw_req.payload, &net.rng)
        .unwrap();
    let mut rt_resp = None;
    while let Some(o) = net.rt.poll_output() {
        match o {
            vpnnat_ike::Output::Send(d) => rt_resp = Some(d),
            vpnnat_ike::Output::Event(e) => net.rt_events.push(e),
        }
    }
    let rt_resp = rt_resp.unwrap();
    net.gw
        .handle_datagram(net.now, rt_resp.src, rt_resp.dst, &rt_resp.payload, &net.rng)
        .unwrap();
    // now the router's request, on an SA the gateway is deleting
    assert_eq!(
        net.gw
            .handle_datagram(net.now, rt_req.src, rt_req.dst, &rt_req.payload, &net.rng),
        Err(Error::PeerError(43))
    );
    net.run();
    let (ge, re) = net.take_events();
    // (the router's own rekey is moot: the gateway's Delete of the old SA
    // overtakes the TEMPORARY_FAILURE answer)
    assert!(!ge
        .iter()
        .chain(re.iter())
        .any(|e| matches!(e, Event::TunnelDown { .. } | Event::ChildSaDown { .. })));
    assert_eq!(net.gw.ike_spis(), net.rt.ike_spis());
    assert_eq!(net.rt.sa_count(), 1);
    assert_eq!(net.gw.child_sas(), vec![(g.inbound_spi, g.outbound_spi)]);
    assert_eq!(net.rt.child_sas(), vec![(r.inbound_spi, r.outbound_spi)]);
    net.advance(Duration::from_secs(60));
    let (ge, re) = net.take_events();
    assert!(ge.is_empty() && re.is_empty(), "{ge:?} {re:?}");
    assert!(net.gw.is_established() && net.rt.is_established());
}

/// Every pair reported up is reported down again (installed SAs balance).
fn balanced(ev: &[Event]) -> bool {
    let mut up: Vec<u32> = Vec::new();
    for e in ev {
        match e {
            Event::ChildSaUp(c) => up.push(c.inbound_spi),
            Event::ChildSaDown { inbound_spi, .. } => up.retain(|s| s != inbound_spi),
            _ => {}
        }
    }
    up.is_empty()
}

#[test]
fn close_while_our_child_rekey_is_in_flight() {
    let mut net = Net::default_pair();
    let (g, _r) = established(&mut net);
    let _ = net.take_events();
    net.gw.rekey_child(net.now, g.inbound_spi, &net.rng).unwrap();
    net.gw.close(net.now, &net.rng).unwrap();
    net.run();
    let (ge, re) = net.take_events();
    assert_eq!(tunnel_down(&ge), Some(DownReason::Closed), "{ge:?}");
    assert_eq!(tunnel_down(&re), Some(DownReason::DeletedByPeer), "{re:?}");
    // The pair set up by the rekey (if any) went down with the old one.
    let before = vec![Event::ChildSaUp(g.clone())];
    assert!(balanced(&[before, ge.clone()].concat()), "{ge:?}");
    assert!(net.gw.child_sas().is_empty() && net.rt.child_sas().is_empty());
    assert!(!net.gw.is_established() && !net.rt.is_established());
}

#[test]
fn close_while_the_peers_child_rekey_is_in_flight() {
    let mut net = Net::default_pair();
    let (g, r) = established(&mut net);
    let _ = net.take_events();
    net.rt.rekey_child(net.now, r.inbound_spi, &net.rng).unwrap();
    net.gw.close(net.now, &net.rng).unwrap();
    net.run();
    let (ge, re) = net.take_events();
    assert_eq!(tunnel_down(&ge), Some(DownReason::Closed), "{ge:?}");
    assert_eq!(tunnel_down(&re), Some(DownReason::DeletedByPeer), "{re:?}");
    assert!(
        balanced(&[vec![Event::ChildSaUp(g.clone())], ge.clone()].concat()),
        "{ge:?}"
    );
    assert!(
        balanced(&[vec![Event::ChildSaUp(r.clone())], re.clone()].concat()),
        "{re:?}"
    );
    assert!(net.gw.child_sas().is_empty() && net.rt.child_sas().is_empty());
}

#[test]
fn pair_made_by_our_rekey_is_reported_down_when_rekeyed_again() {
    let mut net = Net::default_pair();
    let (g, _r) = established(&mut net);
    net.gw.rekey_child(net.now, g.inbound_spi, &net.rng).unwrap();
    net.run();
    let (ge, _) = net.take_events();
    let second = child_ups(&ge);
    assert_eq!(second.len(), 1, "{ge:?}");
    assert_eq!(downs(&ge), vec![(g.inbound_spi, g.outbound_spi)]);
    // Rekeying the pair our own rekey made must remove it too.
    net.gw.rekey_child(net.now, second[0].inbound_spi, &net.rng).unwrap();
    net.run();
    let (ge, _) = net.take_events();
    assert_eq!(child_ups(&ge).len(), 1, "{ge:?}");
    assert_eq!(
        downs(&ge),
        vec![(second[0].inbound_spi, second[0].outbound_spi)],
        "{ge:?}"
    );
    assert_eq!(net.gw.child_sas().len(), 1);
    // And closing reports the current pair down.
    let third = child_ups(&ge)[0].clone();
    net.gw.close(net.now, &net.rng).unwrap();
    net.run();
    let (ge, _) = net.take_events();
    assert_eq!(downs(&ge), vec![(third.inbound_spi, third.outbound_spi)], "{ge:?}");
}
