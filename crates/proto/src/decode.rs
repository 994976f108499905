//! One entry point per endpoint: [`decode_request`] on the receiving side,
//! [`encode_request`], [`encode_response`] and [`decode_response`] around it.
//!
//! # Order of checks in [`decode_request`]
//! 1. path matches the command -> else `UnknownPath`
//! 2. body size, then header sizes -> `TooLarge` (nothing parsed yet)
//! 3. header syntax and principal validation -> `Malformed`
//! 4. key lookup by the caller -> `UnknownTerminal`
//! 5. MAC over the raw body, constant time -> `BadMac`
//! 6. timestamp window -> `Stale`
//! 7. JSON parse and validation (`deny_unknown_fields`) -> `Malformed`
//! 8. nonce recorded in the [`NonceStore`] -> `Replayed`
//!
//! Why this order: nothing from an unauthenticated body reaches the JSON
//! parser, so an attacker without the key learns nothing about the schema
//! and cannot exercise it; freshness is judged only on authenticated
//! timestamps; and the nonce store changes only for a message that passed
//! every other check, so forged, stale or malformed messages can neither fill
//! it nor burn a legitimate nonce. A replay of an accepted message fails at
//! step 8.

use ring::rand::SecureRandom;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::auth::{self, AuthHeaders, Direction, Domain, MacInput, Nonce, NonceStore, ReplayGuard, Tag};
use crate::error::ProtoError;
use crate::keys::MacKey;
use crate::types::{GatewayName, TerminalId, ValidationError};

/// Which secret keys the MAC of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// Secret(ID): the installation notice only.
    SecretId,
    /// Secret(ID2): every other router <-> center message.
    SecretId2,
    /// The gateway's API key: centerd <-> gatewayd.
    GatewayApiKey,
}

/// Who signs a command: a terminal ID or a gateway name.
pub trait Principal: Sized + Clone + std::fmt::Debug + AsRef<str> {
    fn parse(s: &str) -> Result<Self, ValidationError>;
}

impl Principal for TerminalId {
    fn parse(s: &str) -> Result<Self, ValidationError> {
        TerminalId::new(s)
    }
}

impl Principal for GatewayName {
    fn parse(s: &str) -> Result<Self, ValidationError> {
        GatewayName::new(s)
    }
}

/// Default body limit for commands.
pub const DEFAULT_MAX_BODY: usize = 16 * 1024;

/// A command: its endpoint, who sends it, with which key, and its answer.
pub trait Command: Serialize + DeserializeOwned {
    /// The URL path (one of [`crate::paths`]).
    const PATH: &'static str;
    const DIRECTION: Direction;
    const KEY: KeyKind;
    /// Largest body accepted, in bytes.
    const MAX_BODY: usize = DEFAULT_MAX_BODY;
    /// Largest response body accepted, in bytes.
    const MAX_RESPONSE_BODY: usize = auth::MAX_RESPONSE_BODY;
    type Principal: Principal;
    type Response: Serialize + DeserializeOwned;
}

/// A command that passed every check of [`decode_request`].
///
/// Fields are private so that only [`decode_request`] can make one: holding
/// a `Verified<C>` is proof that its command was authenticated and fresh.
#[derive(Debug, Clone)]
pub struct Verified<C: Command> {
    principal: C::Principal,
    timestamp: u64,
    nonce: Nonce,
    mac: Tag,
    command: C,
}

impl<C: Command> Verified<C> {
    /// The authenticated sender (terminal ID or gateway name).
    pub fn principal(&self) -> &C::Principal {
        &self.principal
    }

    /// The sender's timestamp (within the replay window of the receiver).
    pub fn timestamp(&self) -> u64 {
        self.timestamp
    }

    pub fn nonce(&self) -> &Nonce {
        &self.nonce
    }

    /// The request's MAC; [`encode_response`] binds the answer to it.
    pub fn mac(&self) -> &Tag {
        &self.mac
    }

    pub fn command(&self) -> &C {
        &self.command
    }

    pub fn into_command(self) -> C {
        self.command
    }
}

