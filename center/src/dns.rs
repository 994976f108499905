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
//! - Names outside the zone: REFUSED (not a recursive resolver). Other
//!   record types of an existing name: NOERROR with no answer.
//!
//! Messages are parsed by hand (RFC 1035 section 4): the header, then the
//! one question (labels of 1-63 bytes, at most 255 bytes in all, no
//! compression pointers in a question); additional records (EDNS OPT from
//! dig) are ignored. Nothing here panics on input: the fuzz target
//! `center/fuzz` feeds arbitrary bytes to [`respond`].

use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::Arc;

use thiserror::Error;
use tokio::net::UdpSocket;

use crate::center::{Center, GatewayCommands, RouterCommands};

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

pub const TYPE_A: u16 = 1;
pub const TYPE_NS: u16 = 2;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_ANY: u16 = 255;
pub const CLASS_IN: u16 = 1;

pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_NOTIMP: u8 = 4;
pub const RCODE_REFUSED: u8 = 5;

const HEADER_LEN: usize = 12;
const MAX_NAME_LEN: usize = 255;
const MAX_LABEL_LEN: usize = 63;
/// Answers stay within the classic 512-byte UDP limit (one A record).
const MAX_UDP_ANSWER: usize = 512;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DnsError {
    #[error("message shorter than a DNS header")]
    Short,
    #[error("not a query (QR set)")]
    NotQuery,
    #[error("malformed question: {0}")]
    Malformed(&'static str),
    #[error("opcode {0} not implemented")]
    Opcode(u8),
}

/// A parsed query (the one question).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// The flags word as received (RD and opcode are echoed).
    pub flags: u16,
    /// The question's labels as sent (case kept, for the echo).
    pub labels: Vec<Vec<u8>>,
    pub qtype: u16,
    pub qclass: u16,
    /// The question section's bytes (name, type, class) as received.
    pub question: Vec<u8>,
}

