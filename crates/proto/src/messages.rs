//! One type per message of PROTOCOL.md, JSON on the wire.
//!
//! Every struct denies unknown fields and is built from validated values
//! ([`crate::types`]), so a message that deserializes is a valid message;
//! the few rules that span fields are checked by constructors that
//! deserialization goes through too. Secret values never sit in a plain
//! field: they travel in a [`SealedBox`] (responses to the router) or an
//! [`EncryptedField`] (maintenance request details, the PSK to a gateway),
//! and the helpers here seal and open them.
//!
//! The principal (terminal ID or gateway name) is not repeated in bodies: it
//! is in the authentication headers and covered by the MAC.

use ring::rand::SecureRandom;
use serde::{Deserialize, Deserializer, Serialize};

use crate::auth::Direction;
use crate::decode::{Command, KeyKind};
use crate::error::ProtoError;
use crate::initiation::{InitiationMode, InitiationPreference, WanAddress};
use crate::keys::{sealed_serde, MaintenancePassword, Psk, SecretBytes, SecretId2};
use crate::paths;
use crate::seal::{self, EncryptedField, FieldKey, FieldPurpose, ReplyKeyPair, ReplyPublicKey, SealPurpose, SealedBox};
use crate::types::{
    AcceptanceNumber, BoundedSet, ClaimantLevel, ClaimantName, FailureCode, FailureDetail, GatewayName, IkeIdentity,
    Ipv4Cidr, Named, Phone, RequestContent, TerminalId, TerminalName, TerminalNames, UnicastAddr, Urgency,
    ValidationError,
};

/// The empty answer of commands that only need an acknowledgement: `{}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Ack {}

// ---------------------------------------------------------------------------
// 1. Installation notice
// ---------------------------------------------------------------------------

/// 1. Installation notice, router -> center, MAC with Secret(ID).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InstallRequest {
    /// The router's fresh reply key; [`InstallResponse`] is sealed to it.
    pub reply_key: ReplyPublicKey,
    /// Sent by a router that is already installed: proves it holds the
    /// current Secret(ID2) (see [`crate::reinstall`]). Absent on a first
    /// installation, so old routers still install.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<crate::reinstall::ReinstallProof>,
}

impl Command for InstallRequest {
    const PATH: &'static str = paths::center::INSTALL;
    const DIRECTION: Direction = Direction::RouterToCenter;
    const KEY: KeyKind = KeyKind::SecretId;
    type Principal = TerminalId;
    type Response = InstallResponse;
}

/// Answer to [`InstallRequest`]: [`InstallSecrets`] sealed to the reply key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InstallResponse {
    pub sealed: SealedBox,
}

/// What the center hands the router at installation (seed 0124-0129).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, try_from = "InstallSecretsWire")]
pub struct InstallSecrets {
    psk: Psk,
    secret_id2: SecretId2,
    maintenance_password: MaintenancePassword,
    server_part_vpnnat: UnicastAddr,
    router_part_vpnnat: UnicastAddr,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InstallSecretsWire {
    #[serde(deserialize_with = "sealed_serde::deserialize")]
    psk: Psk,
    #[serde(deserialize_with = "sealed_serde::deserialize")]
    secret_id2: SecretId2,
    #[serde(deserialize_with = "sealed_serde::password::deserialize")]
    maintenance_password: MaintenancePassword,
    server_part_vpnnat: UnicastAddr,
    router_part_vpnnat: UnicastAddr,
}

impl TryFrom<InstallSecretsWire> for InstallSecrets {
    type Error = ValidationError;
    fn try_from(w: InstallSecretsWire) -> Result<Self, Self::Error> {
        InstallSecrets::new(
            w.psk,
            w.secret_id2,
            w.maintenance_password,
            w.server_part_vpnnat,
            w.router_part_vpnnat,
        )
    }
}

/// Borrowed view used only to serialize into a sealed box.
#[derive(Serialize)]
struct InstallSecretsOut<'a> {
    #[serde(serialize_with = "ser_secret")]
    psk: &'a Psk,
    #[serde(serialize_with = "ser_secret")]
    secret_id2: &'a SecretId2,
    #[serde(serialize_with = "ser_password")]
    maintenance_password: &'a MaintenancePassword,
    server_part_vpnnat: UnicastAddr,
    router_part_vpnnat: UnicastAddr,
}

