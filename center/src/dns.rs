//! centerd's DNS answers (issue 9): a small authoritative zone on the
//! center LAN so the operator reaches `HOSTNAME.TERMINALID.<domain>`
//! instead of a VPNNAT address while a grant is live.
//!
//! - `HOSTNAME.TERMINALID.<domain>` A: the VPNNAT address of that router's
//!   extension terminal while an open (waiting or in progress) request
//!   names it; NXDOMAIN otherwise.
//! - `router.TERMINALID.<domain>` A: the router's server-part address while
//!   the router has an open request (its tunnel carries it).
//! - `<domain>` SOA and NS (`ns.<domain>`), so resolvers can cache
//!   negative answers (the SOA minimum is the TTL).
//! - Names outside the zone: REFUSED (not a recursive resolver: RA is
//!   never set). Zone transfers (AXFR, IXFR): REFUSED (the zone lists
//!   every live grant). ANY: the one A record of the name at most, as for
//!   A (RFC 8482: no amplification). Other record types of an existing
//!   name: NOERROR with no answer. Opcodes other than QUERY: NOTIMP;
//!   messages that do not decode, or do not hold exactly one question:
//!   FORMERR.
//!
//! The wire format is `hickory-proto`'s (RFC 1035 with name compression,
//! EDNS(0) of RFC 6891): a query with an OPT record gets one back (our UDP
//! payload size, version 0; BADVERS for a version above 0), and a UDP
//! answer larger than the client's payload size (512 bytes without EDNS)
//! goes out truncated with TC set, so the client retries over TCP, which
//! [`serve`] answers on the same address (two-byte length prefix, RFC
//! 1035 section 4.2.2; RFC 7766). Answers are small, but a long zone name
//! asked in another letter case (resolvers randomise it, and name
//! compression matches bytes) can take a negative answer past 512 bytes.
//! [`respond`] is pure (bytes in, bytes out); nothing in it panics on
//! input: the fuzz target `center/fuzz` feeds it arbitrary bytes.
//!
//! Each source address is held to a query rate ([`rate`]): queries beyond
//! it get no answer, and the drops are summed up in one log line per
//! interval. Over TCP each source may hold [`TCP_PER_SOURCE`] connections.

use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, NS, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use vpnnat_proto::throttle::ConnectionGate;

use crate::center::{Center, GatewayCommands, RouterCommands};

pub mod rate;

pub use rate::RateConfig;
use rate::{RateLimiter, Verdict};

/// The name of a grant: `HOSTNAME.TERMINALID.<domain>` (lower case; DNS
/// names compare case-insensitively).
pub fn name_of(terminal_name: &str, terminal_id: &str, domain: &str) -> String {
    format!(
        "{}.{}.{}",
        terminal_name.to_ascii_lowercase(),
        terminal_id.to_ascii_lowercase(),
        domain.trim_end_matches('.').to_ascii_lowercase()
    )
}

/// The label of the router's own server part.
pub const ROUTER_LABEL: &str = "router";

const MAX_LABEL_LEN: usize = 63;
/// The classic UDP limit, for clients without EDNS (RFC 1035 2.3.4).
const CLASSIC_UDP: usize = 512;
/// The UDP payload size we announce and accept at most: the DNS flag
/// day 2020 value, which avoids IP fragmentation on common paths.
const OUR_UDP_PAYLOAD: u16 = 1232;
/// A TCP client gets this long for each message (RFC 7766 6.2.3: servers
/// may close idle connections).
const TCP_IDLE: Duration = Duration::from_secs(10);
/// At most this many TCP connections at once; more wait in the backlog.
const TCP_CONNECTIONS: usize = 64;
/// At most this many TCP connections from one source address; more are
/// closed at once (one client cannot take every slot).
pub const TCP_PER_SOURCE: usize = 8;

/// Which transport a message came on: it decides the answer's size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// At most the client's EDNS payload size (512 without EDNS), else
    /// truncated with TC set.
    Udp,
    /// Up to 65,535 bytes (the length prefix).
    Tcp,
}

/// What the zone holds for a name inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The name has this A record.
    Address(Ipv4Addr),
    /// No such name.
    NoSuchName,
    /// The zone could not be read (database error): SERVFAIL.
    Failed,
}

/// The zone's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// Lower case, no trailing dot, e.g. `vpn.center.example`.
    pub domain: String,
    pub ttl: u32,
}