/// Decodes and authenticates one incoming command; see the module docs for
/// the order of checks. `key_for` returns the MAC key of the principal
/// (`None` if unknown); `now` is the receiver's Unix time in seconds.
pub fn decode_request<C, S, F>(
    guard: &mut ReplayGuard<S>,
    path: &str,
    headers: &AuthHeaders,
    body: &[u8],
    now: u64,
    key_for: F,
) -> Result<Verified<C>, ProtoError>
where
    C: Command,
    S: NonceStore,
    F: FnOnce(&C::Principal, KeyKind) -> Option<MacKey>,
{
    let r = decode_inner(guard, path, headers, body, now, key_for);
    if let Err(e) = &r {
        // Debug only: rejections are routine on an Internet-facing port. The
        // text never holds a secret or unvalidated peer input beyond what
        // ProtoError keeps (a bounded path or serde message).
        log::debug!("rejected {} request: {e}", C::PATH);
    }
    r
}

fn decode_inner<C, S, F>(
    guard: &mut ReplayGuard<S>,
    path: &str,
    headers: &AuthHeaders,
    body: &[u8],
    now: u64,
    key_for: F,
) -> Result<Verified<C>, ProtoError>
where
    C: Command,
    S: NonceStore,
    F: FnOnce(&C::Principal, KeyKind) -> Option<MacKey>,
{
    if path != C::PATH {
        return Err(ProtoError::UnknownPath {
            path: path.chars().take(64).collect(),
        });
    }
    if body.len() > C::MAX_BODY {
        return Err(ProtoError::TooLarge {
            len: body.len(),
            max: C::MAX_BODY,
        });
    }
    let env = headers.parse()?;
    let principal = C::Principal::parse(&env.principal)?;
    let key = key_for(&principal, C::KEY).ok_or(ProtoError::UnknownTerminal)?;
    MacInput {
        domain: Domain::Request(C::DIRECTION),
        principal: principal.as_ref(),
        timestamp: env.timestamp,
        nonce: &env.nonce,
        path: C::PATH,
        binding: &[],
        body,
    }
    .verify(&key, &env.mac)?;
    guard.check_fresh(env.timestamp, now)?;
    let command: C = parse_json(body)?;
    guard.check_and_record(principal.as_ref(), &env.nonce, env.timestamp, now)?;
    Ok(Verified {
        principal,
        timestamp: env.timestamp,
        nonce: env.nonce,
        mac: env.mac,
        command,
    })
}

fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ProtoError> {
    serde_json::from_slice(body).map_err(|e| ProtoError::malformed(format!("body: {e}")))
}

/// A message ready to send: path, headers and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub path: &'static str,
    pub headers: AuthHeaders,
    pub body: Vec<u8>,
}

/// Serializes and signs a command (sending side).
pub fn encode_request<C: Command>(
    command: &C,
    principal: &C::Principal,
    key: &MacKey,
    now: u64,
    rng: &dyn SecureRandom,
) -> Result<Outgoing, ProtoError> {
    let body = serde_json::to_vec(command).map_err(|e| ProtoError::malformed(e.to_string()))?;
    if body.len() > C::MAX_BODY {
        return Err(ProtoError::TooLarge {
            len: body.len(),
            max: C::MAX_BODY,
        });
    }
    let headers = auth::sign_request(key, C::DIRECTION, principal.as_ref(), C::PATH, &body, now, rng)?;
    Ok(Outgoing {
        path: C::PATH,
        headers,
        body,
    })
}

/// Serializes and signs the answer to a verified command (receiving side).
pub fn encode_response<C: Command>(
    request: &Verified<C>,
    response: &C::Response,
    key: &MacKey,
    now: u64,
    rng: &dyn SecureRandom,
) -> Result<Outgoing, ProtoError> {
    let body = serde_json::to_vec(response).map_err(|e| ProtoError::malformed(e.to_string()))?;
    let headers = auth::sign_response(
        key,
        C::DIRECTION,
        request.principal.as_ref(),
        C::PATH,
        &request.mac,
        &body,
        now,
        rng,
    )?;
    Ok(Outgoing {
        path: C::PATH,
        headers,
        body,
    })
}