fn ser_secret<S: serde::Serializer, K: SecretBytes>(k: &&K, s: S) -> Result<S::Ok, S::Error> {
    sealed_serde::serialize(*k, s)
}

fn ser_password<S: serde::Serializer>(p: &&MaintenancePassword, s: S) -> Result<S::Ok, S::Error> {
    sealed_serde::password::serialize(p, s)
}

impl InstallSecrets {
    pub fn new(
        psk: Psk,
        secret_id2: SecretId2,
        maintenance_password: MaintenancePassword,
        server_part_vpnnat: UnicastAddr,
        router_part_vpnnat: UnicastAddr,
    ) -> Result<Self, ValidationError> {
        if server_part_vpnnat == router_part_vpnnat {
            return Err(ValidationError::new(
                "installation VPNNAT addresses",
                "server part and router part need different addresses",
            ));
        }
        if psk.expose_secret() == secret_id2.expose_secret() {
            return Err(ValidationError::new(
                "installation secrets",
                "PSK and Secret(ID2) must be independent",
            ));
        }
        Ok(InstallSecrets {
            psk,
            secret_id2,
            maintenance_password,
            server_part_vpnnat,
            router_part_vpnnat,
        })
    }

    pub fn psk(&self) -> &Psk {
        &self.psk
    }

    pub fn secret_id2(&self) -> &SecretId2 {
        &self.secret_id2
    }

    pub fn maintenance_password(&self) -> &MaintenancePassword {
        &self.maintenance_password
    }

    pub fn server_part_vpnnat(&self) -> UnicastAddr {
        self.server_part_vpnnat
    }

    pub fn router_part_vpnnat(&self) -> UnicastAddr {
        self.router_part_vpnnat
    }

    /// Center side: seals these to the router's reply key.
    pub fn seal(
        &self,
        rng: &dyn SecureRandom,
        terminal_id: &TerminalId,
        reply_key: &ReplyPublicKey,
    ) -> Result<InstallResponse, ProtoError> {
        let out = InstallSecretsOut {
            psk: &self.psk,
            secret_id2: &self.secret_id2,
            maintenance_password: &self.maintenance_password,
            server_part_vpnnat: self.server_part_vpnnat,
            router_part_vpnnat: self.router_part_vpnnat,
        };
        let sealed = seal::seal_json(rng, reply_key, terminal_id, SealPurpose::InstallResponse, &out)?;
        Ok(InstallResponse { sealed })
    }
}

impl InstallResponse {
    /// Router side: opens with the reply key sent in the request.
    pub fn open(&self, reply: ReplyKeyPair, terminal_id: &TerminalId) -> Result<InstallSecrets, ProtoError> {
        Ok(reply.open_json(terminal_id, SealPurpose::InstallResponse, &self.sealed)?)
    }
}

// ---------------------------------------------------------------------------
// 2. Failure notice
// ---------------------------------------------------------------------------

/// 2. Failure notice, router -> center, MAC with Secret(ID2). Answer: [`Ack`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FailureNotice {
    pub code: FailureCode,
    pub detail: FailureDetail,
}

impl Command for FailureNotice {
    const PATH: &'static str = paths::center::FAILURE;
    const DIRECTION: Direction = Direction::RouterToCenter;
    const KEY: KeyKind = KeyKind::SecretId2;
    type Principal = TerminalId;
    type Response = Ack;
}

// ---------------------------------------------------------------------------
// 3. VPN gateway address request
// ---------------------------------------------------------------------------

/// 3. VPN gateway address request, router -> center, MAC with Secret(ID2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GatewayAddressRequest {
    pub reply_key: ReplyPublicKey,
    /// The router's configured tunnel initiation mode (absent: `auto`).
    #[serde(default, skip_serializing_if = "InitiationPreference::is_auto")]
    pub initiation: InitiationPreference,
    /// The router's WAN IPv4 address, or that it has none (absent: not
    /// reported, as from routers before issue 17).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wan: Option<WanAddress>,
}