impl Query {
    /// The name in lower case, dot-separated, no trailing dot (labels with
    /// bytes outside printable ASCII or a dot never match a zone name).
    pub fn name_lower(&self) -> Option<String> {
        let mut out = String::new();
        for l in &self.labels {
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
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let hi = *b.get(at)?;
    let lo = *b.get(at.checked_add(1)?)?;
    Some(u16::from_be_bytes([hi, lo]))
}

/// Parses a query's header and its single question.
pub fn parse_query(msg: &[u8]) -> Result<Query, DnsError> {
    let id = be16(msg, 0).ok_or(DnsError::Short)?;
    let flags = be16(msg, 2).ok_or(DnsError::Short)?;
    let qdcount = be16(msg, 4).ok_or(DnsError::Short)?;
    if msg.len() < HEADER_LEN {
        return Err(DnsError::Short);
    }
    if flags & 0x8000 != 0 {
        return Err(DnsError::NotQuery);
    }
    let opcode = u8::try_from((flags >> 11) & 0x0f).unwrap_or(15);
    if opcode != 0 {
        return Err(DnsError::Opcode(opcode));
    }
    if qdcount != 1 {
        return Err(DnsError::Malformed("exactly one question expected"));
    }
    let mut pos = HEADER_LEN;
    let mut labels = Vec::new();
    let mut name_len = 0usize;
    loop {
        let len = usize::from(*msg.get(pos).ok_or(DnsError::Malformed("name runs past the end"))?);
        if len & 0xc0 != 0 {
            return Err(DnsError::Malformed("compression or extended label in a question"));
        }
        name_len = name_len.saturating_add(len).saturating_add(1);
        if name_len > MAX_NAME_LEN {
            return Err(DnsError::Malformed("name longer than 255 bytes"));
        }
        pos = pos.saturating_add(1);
        if len == 0 {
            break;
        }
        if len > MAX_LABEL_LEN {
            return Err(DnsError::Malformed("label longer than 63 bytes"));
        }
        let end = pos.saturating_add(len);
        let label = msg
            .get(pos..end)
            .ok_or(DnsError::Malformed("label runs past the end"))?;
        labels.push(label.to_vec());
        pos = end;
    }
    let qtype = be16(msg, pos).ok_or(DnsError::Malformed("no question type"))?;
    let qclass = be16(msg, pos.saturating_add(2)).ok_or(DnsError::Malformed("no question class"))?;
    let question = msg
        .get(HEADER_LEN..pos.saturating_add(4))
        .ok_or(DnsError::Malformed("question runs past the end"))?
        .to_vec();
    Ok(Query {
        id,
        flags,
        labels,
        qtype,
        qclass,
        question,
    })
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

fn push_name(out: &mut Vec<u8>, name: &str) {
    for l in name.split('.').filter(|l| !l.is_empty()) {
        let b = l.as_bytes();
        let b = b.get(..MAX_LABEL_LEN).unwrap_or(b);
        out.push(u8::try_from(b.len()).unwrap_or(0));
        out.extend_from_slice(b);
    }
    out.push(0);
}

/// The zone's SOA; `owner_is_question`: the owner is written as a pointer
/// to the question's name (an answer at the apex).
fn soa_record(zone: &Zone, owner_is_question: bool, out: &mut Vec<u8>) {
    if owner_is_question {
        out.extend_from_slice(&[0xc0, 0x0c]);
    } else {
        push_name(out, &zone.domain);
    }
    out.extend_from_slice(&TYPE_SOA.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&zone.ttl.to_be_bytes());
    let mut rdata = Vec::new();
    push_name(&mut rdata, &format!("ns.{}", zone.domain));
    push_name(&mut rdata, &format!("hostmaster.{}", zone.domain));
    // serial, refresh, retry, expire, minimum (negative-caching TTL)
    for v in [1u32, 3600, 600, 86_400, zone.ttl] {
        rdata.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(&u16::try_from(rdata.len()).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(&rdata);
}

/// The answer to one message: `None` for what gets no answer at all (too
/// short to carry an ID, or itself a response); otherwise a response with
/// the query's ID. `lookup` resolves names inside the zone.
pub fn respond(msg: &[u8], zone: &Zone, lookup: impl FnOnce(ZoneName<'_>) -> Lookup) -> Option<Vec<u8>> {
    let q = match parse_query(msg) {
        Ok(q) => q,
        Err(DnsError::Short | DnsError::NotQuery) => return None,
        Err(e) => {
            // Header only, no question echoed.
            let id = be16(msg, 0)?;
            let flags = be16(msg, 2)?;
            let rcode = if matches!(e, DnsError::Opcode(_)) {
                RCODE_NOTIMP
            } else {
                RCODE_FORMERR
            };
            let mut out = Vec::with_capacity(HEADER_LEN);
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&(0x8000 | (flags & 0x7900) | u16::from(rcode)).to_be_bytes());
            out.extend_from_slice(&[0; 8]);
            return Some(out);
        }
    };
    let name = q.name_lower();
    let rel = name.as_deref().and_then(|n| zone.relative(n));
    let (rcode, answer, authoritative): (u8, Option<Vec<u8>>, bool) = match (&rel, q.qclass) {
        (None, _) => (RCODE_REFUSED, None, false),
        (Some(_), c) if c != CLASS_IN && c != TYPE_ANY => (RCODE_REFUSED, None, false),
        (Some(parts), _) => match parts.as_slice() {
            [] => {
                // The apex: SOA and NS.
                let mut rec = Vec::new();
                match q.qtype {
                    TYPE_SOA => {
                        soa_record(zone, true, &mut rec);
                        (RCODE_NOERROR, Some(rec), true)
                    }
                    TYPE_NS => {
                        rec.extend_from_slice(&[0xc0, 0x0c]);
                        rec.extend_from_slice(&TYPE_NS.to_be_bytes());
                        rec.extend_from_slice(&CLASS_IN.to_be_bytes());
                        rec.extend_from_slice(&zone.ttl.to_be_bytes());
                        let mut rd = Vec::new();
                        push_name(&mut rd, &format!("ns.{}", zone.domain));
                        rec.extend_from_slice(&u16::try_from(rd.len()).unwrap_or(0).to_be_bytes());
                        rec.extend_from_slice(&rd);
                        (RCODE_NOERROR, Some(rec), true)
                    }
                    _ => (RCODE_NOERROR, None, true),
                }
            }
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
                    Lookup::Failed => (RCODE_SERVFAIL, None, false),
                    Lookup::NoSuchName => (RCODE_NXDOMAIN, None, true),
                    Lookup::Address(a) if matches!(q.qtype, TYPE_A | TYPE_ANY) => {
                        let mut rec = vec![0xc0, 0x0c];
                        rec.extend_from_slice(&TYPE_A.to_be_bytes());
                        rec.extend_from_slice(&CLASS_IN.to_be_bytes());
                        rec.extend_from_slice(&zone.ttl.to_be_bytes());
                        rec.extend_from_slice(&4u16.to_be_bytes());
                        rec.extend_from_slice(&a.octets());
                        (RCODE_NOERROR, Some(rec), true)
                    }
                    // The name exists, not with this type.
                    Lookup::Address(_) => (RCODE_NOERROR, None, true),
                }
            }
            // `TERMINALID.<domain>` (an empty non-terminal when the router
            // has grants) and deeper names: no records.
            _ => (RCODE_NXDOMAIN, None, true),
        },
    };
    // Negative answers from the zone carry its SOA (RFC 2308).
    let mut authority = Vec::new();
    if authoritative && answer.is_none() {
        soa_record(zone, false, &mut authority);
    }
    let mut flags = 0x8000 | (q.flags & 0x7900) | u16::from(rcode);
    if authoritative {
        flags |= 0x0400;
    }
    let mut out = Vec::with_capacity(MAX_UDP_ANSWER);
    out.extend_from_slice(&q.id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&u16::from(answer.is_some()).to_be_bytes());
    out.extend_from_slice(&u16::from(!authority.is_empty()).to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&q.question);
    if let Some(a) = answer {
        out.extend_from_slice(&a);
    }
    out.extend_from_slice(&authority);
    Some(out)
}

/// Answers DNS queries on `socket` from the center's database until
/// `shutdown`.
pub async fn serve<G, R>(socket: UdpSocket, shutdown: impl Future<Output = ()>, center: Arc<Center<G, R>>, zone: Zone)
where
    G: GatewayCommands + 'static,
    R: RouterCommands + 'static,
{
    let mut buf = vec![0u8; 4096];
    tokio::pin!(shutdown);
    loop {
        let (n, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    log::debug!("dns: {e}");
                    continue;
                }
            },
        };
        let msg = buf.get(..n).unwrap_or_default();
        let answer = respond(msg, &zone, |name| lookup(&center, name));
        if let Some(a) = answer {
            if let Err(e) = socket.send_to(&a, peer).await {
                log::debug!("dns answer to {peer}: {e}");
            }
        }
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
