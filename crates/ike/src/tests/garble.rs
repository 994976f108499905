//! Structured garbage inside valid encryption: random but well-formed
//! payload chains, encrypted with the real keys of an established IKE SA,
//! thrown at a responder. Complements the byte-level fuzz targets, which
//! cannot get past the ICV check.

use std::net::SocketAddr;
use std::time::Instant;

use ring::rand::SystemRandom;

use crate::codec::{
    notify_type as nt, protocol_id, transform as tf, Auth, Delete, ExchangeType, Identity, KeyExchange, Notify,
    Payload, Proposal, TrafficSelector, Transform,
};
use crate::event::{Event, Output};
use crate::{Initiator, InitiatorConfig, Responder, ResponderConfig, SaConfig, Secret};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
}

fn pair() -> (Initiator, Responder, Vec<u32>) {
    let rng = SystemRandom::new();
    let now = Instant::now();
    let gw: SocketAddr = "203.0.113.1:500".parse().unwrap();
    let rt: SocketAddr = "198.51.100.2:500".parse().unwrap();
    let psk = Secret::from_slice(b"garble");
    let net = |s: &str, l| TrafficSelector::subnet(s.parse().unwrap(), l);
    let mut i = Initiator::new(InitiatorConfig {
        local: gw,
        peer: rt,
        sa: SaConfig::new(
            psk.clone(),
            Identity::fqdn("gw"),
            vec![net("10.0.0.0", 8)],
            vec![net("100.64.0.5", 32)],
        ),
    });
    let mut r = Responder::new(
        ResponderConfig::new(
            gw.ip(),
            SaConfig::new(
                psk,
                Identity::fqdn("rt"),
                vec![net("100.64.0.0", 24)],
                vec![net("10.0.0.0", 8)],
            ),
        ),
        now,
        &rng,
    )
    .unwrap();
    i.connect(now, &rng).unwrap();
    let mut spis = Vec::new();
    loop {
        let mut moved = false;
        while let Some(o) = i.poll_output() {
            if let Output::Send(d) = o {
                moved = true;
                r.handle_datagram(now, d.src, d.dst, &d.payload, &rng).unwrap();
            }
        }
        while let Some(o) = r.poll_output() {
            match o {
                Output::Send(d) => {
                    moved = true;
                    i.handle_datagram(now, d.src, d.dst, &d.payload, &rng).unwrap();
                }
                Output::Event(Event::ChildSaUp(c)) => spis.extend([c.inbound_spi, c.outbound_spi]),
                Output::Event(_) => {}
            }
        }
        if !moved {
            break;
        }
    }
    assert!(r.is_established());
    (i, r, spis)
}

fn transform(g: &mut Rng) -> Transform {
    match g.below(6) {
        0 => Transform::with_key_length(tf::TYPE_ENCR, tf::ENCR_AES_GCM_16, g.pick(&[128, 256, 192, 0])),
        1 => Transform::new(tf::TYPE_PRF, g.pick(&[tf::PRF_HMAC_SHA2_256, 7])),
        2 => Transform::new(tf::TYPE_DH, g.pick(&[19, 31, 14, 0])),
        3 => Transform::new(tf::TYPE_ESN, g.pick(&[0, 1])),
        4 => Transform::new(tf::TYPE_INTEG, g.pick(&[0, 12])),
        _ => Transform::new(g.below(256) as u8, g.below(65536) as u16),
    }
}

fn spi(g: &mut Rng, known: &[u32], size: usize) -> Vec<u8> {
    if size == 4 && !known.is_empty() && g.below(2) == 0 {
        g.pick(known).to_be_bytes().to_vec()
    } else {
        g.bytes(size)
    }
}