impl Command for GatewayAddressRequest {
    const PATH: &'static str = paths::center::GATEWAY_ADDRESS;
    const DIRECTION: Direction = Direction::RouterToCenter;
    const KEY: KeyKind = KeyKind::SecretId2;
    type Principal = TerminalId;
    type Response = GatewayAddressResponse;
}

/// Answer to [`GatewayAddressRequest`]: [`GatewayInfo`] sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GatewayAddressResponse {
    pub sealed: SealedBox,
}

/// At most this many center networks are announced to a router.
pub const MAX_CENTER_NETWORKS: usize = 32;

/// What the router's IKE responder needs about its gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayInfo {
    /// The gateway's global address: the router's IPsec peer.
    pub gateway_ip: UnicastAddr,
    /// The IKE identity the gateway authenticates as.
    pub gateway_ike_id: IkeIdentity,
    /// Center-side networks the tunnel carries (the remote traffic selector).
    pub center_networks: BoundedSet<Ipv4Cidr, 1, MAX_CENTER_NETWORKS>,
    /// Who initiates the tunnel. Absent (the seed's `gateway`) is not
    /// written, so older routers still read answers in that mode.
    #[serde(default, skip_serializing_if = "InitiationMode::is_gateway")]
    pub initiation: InitiationMode,
}

impl GatewayInfo {
    pub fn seal(
        &self,
        rng: &dyn SecureRandom,
        terminal_id: &TerminalId,
        reply_key: &ReplyPublicKey,
    ) -> Result<GatewayAddressResponse, ProtoError> {
        let sealed = seal::seal_json(rng, reply_key, terminal_id, SealPurpose::GatewayAddressResponse, self)?;
        Ok(GatewayAddressResponse { sealed })
    }
}

impl GatewayAddressResponse {
    pub fn open(&self, reply: ReplyKeyPair, terminal_id: &TerminalId) -> Result<GatewayInfo, ProtoError> {
        Ok(reply.open_json(terminal_id, SealPurpose::GatewayAddressResponse, &self.sealed)?)
    }
}

// ---------------------------------------------------------------------------
// Tunnel lost (beyond the seed)
// ---------------------------------------------------------------------------

/// Router -> center, MAC with Secret(ID2): the router restarted (crash,
/// power cut, reboot) while it held a gateway, so its IKE responder lost
/// the IKE SA the gateway still holds. Without this the gateway notices
/// only by dead-peer detection, a minute or more later; with it the center
/// has the gateway start a fresh IKE SA at once. Carries nothing but the
/// authenticated principal: the center knows the router's gateway and
/// tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TunnelLostNotice {}

impl Command for TunnelLostNotice {
    const PATH: &'static str = paths::center::TUNNEL_LOST;
    const DIRECTION: Direction = Direction::RouterToCenter;
    const KEY: KeyKind = KeyKind::SecretId2;
    type Principal = TerminalId;
    type Response = TunnelLostAnswer;
}

/// What the center did about a [`TunnelLostNotice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum TunnelRebuild {
    /// The gateway built the tunnel afresh and it is up.
    Up,
    /// The gateway was told to build it afresh; not up yet when answered
    /// (its tunnel-up event follows as usual).
    Connecting,
    /// The router holds no gateway slot, or its tunnel carries nothing:
    /// there is no tunnel to rebuild.
    NotDue,
}

/// Answer to [`TunnelLostNotice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TunnelLostAnswer {
    pub tunnel: TunnelRebuild,
}

// ---------------------------------------------------------------------------
// Site end (issue 19, item 7)
// ---------------------------------------------------------------------------

/// Router -> center, MAC with Secret(ID2): the site owner ends request
/// `acceptance_number` of this router (the LAN page's "end maintenance",
/// `routerd end N`). The center ends it as for an operator's end (end
/// command, judgments, releases, VPN end), audited under the router; a
/// request of another router is refused (403) and nothing changes. The
/// router sends it again until answered, so an end that already happened
/// answers [`SiteEndOutcome::AlreadyEnded`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SiteEndRequest {
    pub acceptance_number: AcceptanceNumber,
}

