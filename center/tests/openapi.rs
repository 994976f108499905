//! The checked-in OpenAPI documents and the servers' route tables agree in
//! both directions (every route documented, every documented operation
//! served, same method and operationId), every `$ref` resolves, and the
//! documented message schemas have exactly the fields the protocol types
//! serialize.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

use serde_json::Value;
use vpnnat_center::http::Route;

const CENTERD: &str = include_str!("../openapi/centerd.json");
const GATEWAYD: &str = include_str!("../openapi/gatewayd.json");
const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

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

fn fields(doc: &Value, schema: &str) -> BTreeSet<String> {
    doc["components"]["schemas"][schema]["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("schema {schema} has no properties"))
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

#[test]
fn centerd_routes_match_the_document() {
    let doc: Value = serde_json::from_str(CENTERD).unwrap();
    assert_eq!(doc["openapi"].as_str().map(|v| v.starts_with("3.")), Some(true));
    assert_eq!(operations(&doc), routes(vpnnat_center::api::ROUTES));
    check_refs(&doc, &doc);
    // Every command route's operationId labels its metrics.
    for r in vpnnat_center::api::ROUTES.iter().filter(|r| r.method == "POST") {
        assert!(vpnnat_center::api::COMMANDS.contains(&r.name), "{}", r.name);
    }
}

#[test]
fn gatewayd_routes_match_the_document() {
    let doc: Value = serde_json::from_str(GATEWAYD).unwrap();
    assert_eq!(operations(&doc), routes(vpnnat_gatewayd::ROUTES));
    check_refs(&doc, &doc);
    for r in vpnnat_gatewayd::ROUTES.iter().filter(|r| r.method == "POST") {
        assert!(vpnnat_gatewayd::COMMANDS.contains(&r.name), "{}", r.name);
    }
}

#[test]
fn documented_schemas_have_the_protocol_fields() {
    use vpnnat_proto::messages::{
        AddAddresses, FailureNotice, ReportState, StateReport, TearDown, TunnelEvent, TunnelStatus,
    };
    use vpnnat_proto::types::{FailureCode, FailureDetail, TerminalId, UnicastAddr};
    let center: Value = serde_json::from_str(CENTERD).unwrap();
    let gw: Value = serde_json::from_str(GATEWAYD).unwrap();
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
    assert_eq!(keys(&ReportState {}), fields(&gw, "ReportState"));
    assert_eq!(keys(&StateReport::new(vec![]).unwrap()), fields(&gw, "StateReport"));
    // Enum values as the protocol spells them.
    let codes: Vec<String> = center["components"]["schemas"]["FailureNotice"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    for code in &codes {
        let parsed: FailureCode = serde_json::from_value(Value::String(code.clone())).unwrap();
        assert_eq!(serde_json::to_value(parsed).unwrap(), Value::String(code.clone()));
    }
}

#[test]
fn router_commands_document_matches_what_centerd_sends() {
    use vpnnat_proto::messages::{EndCommand, ReleaseCommand, VpnEndCommand};
    use vpnnat_proto::types::{AcceptanceNumber, TerminalName};
    use vpnnat_proto::Command as _;
    let doc: Value = serde_json::from_str(include_str!("../openapi/router-commands.json")).unwrap();
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
    let end = EndCommand {
        acceptance_number: AcceptanceNumber::new(7).unwrap(),
    };
    assert_eq!(keys(&end), fields(&doc, "EndCommand"));
    let rel = ReleaseCommand {
        terminal_name: TerminalName::new("pc1").unwrap(),
    };
    assert_eq!(keys(&rel), fields(&doc, "ReleaseCommand"));
    assert_eq!(keys(&VpnEndCommand {}), fields(&doc, "VpnEndCommand"));
}