fn payload(g: &mut Rng, known: &[u32]) -> Payload {
    match g.below(10) {
        0 => {
            let protocol = g.pick(&[protocol_id::IKE, protocol_id::ESP, 7]);
            let size = g.pick(&[0usize, 4, 8]);
            let n = g.below(3) as usize;
            Payload::Delete(Delete {
                protocol,
                spi_size: size as u8,
                spis: (0..n).map(|_| spi(g, known, size)).collect(),
            })
        }
        1 | 2 => {
            let size = g.pick(&[0usize, 4, 8]);
            let dlen = g.below(4) as usize;
            Payload::Notify(Notify {
                protocol: g.pick(&[0, protocol_id::IKE, protocol_id::ESP]),
                spi: spi(g, known, size),
                ty: g.pick(&[
                    nt::REKEY_SA,
                    nt::COOKIE,
                    nt::INITIAL_CONTACT,
                    nt::TS_UNACCEPTABLE,
                    60000,
                ]),
                data: g.bytes(dlen),
            })
        }
        3 => {
            let n = 1 + g.below(3);
            Payload::Sa(
                (0..n)
                    .map(|k| {
                        let size = g.pick(&[0usize, 4, 8]);
                        Proposal {
                            num: k as u8 + 1,
                            protocol: g.pick(&[protocol_id::IKE, protocol_id::ESP]),
                            spi: spi(g, known, size),
                            transforms: (0..g.below(5)).map(|_| transform(g)).collect(),
                        }
                    })
                    .collect(),
            )
        }
        4 => {
            let len = g.pick(&[32usize, 64, 0, 65]);
            Payload::Ke(KeyExchange {
                group: g.pick(&[19, 31, 2]),
                data: g.bytes(len),
            })
        }
        5 => {
            let n = 16 + g.below(48) as usize;
            Payload::Nonce(g.bytes(n))
        }
        6 | 7 => {
            let ts: Vec<TrafficSelector> = (0..1 + g.below(2))
                .map(|_| {
                    let a = g.next() as u32;
                    let b = a.saturating_add(g.below(1000) as u32);
                    TrafficSelector::range(a.into(), b.into())
                })
                .collect();
            if g.below(2) == 0 {
                Payload::TsI(ts)
            } else {
                Payload::TsR(ts)
            }
        }
        8 => Payload::IdI(Identity::fqdn("gw")),
        _ => Payload::Auth(Auth {
            method: 2,
            data: g.bytes(32),
        }),
    }
}

#[test]
fn garbled_requests_inside_valid_encryption() {
    let rng = SystemRandom::new();
    let now = Instant::now();
    let mut g = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut gw, mut rt, mut known) = pair();
    let (mut ups, mut rejected) = (0usize, 0usize);
    for _ in 0..20_000 {
        if !rt.is_established() || !gw.is_established() {
            (gw, rt, known) = pair();
        }
        let payloads: Vec<Payload> = (0..g.below(6)).map(|_| payload(&mut g, &known)).collect();
        let exchange = g.pick(&[
            ExchangeType::CreateChildSa,
            ExchangeType::CreateChildSa,
            ExchangeType::Informational,
            ExchangeType::IkeAuth,
            ExchangeType::Other(40),
        ]);
        let mid = rt.table.sas.last().map_or(0, |s| s.expected_mid);
        let mid = if g.below(8) == 0 {
            mid.wrapping_add(g.below(3) as u32).wrapping_sub(1)
        } else {
            mid
        };
        let Some(sa) = gw.table.sas.last_mut() else { continue };
        let Ok(bytes) = sa.seal(exchange, false, mid, &payloads) else {
            continue;
        };
        let (src, dst) = (sa.local, sa.remote);
        if rt.handle_datagram(now, src, dst, &bytes, &rng).is_err() {
            rejected += 1;
        }
        while let Some(o) = rt.poll_output() {
            match o {
                Output::Send(d) => {
                    let _ = gw.handle_datagram(now, d.src, d.dst, &d.payload, &rng);
                }
                Output::Event(Event::ChildSaUp(c)) => {
                    ups += 1;
                    known.extend([c.inbound_spi, c.outbound_spi]);
                }
                Output::Event(_) => {}
            }
        }
        while gw.poll_output().is_some() {}
    }
    // Most garbage is refused; the odd well-formed rekey gets through.
    assert!(rejected > 10_000, "{rejected}");
    eprintln!("rejected {rejected}, child SAs created {ups}");
}