impl Command for SiteEndRequest {
    const PATH: &'static str = paths::center::SITE_END;
    const DIRECTION: Direction = Direction::RouterToCenter;
    const KEY: KeyKind = KeyKind::SecretId2;
    type Principal = TerminalId;
    type Response = SiteEndAnswer;
}

/// What the center did about a [`SiteEndRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum SiteEndOutcome {
    /// Ended now, at this request.
    Ended,
    /// It was ended already (an operator, its time limit, or an earlier
    /// copy of this request whose answer was lost).
    AlreadyEnded,
}

/// Answer to [`SiteEndRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SiteEndAnswer {
    pub outcome: SiteEndOutcome,
}

// ---------------------------------------------------------------------------
// Request states (issue 19, item 1)
// ---------------------------------------------------------------------------

/// At most this many acceptance numbers in one [`RequestStatesQuery`]
/// (the center caps a router's open requests far lower).
pub const MAX_REQUEST_STATES: usize = 64;

/// 1..=64 distinct acceptance numbers a router holds open.
pub type OpenRequests = BoundedSet<AcceptanceNumber, 1, MAX_REQUEST_STATES>;

/// 0..=64 distinct acceptance numbers the center has ended.
pub type EndedRequests = BoundedSet<AcceptanceNumber, 0, MAX_REQUEST_STATES>;

/// Router -> center, MAC with Secret(ID2): "these requests are open here;
/// which of them have you ended?" The center's end reaches the router as
/// commands through the tunnel; when the tunnel is down at that moment (a
/// gateway outage, the router offline), the router would keep the request
/// waiting, its NAT rows and its gateway for good. The router asks while
/// it holds open requests (each health-watch tick), so both sides converge
/// without an operator. Read-only at the center: nothing is stored or
/// audited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RequestStatesQuery {
    pub open: OpenRequests,
}

impl Command for RequestStatesQuery {
    const PATH: &'static str = paths::center::REQUEST_STATES;
    const DIRECTION: Direction = Direction::RouterToCenter;
    const KEY: KeyKind = KeyKind::SecretId2;
    type Principal = TerminalId;
    type Response = RequestStatesAnswer;
}

/// Answer to [`RequestStatesQuery`]: the asked numbers that are not open
/// requests of this router at the center (ended, or unknown to it: a
/// number of another router reads the same, so nothing leaks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RequestStatesAnswer {
    pub ended: EndedRequests,
}

// ---------------------------------------------------------------------------
// 4. Maintenance request
// ---------------------------------------------------------------------------

/// 4. Maintenance request, router -> center, MAC with Secret(ID2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MaintenanceRequest {
    pub reply_key: ReplyPublicKey,
    pub claimant_level: ClaimantLevel,
    pub urgency: Urgency,
    /// [`MaintenanceDetails`] encrypted under Secret(ID2).
    pub details: EncryptedField,
    /// The router shows when its grants end (issue 19, item 8): the
    /// answer may carry [`MaintenanceResponse::ends_at`]. Absent (routers
    /// before it, whose parser refuses unknown fields): the answer leaves
    /// `ends_at` out.
    #[serde(default, skip_serializing_if = "is_false")]
    pub wants_ends_at: bool,
    /// The router shows the idle limit too (issue 19, item 8): the answer
    /// may carry [`MaintenanceResponse::idle_timeout_secs`]. Absent
    /// (routers that know `ends_at` but not this, whose parser refuses
    /// unknown fields): the answer leaves it out.
    #[serde(default, skip_serializing_if = "is_false")]
    pub wants_idle_timeout: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Command for MaintenanceRequest {
    const PATH: &'static str = paths::center::MAINTENANCE;
    const DIRECTION: Direction = Direction::RouterToCenter;
    const KEY: KeyKind = KeyKind::SecretId2;
    type Principal = TerminalId;
    type Response = MaintenanceResponse;
}

