//! OpenAPI schemas of the protocol's types (feature `openapi`): the
//! derived ones sit on the types themselves; the types with their own
//! serde form (validated strings, base64 keys, addresses, bounded lists)
//! get theirs here. [`DocumentBuilder`] turns commands ([`Command`]) into
//! operations, with the command's MAC key as the operation's security
//! scheme, so the documents centerd and gatewayd serve come from the same
//! types their handlers decode.

use std::borrow::Cow;

use utoipa::openapi::path::{HttpMethod, OperationBuilder};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type,
};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApiBuilder, Paths, Ref, RefOr, Required, ResponseBuilder,
    Schema,
};
use utoipa::{PartialSchema, ToSchema};

use crate::auth::{HEADER_MAC, HEADER_NONCE, HEADER_PRINCIPAL, HEADER_TIMESTAMP};
use crate::initiation::WanAddress;
use crate::reinstall::ReinstallProof;
use crate::seal::ReplyPublicKey;
use crate::types::{
    AcceptanceNumber, BoundedSet, ClaimantName, FailureDetail, GatewayName, IkeIdentity, Ipv4Cidr, Phone,
    RequestContent, TerminalId, TerminalName, UnicastAddr,
};
use crate::{Command, KeyKind};

pub use utoipa::openapi::OpenApi;

fn string(format: Option<KnownFormat>, description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(format.map(SchemaFormat::KnownFormat))
        .description(Some(description))
        .into()
}

macro_rules! leaf_schema {
    ($($ty:ty, $name:literal => $schema:expr;)*) => {$(
        impl PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                $schema
            }
        }
        impl ToSchema for $ty {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
        }
    )*};
}

leaf_schema! {
    TerminalId, "TerminalId" => string(None, "router terminal ID (1-64 letters, digits, '.', '_', '-')");
    GatewayName, "GatewayName" => string(None, "VPN gateway name (1-64 letters, digits, '.', '_', '-')");
    TerminalName, "TerminalName" => string(None, "extension terminal name: a LAN host as the router resolves it, or the router itself: `server-part` (its server part) or `router-part` (its router part), granted their installation addresses and never released at the end");
    ClaimantName, "ClaimantName" => string(None, "the person asking for maintenance");
    Phone, "Phone" => string(None, "the claimant's phone number");
    RequestContent, "RequestContent" => string(None, "what the claimant wants done (free text, may span lines)");
    FailureDetail, "FailureDetail" => string(None, "free-text detail (may be empty; no control characters)");
    IkeIdentity, "IkeIdentity" => string(None, "the gateway's IKE identity");
    ReplyPublicKey, "ReplyPublicKey" => string(
        Some(KnownFormat::Byte),
        "the router's fresh X25519 public key for this request's answer, 32 bytes, base64",
    );
    ReinstallProof, "ReinstallProof" => string(
        Some(KnownFormat::Byte),
        "proof that a reinstalling router holds its current Secret(ID2), 32 bytes, base64",
    );
    UnicastAddr, "UnicastAddr" => string(Some(KnownFormat::Ipv4), "a unicast IPv4 address");
    Ipv4Cidr, "Ipv4Cidr" => string(None, "an IPv4 network, a.b.c.d/len");
    AcceptanceNumber, "AcceptanceNumber" => ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(1))
        .description(Some("the acceptance number of a maintenance request (never zero)"))
        .into();
    WanAddress, "WanAddress" => OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .property("ipv4", string(Some(KnownFormat::Ipv4), "the IPv4 address on the router's WAN"))
                .required("ipv4")
                .additional_properties(Some(AdditionalProperties::FreeForm(false))),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["no_ipv4"]))
                .description(Some("the WAN has no IPv4 address of its own")),
        )
        .into();
}

impl<T: ToSchema, const MIN: usize, const MAX: usize> PartialSchema for BoundedSet<T, MIN, MAX> {
    fn schema() -> RefOr<Schema> {
        ArrayBuilder::new()
            .items(Ref::from_schema_name(T::name()))
            .min_items(Some(MIN))
            .max_items(Some(MAX))
            .unique_items(true)
            .into()
    }
}

impl<T: ToSchema, const MIN: usize, const MAX: usize> ToSchema for BoundedSet<T, MIN, MAX> {
    fn name() -> Cow<'static, str> {
        Cow::Owned(format!("{}Set{MIN}to{MAX}", T::name()))
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((T::name().into_owned(), T::schema()));
        T::schemas(schemas);
    }
}