impl Zone {
    /// Validates a domain (1-63-byte labels of letters, digits, `-`, `_`;
    /// 253 bytes at most) and lower-cases it.
    pub fn new(domain: &str, ttl: u32) -> Result<Self, String> {
        let d = domain.trim_end_matches('.').to_ascii_lowercase();
        if d.is_empty() || d.len() > 253 {
            return Err("must be a DNS name of 1-253 bytes".into());
        }
        for l in d.split('.') {
            if l.is_empty()
                || l.len() > MAX_LABEL_LEN
                || !l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!("label {l:?} is not a DNS label"));
            }
        }
        Ok(Zone { domain: d, ttl })
    }

    /// Splits a lower-case name into the part before the zone: `Some([])`
    /// for the apex, `None` outside the zone.
    fn relative<'a>(&self, name: &'a str) -> Option<Vec<&'a str>> {
        if name == self.domain {
            return Some(Vec::new());
        }
        let head = name.strip_suffix(self.domain.as_str())?.strip_suffix('.')?;
        Some(head.split('.').collect())
    }

    /// `prefix.<domain>.` as a wire name (the domain is validated, so
    /// this only fails for a prefix that is not a label).
    fn name(&self, prefix: Option<&str>) -> Option<Name> {
        let text = match prefix {
            Some(p) => format!("{p}.{}.", self.domain),
            None => format!("{}.", self.domain),
        };
        Name::from_ascii(text).ok()
    }

    /// The zone's SOA record (its minimum, the negative-caching TTL, is
    /// the zone's TTL: RFC 2308).
    fn soa(&self) -> Option<Record> {
        let rdata = SOA::new(
            self.name(Some("ns"))?,
            self.name(Some("hostmaster"))?,
            1,
            3600,
            600,
            86_400,
            self.ttl,
        );
        Some(Record::from_rdata(self.name(None)?, self.ttl, RData::SOA(rdata)))
    }
}

/// A name of the zone asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneName<'a> {
    /// `HOSTNAME.TERMINALID.<domain>`.
    Grant {
        terminal_name: &'a str,
        terminal_id: &'a str,
    },
    /// `router.TERMINALID.<domain>`.
    Router { terminal_id: &'a str },
}

/// A name in lower case, dot-separated, no trailing dot; `None` when a
/// label holds bytes outside printable ASCII or a dot (it never matches a
/// zone name).
fn name_lower(name: &Name) -> Option<String> {
    let mut out = String::new();
    for l in name.iter() {
        if l.iter().any(|b| !b.is_ascii_graphic() || *b == b'.') {
            return None;
        }
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(&String::from_utf8_lossy(l).to_ascii_lowercase());
    }
    Some(out)
}

/// A response with only a header: the query's ID, opcode and RD.
fn header_only(query: &Header, rcode: ResponseCode) -> Message {
    let mut m = Message::error_msg(query.id(), query.op_code(), rcode);
    m.set_recursion_desired(query.recursion_desired());
    m
}