/// The fields of a maintenance request encrypted with Secret(ID2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceDetails {
    pub claimant_name: ClaimantName,
    pub terminal_names: TerminalNames,
    pub phone: Phone,
    pub content: RequestContent,
}

impl MaintenanceRequest {
    /// Router side: builds the request, encrypting the details.
    pub fn new(
        rng: &dyn SecureRandom,
        secret_id2: &SecretId2,
        terminal_id: &TerminalId,
        reply_key: ReplyPublicKey,
        claimant_level: ClaimantLevel,
        urgency: Urgency,
        details: &MaintenanceDetails,
    ) -> Result<Self, ProtoError> {
        let key = FieldKey::for_router(secret_id2, terminal_id)?;
        let details = key.encrypt_json(rng, FieldPurpose::MaintenanceRequest, "", details)?;
        Ok(MaintenanceRequest {
            reply_key,
            claimant_level,
            urgency,
            details,
            wants_ends_at: true,
            wants_idle_timeout: true,
        })
    }

    /// The request as a router from before `ends_at` sends it.
    pub fn without_ends_at(mut self) -> Self {
        self.wants_ends_at = false;
        self.wants_idle_timeout = false;
        self
    }

    /// The request as a router from before `idle_timeout_secs` sends it
    /// (it asks for `ends_at` only).
    pub fn without_idle_timeout(mut self) -> Self {
        self.wants_idle_timeout = false;
        self
    }

    /// Center side: decrypts the details (after [`crate::decode_request`]).
    pub fn open_details(
        &self,
        secret_id2: &SecretId2,
        terminal_id: &TerminalId,
    ) -> Result<MaintenanceDetails, ProtoError> {
        let key = FieldKey::for_router(secret_id2, terminal_id)?;
        Ok(key.decrypt_json(FieldPurpose::MaintenanceRequest, "", &self.details)?)
    }
}

/// Answer to [`MaintenanceRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MaintenanceResponse {
    pub acceptance_number: AcceptanceNumber,
    /// [`Grants`] sealed to the reply key.
    pub sealed: SealedBox,
    /// When the center ends the request by itself (Unix seconds; issue 19,
    /// item 8): sent only to routers that asked
    /// ([`MaintenanceRequest::wants_ends_at`]). Absent: no limit shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<u64>,
    /// The center's idle timeout (`[center] idle_timeout_secs`; issue 19,
    /// item 8): the request ends once its tunnel carried no packet for this
    /// long, by the gateway's count. Sent only to routers that asked
    /// ([`MaintenanceRequest::wants_idle_timeout`]) and only when the
    /// center has one. Absent: unknown (not told, or none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
}

/// One granted (extension terminal name, VPNNAT address) pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub terminal_name: TerminalName,
    pub vpnnat_addr: UnicastAddr,
}

/// 1..=16 grants with distinct names and distinct addresses: one address
/// per terminal, never one address for two terminals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Grants(Vec<Grant>);

impl Named for Grant {
    const WHAT: &'static str = "grant";
}

impl Grants {
    pub fn new(grants: Vec<Grant>) -> Result<Self, ValidationError> {
        let set = BoundedSet::<Grant, 1, { crate::types::MAX_TERMINAL_NAMES }>::new(grants)?;
        let mut names = std::collections::HashSet::new();
        let mut addrs = std::collections::HashSet::new();
        for g in set.iter() {
            if !names.insert(&g.terminal_name) {
                return Err(ValidationError::new("grants", "a terminal name appears twice"));
            }
            if !addrs.insert(g.vpnnat_addr) {
                return Err(ValidationError::new("grants", "a VPNNAT address appears twice"));
            }
        }
        Ok(Grants(set.into_vec()))
    }

