//! The OpenAPI documents centerd and gatewayd serve at `/openapi.json`
//! (generated from the route tables and the protocol types, see
//! `vpnnat_proto::openapi`), and routerd's command document that centerd
//! generates: each is a valid OpenAPI 3.1 document (checked against the
//! official JSON Schema of OpenAPI 3.1, which `scripts/test.sh` fetches with
//! `scripts/fetch-openapi-schema.py`: see [`official_schema`]), every
//! route of the route table is documented (and nothing else), each command
//! with its real request and response types and its MAC key's security
//! scheme, every `$ref` resolves, and the documented fields are the ones
//! the protocol types serialize.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;

use serde_json::Value;
use utoipa::ToSchema;
use vpnnat_center::http::Route;
use vpnnat_proto::messages::{
    AddAddresses, EndCommand, FailureNotice, GatewayAddressRequest, InstallRequest, MaintenanceRequest, ReleaseCommand,
    RemoveAddresses, ReportState, RequestStatesQuery, RestartTunnel, SetupTunnel, SiteEndRequest, StateReport,
    TearDown, TunnelEvent, TunnelLostNotice, TunnelStatus, VpnEndCommand,
};
use vpnnat_proto::openapi::scheme_name;
use vpnnat_proto::Command;

/// Where `scripts/test.sh` puts the OpenAPI Initiative's JSON Schema of
/// OpenAPI 3.1 (`VPNNAT_OPENAPI_SCHEMA` overrides it).
const SCHEMA_PATH: &str = "/var/cache/vpnnat-test/openapi-3.1-schema.json";

/// The official OpenAPI 3.1 schema. Not a skip when it is missing: a run
/// without it would check nothing, so it fails and says how to get it.
fn official_schema() -> Value {
    let path = std::env::var("VPNNAT_OPENAPI_SCHEMA").unwrap_or_else(|_| SCHEMA_PATH.to_owned());
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "the OpenAPI 3.1 JSON Schema is not at {path} ({e}): run `scripts/fetch-openapi-schema.py {path}` \
             (scripts/test.sh does) or set VPNNAT_OPENAPI_SCHEMA"
        )
    });
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"));
    assert_eq!(
        v["$id"], "https://spec.openapis.org/oas/3.1/schema/2022-10-07",
        "{path} is not the OpenAPI 3.1 schema"
    );
    v
}
const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// `GET path` from `addr`: status, content type and body.
async fn get(addr: &str, path: &str) -> (u16, String, String) {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", addr)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, ct, String::from_utf8(body.to_vec()).unwrap())
}

/// The document `addr` serves.
async fn served(addr: &str) -> Value {
    let (status, ct, body) = get(addr, "/openapi.json").await;
    assert_eq!((status, ct.as_str()), (200, "application/json"), "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Fails with every violation of the official OpenAPI 3.1 schema.
fn assert_valid_openapi(doc: &Value) {
    assert_eq!(
        doc["openapi"].as_str().map(|v| v.starts_with("3.1.")),
        Some(true),
        "{}",
        doc["openapi"]
    );
    let schema = official_schema();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "not a valid OpenAPI 3.1 document:\n{}",
        errors.join("\n")
    );
}

/// The schema validator itself refuses what is not OpenAPI (so a pass
/// above means something).
#[test]
fn the_official_schema_refuses_a_broken_document() {
    let schema = official_schema();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let broken = serde_json::json!({
        "openapi": "3.1.0",
        "info": { "title": "x", "version": "1" },
        "paths": { "/a": { "post": { "responses": { "200": { "content": {} } } } } }
    });
    assert!(!validator.is_valid(&broken), "a response without a description passed");
    let no_info = serde_json::json!({ "openapi": "3.1.0", "paths": {} });
    assert!(!validator.is_valid(&no_info));
}

fn operations(doc: &Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            assert!(METHODS.contains(&method.as_str()), "{path}: {method} is not a method");
            let id = op["operationId"].as_str().expect("operationId").to_owned();
            out.insert((method.to_uppercase(), path.clone(), id));
        }
    }
    out
}

fn routes(table: &[Route]) -> BTreeSet<(String, String, String)> {
    table
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned(), r.name.to_owned()))
        .collect()
}