/// The security scheme of each MAC key, as named in the documents'
/// `components.securitySchemes`.
pub fn scheme_name(key: KeyKind) -> &'static str {
    match key {
        KeyKind::SecretId => "secret_id",
        KeyKind::SecretId2 => "secret_id2",
        KeyKind::GatewayApiKey => "gateway_api_key",
    }
}

fn scheme(key: KeyKind) -> SecurityScheme {
    let which = match key {
        KeyKind::SecretId => "the router's Secret(ID) (the installation notice only)",
        KeyKind::SecretId2 => "the router's Secret(ID2)",
        KeyKind::GatewayApiKey => "the gateway's API key",
    };
    let description = format!(
        "HMAC-SHA256 with {which} over method, path, principal, timestamp, nonce and body \
             (PROTOCOL.md), 64 lower-case hex digits, with the headers {HEADER_PRINCIPAL} (terminal ID or \
             gateway name), {HEADER_TIMESTAMP} (Unix seconds, within the replay window) and \
             {HEADER_NONCE} (32 hex digits, never reused). The answer carries the same four headers, \
             bound to the request's nonce."
    );
    SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(HEADER_MAC, &description)))
}

fn text_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "text/plain",
            ContentBuilder::new().schema(Some(String::schema())).build(),
        )
        .build()
}

/// Builds one OpenAPI document from commands and plain GET routes.
pub struct DocumentBuilder {
    title: String,
    description: String,
    paths: Paths,
    components: ComponentsBuilder,
}

impl std::fmt::Debug for DocumentBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocumentBuilder")
            .field("title", &self.title)
            .finish_non_exhaustive()
    }
}

impl DocumentBuilder {
    pub fn new(title: &str, description: &str) -> Self {
        DocumentBuilder {
            title: title.to_owned(),
            description: description.to_owned(),
            paths: Paths::new(),
            components: ComponentsBuilder::new(),
        }
    }

    /// `POST C::PATH` as `operation_id`: `C` in, `C::Response` out (signed),
    /// authenticated with `C::KEY`'s scheme.
    pub fn command<C>(mut self, operation_id: &str, summary: &str) -> Self
    where
        C: Command + ToSchema,
        C::Response: ToSchema,
    {
        let scheme_id = scheme_name(C::KEY);
        let op = OperationBuilder::new()
            .operation_id(Some(operation_id))
            .summary(Some(summary))
            .request_body(Some(
                RequestBodyBuilder::new()
                    .required(Some(Required::True))
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name(C::name())))
                            .build(),
                    )
                    .build(),
            ))
            .response(
                "200",
                ResponseBuilder::new()
                    .description("the answer, signed with the same scheme")
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name(C::Response::name())))
                            .build(),
                    )
                    .build(),
            )
            .response(
                "4XX",
                text_response("refused: malformed, unauthenticated, unknown or too large"),
            )
            .response("5XX", text_response("the server could not carry it out"))
            .security(SecurityRequirement::new::<_, [&str; 0], &str>(scheme_id, []))
            .build();
        self.paths.add_path_operation(C::PATH, vec![HttpMethod::Post], op);
        let mut schemas = Vec::new();
        schemas.push((C::name().into_owned(), C::schema()));
        C::schemas(&mut schemas);
        schemas.push((C::Response::name().into_owned(), C::Response::schema()));
        C::Response::schemas(&mut schemas);
        self.components = self
            .components
            .schemas_from_iter(schemas)
            .security_scheme(scheme_id, scheme(C::KEY));
        self
    }

    /// An unauthenticated `GET path` answering `content_type`.
    pub fn get(mut self, path: &str, operation_id: &str, summary: &str, content_type: &str) -> Self {
        let op = OperationBuilder::new()
            .operation_id(Some(operation_id))
            .summary(Some(summary))
            .response(
                "200",
                ResponseBuilder::new()
                    .description(summary)
                    .content(content_type, ContentBuilder::new().build())
                    .build(),
            )
            .build();
        self.paths.add_path_operation(path, vec![HttpMethod::Get], op);
        self
    }

    pub fn build(self) -> OpenApi {
        let info = InfoBuilder::new()
            .title(self.title)
            .version(env!("CARGO_PKG_VERSION"))
            .description(Some(self.description))
            .build();
        OpenApiBuilder::new()
            .info(info)
            .paths(self.paths)
            .components(Some(self.components.build()))
            .build()
    }
}