    pub fn as_slice(&self) -> &[Grant] {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Grants {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Grants::new(Vec::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl Grants {
    pub fn seal(
        &self,
        rng: &dyn SecureRandom,
        terminal_id: &TerminalId,
        reply_key: &ReplyPublicKey,
        acceptance_number: AcceptanceNumber,
    ) -> Result<MaintenanceResponse, ProtoError> {
        let sealed = seal::seal_json(rng, reply_key, terminal_id, SealPurpose::MaintenanceResponse, self)?;
        Ok(MaintenanceResponse {
            acceptance_number,
            sealed,
            ends_at: None,
            idle_timeout_secs: None,
        })
    }
}

impl MaintenanceResponse {
    /// The answer telling the router when the request ends (`None`: not
    /// told).
    pub fn with_ends_at(mut self, ends_at: Option<u64>) -> Self {
        self.ends_at = ends_at;
        self
    }

    /// The answer telling the router the center's idle timeout (`None`:
    /// not told).
    pub fn with_idle_timeout(mut self, idle_timeout_secs: Option<u64>) -> Self {
        self.idle_timeout_secs = idle_timeout_secs;
        self
    }

    pub fn open(&self, reply: ReplyKeyPair, terminal_id: &TerminalId) -> Result<Grants, ProtoError> {
        Ok(reply.open_json(terminal_id, SealPurpose::MaintenanceResponse, &self.sealed)?)
    }
}

// ---------------------------------------------------------------------------
// 6-8. Center -> router, through the tunnel
// ---------------------------------------------------------------------------

/// 6. Maintenance end, center -> router, MAC with Secret(ID2). Answer: [`Ack`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EndCommand {
    pub acceptance_number: AcceptanceNumber,
}

impl Command for EndCommand {
    const PATH: &'static str = paths::router::END;
    const DIRECTION: Direction = Direction::CenterToRouter;
    const KEY: KeyKind = KeyKind::SecretId2;
    type Principal = TerminalId;
    type Response = Ack;
}

/// 7. VPNNAT release, center -> router. Answer: [`Ack`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReleaseCommand {
    pub terminal_name: TerminalName,
}

impl Command for ReleaseCommand {
    const PATH: &'static str = paths::router::RELEASE;
    const DIRECTION: Direction = Direction::CenterToRouter;
    const KEY: KeyKind = KeyKind::SecretId2;
    type Principal = TerminalId;
    type Response = Ack;
}

/// 8. VPN end, center -> router. Answer: [`Ack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VpnEndCommand {}

impl Command for VpnEndCommand {
    const PATH: &'static str = paths::router::VPN_END;
    const DIRECTION: Direction = Direction::CenterToRouter;
    const KEY: KeyKind = KeyKind::SecretId2;
    type Principal = TerminalId;
    type Response = Ack;
}

// ---------------------------------------------------------------------------
// centerd <-> gatewayd
// ---------------------------------------------------------------------------

/// At most this many VPNNAT addresses per add/remove command.
pub const MAX_ADDRESSES_PER_COMMAND: usize = 64;
/// At most this many addresses reported per tunnel.
pub const MAX_ADDRESSES_PER_TUNNEL: usize = 1024;
/// At most this many tunnels in one state report.
pub const MAX_TUNNELS: usize = 1024;

/// Sets up (or re-keys) the tunnel to a router: the gateway becomes IKE
/// initiator toward `router_ip` with the PSK. Answer: [`Ack`] once the
/// command is accepted; the gateway reports the tunnel coming up with a
/// [`TunnelEvent`].
///
/// The PSK travels encrypted under a key derived from this gateway's API
/// key, bound to the gateway name and the terminal ID: the center LAN
/// channel is authenticated but not confidential (plain HTTP), and a PSK
/// replayed into another tunnel's command does not decrypt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SetupTunnel {
    pub terminal_id: TerminalId,
    pub router_ip: UnicastAddr,
    /// The tunnel slot number in the center's gateway-tunnel table.
    pub slot: u16,
    pub psk: EncryptedField,
    /// `router`: do not initiate; accept the router's IKE SA, identified
    /// by its IKE identity and this PSK (`router_ip` is then only where the
    /// center last saw it). Absent: the seed's `gateway`.
    #[serde(default, skip_serializing_if = "InitiationMode::is_gateway")]
    pub initiation: InitiationMode,
}

impl Command for SetupTunnel {
    const PATH: &'static str = paths::gateway::SETUP_TUNNEL;
    const DIRECTION: Direction = Direction::CenterToGateway;
    const KEY: KeyKind = KeyKind::GatewayApiKey;
    type Principal = GatewayName;
    type Response = Ack;
}

impl SetupTunnel {
    /// Center side: builds the command, encrypting the PSK for `gateway`.
    pub fn new(
        rng: &dyn SecureRandom,
        gateway_key: &FieldKey,
        terminal_id: TerminalId,
        router_ip: UnicastAddr,
        slot: u16,
        psk: &Psk,
    ) -> Result<Self, ProtoError> {
        let psk = gateway_key.encrypt(rng, FieldPurpose::TunnelPsk, terminal_id.as_str(), psk.expose_secret())?;
        Ok(SetupTunnel {
            terminal_id,
            router_ip,
            slot,
            psk,
            initiation: InitiationMode::Gateway,
        })
    }