/// Authenticates and parses the answer to our own request (sending side).
/// `request` is what [`encode_request`] produced for it.
pub fn decode_response<C: Command>(
    request: &Outgoing,
    key: &MacKey,
    headers: &AuthHeaders,
    body: &[u8],
) -> Result<C::Response, ProtoError> {
    if body.len() > C::MAX_RESPONSE_BODY {
        return Err(ProtoError::TooLarge {
            len: body.len(),
            max: C::MAX_RESPONSE_BODY,
        });
    }
    let request_mac = Tag::from_hex(&request.headers.mac)?;
    auth::verify_response_mac(
        key,
        C::DIRECTION,
        &request.headers.principal,
        C::PATH,
        &request_mac,
        headers,
        body,
    )?;
    parse_json(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{MemoryNonceStore, ReplayConfig};
    use crate::keys::{GatewayApiKey, SecretBytes, SecretId, SecretId2};
    use crate::messages::{Ack, FailureNotice, InstallRequest, ReleaseCommand, TearDown};
    use crate::paths;
    use crate::seal::ReplyKeyPair;
    use crate::types::{FailureCode, FailureDetail, TerminalName};
    use ring::rand::SystemRandom;

    const NOW: u64 = 1_800_000_000;

    fn tid() -> TerminalId {
        TerminalId::new("router-1").unwrap()
    }

    fn sid2() -> SecretId2 {
        SecretId2::from_array([2; 32])
    }

    fn guard() -> ReplayGuard<MemoryNonceStore> {
        ReplayGuard::new(MemoryNonceStore::new(100), ReplayConfig::default())
    }

    fn notice() -> FailureNotice {
        FailureNotice {
            code: FailureCode::Ipsec,
            detail: FailureDetail::new("charon died").unwrap(),
        }
    }

    fn signed_notice(at: u64) -> Outgoing {
        encode_request(&notice(), &tid(), &sid2().mac_key(), at, &SystemRandom::new()).unwrap()
    }

    /// Resolver of a center that knows router-1 only.
    fn center_keys(p: &TerminalId, kind: KeyKind) -> Option<MacKey> {
        if p.as_str() != "router-1" {
            return None;
        }
        match kind {
            KeyKind::SecretId => Some(SecretId::from_array([1; 32]).mac_key()),
            KeyKind::SecretId2 => Some(sid2().mac_key()),
            KeyKind::GatewayApiKey => None,
        }
    }

    fn decode_notice(
        g: &mut ReplayGuard<MemoryNonceStore>,
        out: &Outgoing,
        now: u64,
    ) -> Result<Verified<FailureNotice>, ProtoError> {
        decode_request(g, out.path, &out.headers, &out.body, now, center_keys)
    }

    #[test]
    fn accepts_and_records_once() {
        let mut g = guard();
        let out = signed_notice(NOW);
        let v = decode_notice(&mut g, &out, NOW + 5).unwrap();
        assert_eq!(v.principal(), &tid());
        assert_eq!(v.command(), &notice());
        assert_eq!(g.store().len(), 1);
        // Replay: refused, store unchanged.
        assert_eq!(decode_notice(&mut g, &out, NOW + 6).unwrap_err(), ProtoError::Replayed);
        assert_eq!(g.store().len(), 1);
    }

    #[test]
    fn bad_mac_changes_nothing() {
        let mut g = guard();
        let mut out = signed_notice(NOW);
        out.body = br#"{"code":"ipsec","detail":"charon lived"}"#.to_vec();
        assert_eq!(decode_notice(&mut g, &out, NOW).unwrap_err(), ProtoError::BadMac);
        let mut out = signed_notice(NOW);
        out.headers.timestamp = (NOW + 1).to_string();
        assert_eq!(decode_notice(&mut g, &out, NOW).unwrap_err(), ProtoError::BadMac);
        let mut out = signed_notice(NOW);
        out.headers.nonce = "00".repeat(16);
        assert_eq!(decode_notice(&mut g, &out, NOW).unwrap_err(), ProtoError::BadMac);
        let mut out = signed_notice(NOW);
        out.headers.mac = "00".repeat(32);
        assert_eq!(decode_notice(&mut g, &out, NOW).unwrap_err(), ProtoError::BadMac);
        assert!(g.store().is_empty());
    }

    #[test]
    fn wrong_key_rejected() {
        let mut g = guard();
        // Signed with Secret(ID) where Secret(ID2) is required.
        let out = encode_request(
            &notice(),
            &tid(),
            &SecretId::from_array([1; 32]).mac_key(),
            NOW,
            &SystemRandom::new(),
        )
        .unwrap();
        assert_eq!(decode_notice(&mut g, &out, NOW).unwrap_err(), ProtoError::BadMac);
        // Another router's key.
        let out = encode_request(
            &notice(),
            &tid(),
            &SecretId2::from_array([3; 32]).mac_key(),
            NOW,
            &SystemRandom::new(),
        )
        .unwrap();
        assert_eq!(decode_notice(&mut g, &out, NOW).unwrap_err(), ProtoError::BadMac);
        assert!(g.store().is_empty());
    }

    #[test]
    fn principal_swap_rejected() {
        let mut g = guard();
        let mut out = signed_notice(NOW);
        out.headers.principal = "router-2".into();
        let both = |p: &TerminalId, _k: KeyKind| (p.as_str().starts_with("router-")).then(|| sid2().mac_key());
        let r: Result<Verified<FailureNotice>, _> =
            decode_request(&mut g, out.path, &out.headers, &out.body, NOW, both);
        assert_eq!(r.unwrap_err(), ProtoError::BadMac);
        assert!(g.store().is_empty());
    }

    #[test]
    fn unknown_terminal() {
        let mut g = guard();
        let out = encode_request(
            &notice(),
            &TerminalId::new("stranger").unwrap(),
            &sid2().mac_key(),
            NOW,
            &SystemRandom::new(),
        )
        .unwrap();
        let e = decode_notice(&mut g, &out, NOW).unwrap_err();
        assert_eq!(e, ProtoError::UnknownTerminal);
        assert_eq!(e.http_status(), 401);
        assert!(g.store().is_empty());
    }

    #[test]
    fn stale_changes_nothing() {
        let mut g = guard();
        let out = signed_notice(NOW);
        for now in [NOW + 121, NOW - 121] {
            let e = decode_notice(&mut g, &out, now).unwrap_err();
            assert!(matches!(e, ProtoError::Stale { .. }), "{e:?}");
        }
        assert!(g.store().is_empty());
        // Edge of the window is fine.
        assert!(decode_notice(&mut g, &out, NOW + 120).is_ok());
    }

    fn sign_raw<C: Command>(body: &[u8]) -> Outgoing {
        let headers = auth::sign_request(
            &sid2().mac_key(),
            C::DIRECTION,
            "router-1",
            C::PATH,
            body,
            NOW,
            &SystemRandom::new(),
        )
        .unwrap();
        Outgoing {
            path: C::PATH,
            headers,
            body: body.to_vec(),
        }
    }

    #[test]
    fn unknown_field_malformed_json_and_invalid_values_change_nothing() {
        let mut g = guard();
        let bodies: [&[u8]; 8] = [
            br#"{"code":"ipsec","detail":"","extra":1}"#,
            br#"{"code":"ipsec","detail":""#,
            br#"{"code":"ipsec"}"#,
            br#"{"code":"meltdown","detail":""}"#,
            br#"{"code":"ipsec","detail":"bell\u0007"}"#,
            br#"{"code":"ipsec","detail":"","detail":""}"#,
            br#"[]"#,
            b"\xff\xfe",
        ];
        for body in bodies {
            let out = sign_raw::<FailureNotice>(body);
            let e = decode_notice(&mut g, &out, NOW).unwrap_err();
            assert!(matches!(e, ProtoError::Malformed { .. }), "{e:?}");
            assert_eq!(e.http_status(), 400);
        }
        assert!(g.store().is_empty());
    }

    #[test]
    fn oversized_rejected_before_anything() {
        let mut g = guard();
        let mut body = br#"{"code":"ipsec","detail":""#.to_vec();
        body.resize(FailureNotice::MAX_BODY + 1, b' ');
        let out = sign_raw::<FailureNotice>(&body);
        let e = decode_notice(&mut g, &out, NOW).unwrap_err();
        assert!(matches!(e, ProtoError::TooLarge { .. }));
        assert_eq!(e.http_status(), 413);
        // Even with garbage headers, size is judged first.
        let mut out2 = out.clone();
        out2.headers.mac = "garbage".into();
        assert!(matches!(
            decode_notice(&mut g, &out2, NOW).unwrap_err(),
            ProtoError::TooLarge { .. }
        ));
        assert!(g.store().is_empty());
    }

    #[test]
    fn wrong_path_and_malformed_headers() {
        let mut g = guard();
        let out = signed_notice(NOW);
        let r: Result<Verified<FailureNotice>, _> = decode_request(
            &mut g,
            paths::center::INSTALL,
            &out.headers,
            &out.body,
            NOW,
            center_keys,
        );
        assert_eq!(r.unwrap_err().http_status(), 404);
        // A valid failure notice body presented at another endpoint does not
        // verify there (the path is in the MAC).
        let r: Result<Verified<InstallRequest>, _> = decode_request(
            &mut g,
            paths::center::INSTALL,
            &out.headers,
            &out.body,
            NOW,
            center_keys,
        );
        assert_eq!(r.unwrap_err(), ProtoError::BadMac);
        let mut bad = out.clone();
        bad.headers.principal = "not a terminal!".into();
        assert!(matches!(
            decode_notice(&mut g, &bad, NOW).unwrap_err(),
            ProtoError::Malformed { .. }
        ));
        let mut bad = out.clone();
        bad.headers.timestamp = "soon".into();
        assert!(matches!(
            decode_notice(&mut g, &bad, NOW).unwrap_err(),
            ProtoError::Malformed { .. }
        ));
        assert!(g.store().is_empty());
    }

    #[test]
    fn key_kind_follows_the_command() {
        let mut g = guard();
        let rng = SystemRandom::new();
        let kp = ReplyKeyPair::generate(&rng).unwrap();
        let req = InstallRequest {
            reply_key: kp.public_key(),
            proof: None,
        };
        let out = encode_request(&req, &tid(), &SecretId::from_array([1; 32]).mac_key(), NOW, &rng).unwrap();
        let mut asked = None;
        let v: Verified<InstallRequest> = decode_request(&mut g, out.path, &out.headers, &out.body, NOW, |p, k| {
            asked = Some(k);
            center_keys(p, k)
        })
        .unwrap();
        assert_eq!(asked, Some(KeyKind::SecretId));
        assert_eq!(v.command(), &req);
    }

    #[test]
    fn reflection_across_directions_rejected() {
        // The center signs a release for the router with Secret(ID2); the
        // same bytes must not pass at the center (or as another direction).
        let rng = SystemRandom::new();
        let cmd = ReleaseCommand {
            terminal_name: TerminalName::new("pc1").unwrap(),
        };
        let out = encode_request(&cmd, &tid(), &sid2().mac_key(), NOW, &rng).unwrap();
        // Accepted by the router...
        let mut router_guard = guard();
        let ok: Result<Verified<ReleaseCommand>, _> =
            decode_request(&mut router_guard, out.path, &out.headers, &out.body, NOW, |_, _| {
                Some(sid2().mac_key())
            });
        assert!(ok.is_ok());
        // ...but a MAC over the same tuple in the router->center domain differs.
        let h = auth::sign_request(
            &sid2().mac_key(),
            Direction::RouterToCenter,
            "router-1",
            out.path,
            &out.body,
            NOW,
            &rng,
        )
        .unwrap();
        let mut g = guard();
        let r: Result<Verified<ReleaseCommand>, _> =
            decode_request(&mut g, out.path, &h, &out.body, NOW, |_, _| Some(sid2().mac_key()));
        assert_eq!(r.unwrap_err(), ProtoError::BadMac);
    }

    #[test]
    fn responses_round_trip_and_bind() {
        let rng = SystemRandom::new();
        let mut g = guard();
        let out = signed_notice(NOW);
        let v = decode_notice(&mut g, &out, NOW).unwrap();
        let resp = encode_response(&v, &Ack {}, &sid2().mac_key(), NOW, &rng).unwrap();
        assert_eq!(resp.body, b"{}");
        let ack = decode_response::<FailureNotice>(&out, &sid2().mac_key(), &resp.headers, &resp.body).unwrap();
        assert_eq!(ack, Ack {});
        // The same response does not answer another request.
        let other = signed_notice(NOW);
        assert_eq!(
            decode_response::<FailureNotice>(&other, &sid2().mac_key(), &resp.headers, &resp.body).unwrap_err(),
            ProtoError::BadMac
        );
        // Wrong key.
        assert_eq!(
            decode_response::<FailureNotice>(
                &out,
                &SecretId2::from_array([9; 32]).mac_key(),
                &resp.headers,
                &resp.body
            )
            .unwrap_err(),
            ProtoError::BadMac
        );
    }

    #[test]
    fn gateway_commands_use_gateway_names() {
        let rng = SystemRandom::new();
        let gw = GatewayName::new("gw-a").unwrap();
        let key = GatewayApiKey::from_array([7; 32]);
        let cmd = TearDown { terminal_id: tid() };
        let out = encode_request(&cmd, &gw, &key.mac_key(), NOW, &rng).unwrap();
        let mut g = guard();
        let v: Verified<TearDown> =
            decode_request(&mut g, out.path, &out.headers, &out.body, NOW, |p: &GatewayName, k| {
                (p.as_str() == "gw-a" && k == KeyKind::GatewayApiKey).then(|| key.mac_key())
            })
            .unwrap();
        assert_eq!(v.principal(), &gw);
        assert_eq!(v.command(), &cmd);
    }
}