/// The answer to one message: `None` for what gets no answer at all (too
/// short to carry a header, or itself a response); otherwise a response
/// with the query's ID, encoded and fitted to `transport`. `lookup`
/// resolves names inside the zone.
pub fn respond(
    msg: &[u8],
    zone: &Zone,
    transport: Transport,
    lookup: impl FnOnce(ZoneName<'_>) -> Lookup,
) -> Option<Vec<u8>> {
    let header = Header::read(&mut BinDecoder::new(msg)).ok()?;
    if header.message_type() == MessageType::Response {
        return None;
    }
    let (response, limit) = answer(msg, &header, zone, lookup);
    encode(&response, transport, limit)
}

/// The response message and the client's UDP payload size.
fn answer(msg: &[u8], header: &Header, zone: &Zone, lookup: impl FnOnce(ZoneName<'_>) -> Lookup) -> (Message, usize) {
    if header.op_code() != OpCode::Query {
        return (header_only(header, ResponseCode::NotImp), CLASSIC_UDP);
    }
    // Checked before decoding: the decoder reserves room for the count.
    if header.query_count() != 1 {
        return (header_only(header, ResponseCode::FormErr), CLASSIC_UDP);
    }
    // The whole message must be the query: bytes after its last record
    // (a datagram padded past our buffer, junk) are a format error, as in
    // BIND, not something to ignore.
    let mut decoder = BinDecoder::new(msg);
    let query = match Message::read(&mut decoder) {
        Ok(m) if decoder.is_empty() => m,
        _ => return (header_only(header, ResponseCode::FormErr), CLASSIC_UDP),
    };
    let Some(q) = query.query() else {
        return (header_only(header, ResponseCode::FormErr), CLASSIC_UDP);
    };
    let mut r = Message::new();
    r.set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(query.recursion_desired())
        .add_query(q.clone());
    let limit = match query.extensions() {
        Some(edns) => {
            let mut ours = Edns::new();
            ours.set_max_payload(OUR_UDP_PAYLOAD).set_version(0);
            r.set_edns(ours);
            if edns.version() > 0 {
                r.set_response_code(ResponseCode::BADVERS);
                return (r, CLASSIC_UDP);
            }
            usize::from(query.max_payload().min(OUR_UDP_PAYLOAD))
        }
        None => CLASSIC_UDP,
    };
    let name = name_lower(q.name());
    let rel = name.as_deref().and_then(|n| zone.relative(n));
    let class_ok = matches!(q.query_class(), DNSClass::IN | DNSClass::ANY);
    let transfer = matches!(q.query_type(), RecordType::AXFR | RecordType::IXFR);
    let (rcode, answer, authoritative) = match rel {
        None => (ResponseCode::Refused, None, false),
        Some(_) if !class_ok || transfer => (ResponseCode::Refused, None, false),
        Some(parts) => match parts.as_slice() {
            // The apex: SOA and NS.
            [] => match q.query_type() {
                RecordType::SOA => (ResponseCode::NoError, zone.soa(), true),
                RecordType::NS => {
                    let ns = zone
                        .name(Some("ns"))
                        .map(|n| Record::from_rdata(q.name().clone(), zone.ttl, RData::NS(NS(n))));
                    (ResponseCode::NoError, ns, true)
                }
                _ => (ResponseCode::NoError, None, true),
            },
            [host, tid] => {
                let which = if *host == ROUTER_LABEL {
                    ZoneName::Router { terminal_id: tid }
                } else {
                    ZoneName::Grant {
                        terminal_name: host,
                        terminal_id: tid,
                    }
                };
                match lookup(which) {
                    Lookup::Failed => (ResponseCode::ServFail, None, false),
                    Lookup::NoSuchName => (ResponseCode::NXDomain, None, true),
                    Lookup::Address(a) if matches!(q.query_type(), RecordType::A | RecordType::ANY) => {
                        // Owned by the question's name as sent (0x20 case
                        // randomisation): it compresses to a pointer.
                        let rec = Record::from_rdata(q.name().clone(), zone.ttl, RData::A(A(a)));
                        (ResponseCode::NoError, Some(rec), true)
                    }
                    // The name exists, not with this type.
                    Lookup::Address(_) => (ResponseCode::NoError, None, true),
                }
            }
            // `TERMINALID.<domain>` (an empty non-terminal when the router
            // has grants) and deeper names: no records.
            _ => (ResponseCode::NXDomain, None, true),
        },
    };
    r.set_response_code(rcode).set_authoritative(authoritative);
    match answer {
        // At the apex the SOA answer is owned by the question's name.
        Some(mut rec) => {
            if rec.record_type() == RecordType::SOA {
                rec.set_name(q.name().clone());
            }
            r.add_answer(rec);
        }
        // Negative answers from the zone carry its SOA (RFC 2308).
        None if authoritative => {
            if let Some(soa) = zone.soa() {
                r.add_name_server(soa);
            }
        }
        None => {}
    }
    (r, limit)
}

/// Encodes a response; over UDP one larger than `udp_limit` goes out as
/// header, question and OPT only, with TC set (RFC 2181 9: the client
/// retries over TCP).
fn encode(response: &Message, transport: Transport, udp_limit: usize) -> Option<Vec<u8>> {
    let bytes = response.to_vec().ok()?;
    match transport {
        Transport::Tcp if bytes.len() > usize::from(u16::MAX) => response.truncate().to_vec().ok(),
        Transport::Udp if bytes.len() > udp_limit => response.truncate().to_vec().ok(),
        _ => Some(bytes),
    }
}

/// The DNS server's sockets, bound by the daemon's wiring: UDP, and TCP
/// at the same address (None when that could not be bound: UDP still
/// answers, and truncated answers cannot be completed).
#[derive(Debug)]
pub struct DnsListeners {
    pub udp: UdpSocket,
    pub tcp: Option<TcpListener>,
}

impl DnsListeners {
    /// Binds UDP at `addr` and TCP at the address UDP got (the same port
    /// when `addr` asks for port 0); a TCP failure is logged, not fatal.
    pub async fn bind(addr: std::net::SocketAddr) -> std::io::Result<Self> {
        let udp = UdpSocket::bind(addr).await?;
        let local = udp.local_addr()?;
        let tcp = match TcpListener::bind(local).await {
            Ok(l) => Some(l),
            Err(e) => {
                log::error!("dns: UDP only: binding TCP {local}: {e}");
                None
            }
        };
        Ok(DnsListeners { udp, tcp })
    }
}

/// What the UDP and TCP sides share.
struct Shared<G, R> {
    center: Arc<Center<G, R>>,
    zone: Zone,
    limiter: Mutex<RateLimiter>,
}

impl<G, R> Shared<G, R> {
    fn admit(&self, source: std::net::IpAddr) -> bool {
        self.limiter
            .lock()
            .map(|mut l| l.check(source, Instant::now()) == Verdict::Answer)
            .unwrap_or(false)
    }
}

/// Answers DNS queries from the center's database on `listeners` until
/// `shutdown`, each source held to `limits`.
pub async fn serve<G, R>(
    listeners: DnsListeners,
    shutdown: impl Future<Output = ()>,
    center: Arc<Center<G, R>>,
    zone: Zone,
    limits: RateConfig,
) where
    G: GatewayCommands + 'static,
    R: RouterCommands + 'static,
{
    let shared = Arc::new(Shared {
        center,
        zone,
        limiter: Mutex::new(RateLimiter::new(limits)),
    });
    tokio::pin!(shutdown);
    tokio::select! {
        _ = &mut shutdown => {}
        _ = serve_udp(&listeners.udp, &shared) => {}
        _ = serve_tcp(listeners.tcp, &shared) => {}
        _ = report_drops(&shared.limiter) => {}
    }
}

/// Writes the rate limit's summary line once per interval with drops.
async fn report_drops(limiter: &Mutex<RateLimiter>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let report = limiter.lock().ok().and_then(|mut l| l.report(Instant::now()));
        if let Some(r) = report {
            log::warn!("{r}");
        }
    }
}

async fn serve_udp<G, R>(socket: &UdpSocket, shared: &Shared<G, R>)
where
    G: GatewayCommands + 'static,
    R: RouterCommands + 'static,
{
    // Larger than any payload size we accept; a longer datagram is cut
    // and then fails to decode (FORMERR).
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                log::debug!("dns: {e}");
                continue;
            }
        };
        // Before anything is decoded or looked up: a dropped query costs
        // a table lookup only.
        if !shared.admit(peer.ip()) {
            continue;
        }
        let msg = buf.get(..n).unwrap_or_default();
        let answer = respond(msg, &shared.zone, Transport::Udp, |name| lookup(&shared.center, name));
        if let Some(a) = answer {
            if let Err(e) = socket.send_to(&a, peer).await {
                log::debug!("dns answer to {peer}: {e}");
            }
        }
    }
}