    /// Gateway side: decrypts the PSK with the key for its own name.
    pub fn open_psk(&self, gateway_key: &FieldKey) -> Result<Psk, ProtoError> {
        let plain = gateway_key.decrypt(FieldPurpose::TunnelPsk, self.terminal_id.as_str(), &self.psk)?;
        Psk::from_slice(&plain).map_err(|_| ProtoError::malformed("PSK length"))
    }
}

/// The addresses of one tunnel in a [`StateReport`].
pub type TunnelAddresses = BoundedSet<UnicastAddr, 0, MAX_ADDRESSES_PER_TUNNEL>;

/// 1..=64 distinct VPNNAT addresses.
pub type AddressSet = BoundedSet<UnicastAddr, 1, MAX_ADDRESSES_PER_COMMAND>;

/// Route these VPNNAT addresses into the router's tunnel. Answer: [`Ack`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AddAddresses {
    pub terminal_id: TerminalId,
    pub addresses: AddressSet,
}

impl Command for AddAddresses {
    const PATH: &'static str = paths::gateway::ADD_ADDRESSES;
    const DIRECTION: Direction = Direction::CenterToGateway;
    const KEY: KeyKind = KeyKind::GatewayApiKey;
    type Principal = GatewayName;
    type Response = Ack;
}

/// Stop routing these VPNNAT addresses into the tunnel. Answer: [`Ack`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RemoveAddresses {
    pub terminal_id: TerminalId,
    pub addresses: AddressSet,
}

impl Command for RemoveAddresses {
    const PATH: &'static str = paths::gateway::REMOVE_ADDRESSES;
    const DIRECTION: Direction = Direction::CenterToGateway;
    const KEY: KeyKind = KeyKind::GatewayApiKey;
    type Principal = GatewayName;
    type Response = Ack;
}

/// Remove every route of the tunnel and delete it. Answer: [`Ack`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TearDown {
    pub terminal_id: TerminalId,
}

impl Command for TearDown {
    const PATH: &'static str = paths::gateway::TEAR_DOWN;
    const DIRECTION: Direction = Direction::CenterToGateway;
    const KEY: KeyKind = KeyKind::GatewayApiKey;
    type Principal = GatewayName;
    type Response = Ack;
}

/// The router lost its end of the tunnel (it restarted): drop the IKE SA
/// and CHILD SAs with it without a DELETE exchange (the router would not
/// recognise it) and negotiate a fresh IKE SA at once, announcing
/// INITIAL_CONTACT. Nothing to do if the tunnel is not negotiated (no
/// address granted). Answer: [`Ack`]; the tunnel coming up is reported
/// with a [`TunnelEvent`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RestartTunnel {
    pub terminal_id: TerminalId,
}

impl Command for RestartTunnel {
    const PATH: &'static str = paths::gateway::RESTART_TUNNEL;
    const DIRECTION: Direction = Direction::CenterToGateway;
    const KEY: KeyKind = KeyKind::GatewayApiKey;
    type Principal = GatewayName;
    type Response = Ack;
}