fn check_refs(doc: &Value, v: &Value) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref") {
                let name = r
                    .as_str()
                    .and_then(|s| s.strip_prefix("#/components/schemas/"))
                    .expect("local schema ref");
                assert!(doc["components"]["schemas"].get(name).is_some(), "dangling $ref {name}");
            }
            m.values().for_each(|x| check_refs(doc, x));
        }
        Value::Array(a) => a.iter().for_each(|x| check_refs(doc, x)),
        _ => {}
    }
}

fn schema_ref(name: &str) -> Value {
    serde_json::json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// `C`'s operation in `doc`: `POST C::PATH` named `operation_id`, `C` in,
/// `C::Response` out, under `C::KEY`'s security scheme (an `apiKey` in
/// the MAC header), and no authentication headers repeated as parameters.
fn assert_command<C>(doc: &Value, operation_id: &str)
where
    C: Command + ToSchema,
    C::Response: ToSchema,
{
    let op = &doc["paths"][C::PATH]["post"];
    assert!(op.is_object(), "POST {} is not documented", C::PATH);
    assert_eq!(op["operationId"], operation_id);
    assert_eq!(
        op["requestBody"]["content"]["application/json"]["schema"],
        schema_ref(&C::name()),
        "{}",
        C::PATH
    );
    assert_eq!(op["requestBody"]["required"], true);
    assert_eq!(
        op["responses"]["200"]["content"]["application/json"]["schema"],
        schema_ref(&C::Response::name()),
        "{}",
        C::PATH
    );
    let scheme = scheme_name(C::KEY);
    assert_eq!(op["security"], serde_json::json!([{ scheme: [] }]), "{}", C::PATH);
    let s = &doc["components"]["securitySchemes"][scheme];
    assert_eq!((s["type"].as_str(), s["in"].as_str()), (Some("apiKey"), Some("header")));
    assert_eq!(s["name"], vpnnat_proto::auth::HEADER_MAC);
    assert!(
        op.get("parameters").is_none(),
        "{}: headers repeated per operation",
        C::PATH
    );
}

/// Properties of the component schema `name`.
fn fields(doc: &Value, name: &str) -> BTreeSet<String> {
    doc["components"]["schemas"][name]["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("schema {name} has no properties"))
        .keys()
        .cloned()
        .collect()
}

fn keys(v: &impl serde::Serialize) -> BTreeSet<String> {
    serde_json::to_value(v)
        .unwrap()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

#[tokio::test]
async fn centerd_serves_a_valid_document_of_every_route() {
    let stack = common::Stack::start().await;
    let doc = served(&stack.center_addr).await;
    assert_valid_openapi(&doc);
    assert_eq!(operations(&doc), routes(vpnnat_center::api::ROUTES));
    check_refs(&doc, &doc);
    assert_command::<InstallRequest>(&doc, "install");
    assert_command::<FailureNotice>(&doc, "failure");
    assert_command::<GatewayAddressRequest>(&doc, "gateway_address");
    assert_command::<MaintenanceRequest>(&doc, "maintenance");
    assert_command::<TunnelLostNotice>(&doc, "tunnel_lost");
    assert_command::<SiteEndRequest>(&doc, "site_end");
    assert_command::<RequestStatesQuery>(&doc, "request_states");
    assert_command::<TunnelEvent>(&doc, "gateway_event");
    // Every command route labels its metrics; every route but the GETs is
    // a command checked above.
    for r in vpnnat_center::api::ROUTES {
        if r.method == "POST" {
            assert!(vpnnat_center::api::COMMANDS.contains(&r.name), "{}", r.name);
        } else {
            assert!(
                doc["paths"][r.path]["get"]["responses"]["200"].is_object(),
                "{}",
                r.path
            );
        }
    }
    assert_eq!(
        serde_json::from_str::<Value>(&vpnnat_center::api::openapi().to_json().unwrap()).unwrap(),
        doc
    );
}

#[tokio::test]
async fn gatewayd_serves_a_valid_document_of_every_route() {
    let stack = common::Stack::start().await;
    let doc = served(&stack.gw_addr).await;
    assert_valid_openapi(&doc);
    assert_eq!(operations(&doc), routes(vpnnat_gatewayd::ROUTES));
    check_refs(&doc, &doc);
    assert_command::<SetupTunnel>(&doc, "setup");
    assert_command::<AddAddresses>(&doc, "add_addresses");
    assert_command::<RemoveAddresses>(&doc, "remove_addresses");
    assert_command::<TearDown>(&doc, "teardown");
    assert_command::<RestartTunnel>(&doc, "restart_tunnel");
    assert_command::<ReportState>(&doc, "state");
    for r in vpnnat_gatewayd::ROUTES {
        if r.method == "POST" {
            assert!(vpnnat_gatewayd::COMMANDS.contains(&r.name), "{}", r.name);
        } else {
            assert!(
                doc["paths"][r.path]["get"]["responses"]["200"].is_object(),
                "{}",
                r.path
            );
        }
    }
}

#[test]
fn router_commands_document_is_valid_and_matches_what_centerd_sends() {
    let doc: Value = serde_json::from_str(&vpnnat_center::api::router_commands_openapi().to_json().unwrap()).unwrap();
    assert_valid_openapi(&doc);
    check_refs(&doc, &doc);
    let want: BTreeSet<(String, String, String)> = [
        (EndCommand::PATH, "end"),
        (ReleaseCommand::PATH, "release"),
        (VpnEndCommand::PATH, "vpn_end"),
    ]
    .iter()
    .map(|(p, n)| ("POST".to_owned(), (*p).to_owned(), (*n).to_owned()))
    .collect();
    assert_eq!(operations(&doc), want);
    assert_command::<EndCommand>(&doc, "end");
    assert_command::<ReleaseCommand>(&doc, "release");
    assert_command::<VpnEndCommand>(&doc, "vpn_end");
}

#[test]
fn documented_schemas_have_the_protocol_fields() {
    use vpnnat_proto::types::{AcceptanceNumber, FailureCode, FailureDetail, TerminalId, TerminalName, UnicastAddr};
    let center: Value = serde_json::from_str(&vpnnat_center::api::openapi().to_json().unwrap()).unwrap();
    let gw: Value = serde_json::from_str(&vpnnat_gatewayd::openapi().to_json().unwrap()).unwrap();
    let router: Value =
        serde_json::from_str(&vpnnat_center::api::router_commands_openapi().to_json().unwrap()).unwrap();
    let tid = TerminalId::new("router-1").unwrap();
    let failure = FailureNotice {
        code: FailureCode::Wan,
        detail: FailureDetail::new("x").unwrap(),
    };
    assert_eq!(keys(&failure), fields(&center, "FailureNotice"));
    let ev = TunnelEvent {
        terminal_id: tid.clone(),
        slot: 1,
        status: TunnelStatus::Up,
        detail: FailureDetail::new("").unwrap(),
        seq: 0,
    };
    assert_eq!(keys(&ev), fields(&center, "TunnelEvent"));
    let add = AddAddresses {
        terminal_id: tid.clone(),
        addresses: vpnnat_proto::types::BoundedSet::new(vec![UnicastAddr::new("10.0.0.1".parse().unwrap()).unwrap()])
            .unwrap(),
    };
    assert_eq!(keys(&add), fields(&gw, "AddAddresses"));
    assert_eq!(keys(&TearDown { terminal_id: tid }), fields(&gw, "TearDown"));
    assert_eq!(keys(&StateReport::new(vec![]).unwrap()), fields(&gw, "StateReport"));
    let end = EndCommand {
        acceptance_number: AcceptanceNumber::new(7).unwrap(),
    };
    assert_eq!(keys(&end), fields(&router, "EndCommand"));
    let rel = ReleaseCommand {
        terminal_name: TerminalName::new("pc1").unwrap(),
    };
    assert_eq!(keys(&rel), fields(&router, "ReleaseCommand"));
    // The acceptance answer's optional fields (issue 19, item 8: the end
    // time and the idle limit) and the request's flags that ask for them.
    for f in ["acceptance_number", "sealed", "ends_at", "idle_timeout_secs"] {
        assert!(fields(&center, "MaintenanceResponse").contains(f), "{f}");
    }
    for f in ["wants_ends_at", "wants_idle_timeout"] {
        assert!(fields(&center, "MaintenanceRequest").contains(f), "{f}");
    }
    // Enum values as the protocol spells them.
    let codes = center["components"]["schemas"]["FailureCode"]["enum"]
        .as_array()
        .unwrap();
    assert!(!codes.is_empty());
    for code in codes {
        let parsed: FailureCode = serde_json::from_value(code.clone()).unwrap();
        assert_eq!(&serde_json::to_value(parsed).unwrap(), code);
    }
}