async fn serve_tcp<G, R>(listener: Option<TcpListener>, shared: &Arc<Shared<G, R>>)
where
    G: GatewayCommands + 'static,
    R: RouterCommands + 'static,
{
    let Some(listener) = listener else {
        return std::future::pending().await;
    };
    let slots = Arc::new(Semaphore::new(TCP_CONNECTIONS));
    let gate = ConnectionGate::new(TCP_CONNECTIONS, TCP_PER_SOURCE);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                log::debug!("dns tcp: {e}");
                continue;
            }
        };
        let admitted = match gate.admit(peer.ip()) {
            Ok(a) => a,
            Err(e) => {
                // Debug: a flood would write a line per connection.
                log::debug!("dns tcp {peer}: {e}; closed");
                continue;
            }
        };
        let shared = shared.clone();
        conns.spawn(async move {
            if let Err(e) = tcp_connection(stream, peer.ip(), &shared).await {
                log::debug!("dns tcp {peer}: {e}");
            }
            drop((permit, admitted));
        });
        // Reap finished connections so the set does not grow.
        while conns.try_join_next().is_some() {}
    }
}

/// One TCP connection: length-prefixed queries answered in order until
/// the client closes or idles past [`TCP_IDLE`], or exceeds its query
/// rate (the connection is closed: the client cannot mistake that for an
/// answer).
async fn tcp_connection<G, R>(
    mut stream: TcpStream,
    peer: std::net::IpAddr,
    shared: &Shared<G, R>,
) -> std::io::Result<()>
where
    G: GatewayCommands,
    R: RouterCommands,
{
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        }
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut msg)).await {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        };
        if !shared.admit(peer) {
            return Ok(());
        }
        let Some(answer) = respond(&msg, &shared.zone, Transport::Tcp, |name| lookup(&shared.center, name)) else {
            continue;
        };
        let n = u16::try_from(answer.len()).map_err(std::io::Error::other)?;
        let mut out = Vec::with_capacity(answer.len().saturating_add(2));
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(&answer);
        stream.write_all(&out).await?;
    }
}

fn lookup<G: GatewayCommands, R: RouterCommands>(center: &Center<G, R>, name: ZoneName<'_>) -> Lookup {
    let found = center.reads().map_err(|e| e.to_string()).and_then(|st| {
        match name {
            ZoneName::Grant {
                terminal_name,
                terminal_id,
            } => st.live_grant_address(terminal_id, terminal_name),
            ZoneName::Router { terminal_id } => st.live_router_address(terminal_id),
        }
        .map_err(|e| e.to_string())
    });
    match found {
        Ok(Some(a)) => Lookup::Address(a),
        Ok(None) => Lookup::NoSuchName,
        Err(e) => {
            log::warn!("dns: cannot read the database: {e}");
            Lookup::Failed
        }
    }
}

#[cfg(test)]
mod tests;