/// Ask for the gateway's whole state (used to reconcile after a restart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReportState {}

impl Command for ReportState {
    const PATH: &'static str = paths::gateway::STATE;
    const DIRECTION: Direction = Direction::CenterToGateway;
    const KEY: KeyKind = KeyKind::GatewayApiKey;
    const MAX_RESPONSE_BODY: usize = 4 * 1024 * 1024;
    type Principal = GatewayName;
    type Response = StateReport;
}

/// A tunnel's state as the gateway sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum TunnelStatus {
    /// IKE and CHILD SAs established.
    Up,
    /// Being negotiated (or re-negotiated after a failure).
    Connecting,
    /// Not established.
    Down,
}

/// One tunnel of a [`StateReport`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TunnelState {
    pub terminal_id: TerminalId,
    pub slot: u16,
    pub router_ip: UnicastAddr,
    pub status: TunnelStatus,
    pub addresses: TunnelAddresses,
    /// When the tunnel last carried a packet (issue 19, item 8: the idle
    /// timeout), in Unix seconds: the latest use the gateway's kernel
    /// stamped on the tunnel's XFRM policies; 0: none since they were
    /// installed. Absent: unknown (a gateway from before, or the kernel's
    /// policies could not be read); the center then ends nothing as idle.
    /// Like `seq`, centers are upgraded before their gateways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_use: Option<u64>,
}

/// Answer to [`ReportState`]: at most [`MAX_TUNNELS`] tunnels, one per
/// terminal ID and one per slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "StateReportWire")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StateReport {
    tunnels: Vec<TunnelState>,
    /// The gateway's last event order number when the report was taken:
    /// the report already reflects every event up to it.
    #[serde(default)]
    seq: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateReportWire {
    tunnels: Vec<TunnelState>,
    #[serde(default)]
    seq: u64,
}

impl TryFrom<StateReportWire> for StateReport {
    type Error = ValidationError;
    fn try_from(w: StateReportWire) -> Result<Self, Self::Error> {
        Ok(StateReport::new(w.tunnels)?.with_seq(w.seq))
    }
}

impl StateReport {
    pub fn new(tunnels: Vec<TunnelState>) -> Result<Self, ValidationError> {
        const WHAT: &str = "state report";
        if tunnels.len() > MAX_TUNNELS {
            return Err(ValidationError::new(WHAT, "too many tunnels"));
        }
        let mut ids = std::collections::HashSet::new();
        let mut slots = std::collections::HashSet::new();
        for t in &tunnels {
            if !ids.insert(&t.terminal_id) {
                return Err(ValidationError::new(WHAT, "a terminal ID appears twice"));
            }
            if !slots.insert(t.slot) {
                return Err(ValidationError::new(WHAT, "a slot appears twice"));
            }
        }
        Ok(StateReport { tunnels, seq: 0 })
    }

    /// The report with the gateway's event order number at its taking.
    pub fn with_seq(mut self, seq: u64) -> Self {
        self.seq = seq;
        self
    }

    pub fn tunnels(&self) -> &[TunnelState] {
        &self.tunnels
    }

    /// Every event numbered up to this is reflected in the report.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

/// Tunnel up/down event, gatewayd -> centerd, MAC with the gateway API key
/// (principal: the gateway name). Replaces the seed's polling. Answer: [`Ack`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TunnelEvent {
    pub terminal_id: TerminalId,
    pub slot: u16,
    pub status: TunnelStatus,
    /// Why it changed (may be empty).
    pub detail: FailureDetail,
    /// The gateway's event order (see [`StateReport::seq`]): events arrive
    /// one after another but late under load, and one older than a state
    /// report the center already applied is stale. 0: unordered.
    #[serde(default)]
    pub seq: u64,
}

impl Command for TunnelEvent {
    const PATH: &'static str = paths::center::GATEWAY_EVENT;
    const DIRECTION: Direction = Direction::GatewayToCenter;
    const KEY: KeyKind = KeyKind::GatewayApiKey;
    type Principal = GatewayName;
    type Response = Ack;
}

#[cfg(test)]
mod tests;
