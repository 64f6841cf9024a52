//! The Container Station face (seed 002): Docker's network API as QNAP's Container
//! Station serves it, at `/container-station/api/v1/networks…` and, without the
//! prefix, at `/api/v1/networks…`, on the management listener.
//!
//! Bodies are Docker's: networks as `NetworkResource` JSON, create with the seed's
//! lower-case keys and Docker's `IPAM` object. Errors are the seed's
//! `{"error": {"code", "message"}}` with the HTTP status equal to `code`, and the
//! message in the docker-py shape the seed shows (`404 Client Error: Not Found
//! ("network x not found")`): client errors are all code 400, carrying Docker's own
//! status in the text; failures of the node are 500 (503 when stored but not yet
//! applied). Successful creates answer 200, as Container Station does (Docker's engine
//! answers 201).
//!
//! Parsing lives in [`parse_create`] and [`parse_connect`] (fuzzed); handlers only map
//! to and from the model.

use super::router::{Ctx, ErrorStyle, Response, Router};
use crate::model::network::{ConnectRequest, NetworkRequest, NetworkView};
use crate::model::{Error, Kind, Model};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

/// The two prefixes the face answers under.
pub const PREFIXES: [&str; 2] = ["/container-station/api/v1", "/api/v1"];

/// The face's own state when it runs alone (fuzzing, tests): the model. On the
/// management listener it runs over the management face's state, which holds the
/// same model.
pub struct ContainerStation {
    pub model: Arc<Model>,
}

impl AsRef<Model> for ContainerStation {
    fn as_ref(&self) -> &Model {
        &self.model
    }
}

/// The face alone, with the open gate of a loopback listener.
pub fn router() -> Router<ContainerStation> {
    let mut r = Router::new(ErrorStyle::Json, super::router::open_gate());
    mount(&mut r);
    r
}

/// Adds the face's routes under both prefixes.
pub fn mount<S: AsRef<Model> + 'static>(r: &mut Router<S>) {
    macro_rules! both {
        ($method:literal, $path:literal, $h:ident) => {{
            r.add($method, concat!("/container-station/api/v1", $path), $h::<S>);
            r.add($method, concat!("/api/v1", $path), $h::<S>);
        }};
    }
    both!("GET", "/networks", list);
    both!("POST", "/networks", create);
    both!("DELETE", "/networks", prune);
    both!("GET", "/networks/{id}", inspect);
    both!("GET", "/networks/{id}/inspect", inspect);
    both!("DELETE", "/networks/{id}", remove);
    both!("POST", "/networks/{id}/connect", connect);
    both!("POST", "/networks/{id}/disconnect", disconnect);
}

/// The seed's error body, status equal to its code.
fn error(code: u16, message: String) -> Response {
    Response::json(code, &json!({"error": {"code": code, "message": message}}))
}

/// A request the face refuses before the model sees it.
fn bad_request(why: impl std::fmt::Display) -> Response {
    error(400, format!("400 Client Error: Bad Request (\"{why}\")"))
}

/// The model's errors as this face answers them: the one place it maps them.
fn failed(e: Error) -> Response {
    let (docker, reason) = match e.kind() {
        Kind::Invalid => (400, "Bad Request"),
        Kind::NotFound => (404, "Not Found"),
        Kind::Conflict => (409, "Conflict"),
        Kind::Forbidden => (403, "Forbidden"),
        Kind::Unavailable => return error(500, format!("500 Server Error: Internal Server Error (\"{e}\")")),
        Kind::Behind => return error(503, format!("503 Server Error: Service Unavailable (\"{e}\")")),
    };
    error(400, format!("{docker} Client Error: {reason} (\"{e}\")"))
}

/// RFC 3339 with nanoseconds, UTC, as Docker writes `Created`.
pub fn rfc3339_nanos(ns: u64) -> String {
    if ns == 0 {
        // Go's zero time: what Docker shows for a network with no creation time.
        return "0001-01-01T00:00:00Z".into();
    }
    let whole = crate::auth::rfc3339(ns / 1_000_000_000);
    // "2021-08-11T08:55:07" and Docker's nanoseconds before the zone.
    format!("{}.{:09}Z", whole.trim_end_matches('Z'), ns % 1_000_000_000)
}

/// A network as Docker's `NetworkResource`.
pub fn resource(v: &NetworkView) -> Value {
    let n = &v.network;
    let mut config = Map::new();
    config.insert("Subnet".into(), json!(n.subnet.to_string()));
    config.insert("Gateway".into(), json!(n.gateway.to_string()));
    if let Some(r) = n.ip_range {
        config.insert("IPRange".into(), json!(r.to_string()));
    }
    let containers: Map<String, Value> = v
        .endpoints
        .iter()
        .filter_map(|e| Some((e, e.container()?)))
        .map(|(e, c)| {
            (
                c.to_string(),
                json!({
                    "Name": c,
                    "EndpointID": e.id,
                    "MacAddress": e.mac_string(),
                    "IPv4Address": format!("{}/{}", e.address, n.subnet.prefix_len()),
                    "IPv6Address": "",
                }),
            )
        })
        .collect();
    json!({
        "Name": n.name,
        "Id": n.id,
        "Created": rfc3339_nanos(n.created_ns),
        // Every network here spans the hosts that create it, as overlays do.
        "Scope": "global",
        "Driver": n.driver,
        "EnableIPv6": false,
        "IPAM": {"Driver": "default", "Options": null, "Config": [Value::Object(config)]},
        "Internal": n.internal,
        "Attachable": !v.default,
        "Ingress": false,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": false,
        "Containers": containers,
        "Options": n.options,
        "Labels": n.labels,
    })
}

fn list<S: AsRef<Model>>(s: &S, _: &Ctx) -> Response {
    let nets: Vec<Value> = s.as_ref().networks().iter().map(resource).collect();
    Response::json(200, &nets)
}

fn inspect<S: AsRef<Model>>(s: &S, c: &Ctx) -> Response {
    match s.as_ref().network(c.param("id")) {
        Ok(v) => Response::json(200, &resource(&v)),
        Err(e) => failed(e),
    }
}

fn body(c: &Ctx) -> Result<Value, Response> {
    if c.req.body.iter().all(u8::is_ascii_whitespace) {
        return Err(bad_request("the request needs a JSON body"));
    }
    serde_json::from_slice(&c.req.body).map_err(|e| bad_request(format!("malformed JSON: {e}")))
}

fn create<S: AsRef<Model>>(s: &S, c: &Ctx) -> Response {
    let req = match body(c).and_then(|b| parse_create(&b).map_err(bad_request)) {
        Ok(r) => r,
        Err(r) => return r,
    };
    match s.as_ref().create_network(req) {
        Ok((n, _)) => Response::json(200, &json!({"Id": n.id, "Warning": ""})),
        Err(e) => failed(e),
    }
}

fn remove<S: AsRef<Model>>(s: &S, c: &Ctx) -> Response {
    match s.as_ref().remove_network(c.param("id")) {
        Ok(_) => Response::json(200, &json!({})),
        Err(e) => failed(e),
    }
}

fn prune<S: AsRef<Model>>(s: &S, _: &Ctx) -> Response {
    match s.as_ref().prune_networks() {
        Ok(names) if names.is_empty() => Response::json(200, &json!({"NetworksDeleted": null})),
        Ok(names) => Response::json(200, &json!({"NetworksDeleted": names})),
        Err(e) => failed(e),
    }
}

fn connect<S: AsRef<Model>>(s: &S, c: &Ctx) -> Response {
    let mut req = match body(c).and_then(|b| parse_connect(&b).map_err(bad_request)) {
        Ok(r) => r,
        Err(r) => return r,
    };
    req.network = c.param("id").to_string();
    match s.as_ref().attach(req) {
        Ok(_) => Response::json(200, &json!({})),
        Err(e) => failed(e),
    }
}

fn disconnect<S: AsRef<Model>>(s: &S, c: &Ctx) -> Response {
    let req = match body(c).and_then(|b| parse_connect(&b).map_err(bad_request)) {
        Ok(r) => r,
        Err(r) => return r,
    };
    match s.as_ref().detach(c.param("id"), &req.container) {
        Ok(_) => Response::json(200, &json!({})),
        Err(e) => failed(e),
    }
}

/// A key in either spelling: the seed's lower case or Docker's own.
fn field<'a>(o: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().find_map(|k| o.get(*k)).filter(|v| !v.is_null())
}

fn string(o: &Map<String, Value>, keys: &[&str]) -> Result<Option<String>, String> {
    match field(o, keys) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("{} must be a string, not {other}", keys[0])),
    }
}

/// A flag as JSON `true`/`false` or, as the seed documents `internal`, a string.
fn flag(o: &Map<String, Value>, keys: &[&str]) -> Result<bool, String> {
    match field(o, keys) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") || s == "1" => Ok(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") || s == "0" || s.is_empty() => Ok(false),
        Some(other) => Err(format!("{} must be true or false, not {other}", keys[0])),
    }
}

fn string_map(o: &Map<String, Value>, keys: &[&str]) -> Result<BTreeMap<String, String>, String> {
    match field(o, keys) {
        None => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                other => Err(format!("{}.{k} must be a string, not {other}", keys[0])),
            })
            .collect(),
        Some(other) => Err(format!("{} must be an object of strings, not {other}", keys[0])),
    }
}

fn ipv4_net(what: &str, s: &str) -> Result<ipnet::Ipv4Net, String> {
    let n: ipnet::Ipv4Net = s
        .parse()
        .map_err(|_| format!("{what} {s:?} is not an IPv4 CIDR such as 10.48.3.0/24"))?;
    if n != n.trunc() {
        return Err(format!(
            "{what} {s} has bits set after the prefix (did you mean {}?)",
            n.trunc()
        ));
    }
    Ok(n)
}

/// A create body: the seed's keys (`name`, `check_duplicate`, `driver`, `internal`,
/// `ipam`, `enableIPv6`, `options`, `labels`), Docker's capitalised ones accepted too.
pub fn parse_create(v: &Value) -> Result<NetworkRequest, String> {
    let o = v.as_object().ok_or("the body must be a JSON object")?;
    let name = string(o, &["name", "Name"])?.ok_or("name is required")?;
    if flag(o, &["enableIPv6", "EnableIPv6"])? {
        return Err("enableIPv6: IPv6 networks are not supported".into());
    }
    let mut req = NetworkRequest {
        name,
        driver: string(o, &["driver", "Driver"])?.unwrap_or_default(),
        internal: flag(o, &["internal", "Internal"])?,
        check_duplicate: flag(o, &["check_duplicate", "CheckDuplicate"])?,
        labels: string_map(o, &["labels", "Labels"])?,
        options: string_map(o, &["options", "Options"])?,
        ..NetworkRequest::default()
    };
    if let Some(ipam) = field(o, &["ipam", "IPAM"]) {
        let ipam = ipam.as_object().ok_or("ipam must be an object")?;
        if let Some(d) = string(ipam, &["Driver", "driver"])? {
            if !d.is_empty() && d != "default" {
                return Err(format!("ipam.Driver {d:?}: only the default IPAM driver is served"));
            }
        }
        let configs = match field(ipam, &["Config", "config"]) {
            None => Vec::new(),
            Some(Value::Array(a)) => a.clone(),
            Some(other) => return Err(format!("ipam.Config must be a list, not {other}")),
        };
        if configs.len() > 1 {
            return Err("ipam.Config: one IPv4 subnet per network".into());
        }
        if let Some(c) = configs.first() {
            let c = c.as_object().ok_or("ipam.Config[0] must be an object")?;
            if let Some(s) = string(c, &["Subnet", "subnet"])? {
                req.subnet = Some(ipv4_net("Subnet", &s)?);
            }
            if let Some(g) = string(c, &["Gateway", "gateway"])? {
                req.gateway = Some(
                    g.parse::<Ipv4Addr>()
                        .map_err(|_| format!("Gateway {g:?} is not an IPv4 address"))?,
                );
            }
            if let Some(r) = string(c, &["IPRange", "ip_range", "iprange"])? {
                req.ip_range = Some(ipv4_net("IPRange", &r)?);
            }
            if req.subnet.is_none() && (req.gateway.is_some() || req.ip_range.is_some()) {
                return Err("ipam.Config: Gateway and IPRange need a Subnet".into());
            }
        }
    }
    Ok(req)
}

/// A connect or disconnect body: `container` (the seed), Docker's `Container` and
/// `EndpointConfig.IPAMConfig.IPv4Address`, and tunloom's extension `netns`, an
/// absolute path to the container's network namespace.
pub fn parse_connect(v: &Value) -> Result<ConnectRequest, String> {
    let o = v.as_object().ok_or("the body must be a JSON object")?;
    let container = string(o, &["container", "Container"])?.ok_or("container is required")?;
    let mut req = ConnectRequest {
        container,
        netns: string(o, &["netns", "Netns"])?.map(Into::into),
        ..ConnectRequest::default()
    };
    if let Some(ec) = field(o, &["EndpointConfig", "endpoint_config"]) {
        let ec = ec.as_object().ok_or("EndpointConfig must be an object")?;
        if let Some(ipam) = field(ec, &["IPAMConfig"]) {
            let ipam = ipam.as_object().ok_or("EndpointConfig.IPAMConfig must be an object")?;
            if let Some(a) = string(ipam, &["IPv4Address"])? {
                if !a.is_empty() {
                    req.address = Some(
                        a.parse()
                            .map_err(|_| format!("IPv4Address {a:?} is not an IPv4 address"))?,
                    );
                }
            }
        }
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_times_are_docker_rfc3339() {
        assert_eq!(rfc3339_nanos(0), "0001-01-01T00:00:00Z");
        assert_eq!(
            rfc3339_nanos(1_628_672_107_048_985_983),
            "2021-08-11T08:55:07.048985983Z"
        );
        assert_eq!(rfc3339_nanos(951_782_400_000_000_001), "2000-02-29T00:00:00.000000001Z");
    }

    #[test]
    fn create_bodies_parse_or_say_what_is_wrong() {
        let r = parse_create(&json!({"name": "app", "check_duplicate": true, "internal": "true",
            "ipam": {"Config": [{"Subnet": "10.48.3.0/24", "Gateway": "10.48.3.254", "IPRange": "10.48.3.0/25"}]},
            "labels": {"a": "b"}}))
        .unwrap();
        assert_eq!(r.name, "app");
        assert!(r.check_duplicate && r.internal);
        assert_eq!(r.subnet, Some("10.48.3.0/24".parse().unwrap()));
        assert_eq!(r.gateway, Some("10.48.3.254".parse().unwrap()));
        assert_eq!(r.ip_range, Some("10.48.3.0/25".parse().unwrap()));
        for (body, says) in [
            (json!([]), "JSON object"),
            (json!({}), "name is required"),
            (json!({"name": 3}), "must be a string"),
            (json!({"name": "a", "internal": "maybe"}), "true or false"),
            (
                json!({"name": "a", "ipam": {"Config": [{"Subnet": "10.48.3.1/24"}]}}),
                "did you mean 10.48.3.0/24",
            ),
            (
                json!({"name": "a", "ipam": {"Config": [{"Subnet": "nope"}]}}),
                "not an IPv4 CIDR",
            ),
            (
                json!({"name": "a", "ipam": {"Config": [{"Gateway": "10.0.0.1"}]}}),
                "need a Subnet",
            ),
            (json!({"name": "a", "enableIPv6": true}), "not supported"),
            (json!({"name": "a", "labels": {"x": 1}}), "labels.x must be a string"),
        ] {
            let e = parse_create(&body).unwrap_err();
            assert!(e.contains(says), "{body}: {e}");
        }
    }

    #[test]
    fn connect_bodies_take_the_seed_and_docker_spellings() {
        let r = parse_connect(&json!({"container": "c1"})).unwrap();
        assert_eq!(r.container, "c1");
        let r = parse_connect(&json!({"Container": "c2", "netns": "/proc/1/ns/net",
            "EndpointConfig": {"IPAMConfig": {"IPv4Address": "10.48.0.9"}}}))
        .unwrap();
        assert_eq!(r.address, Some("10.48.0.9".parse().unwrap()));
        assert_eq!(r.netns.as_deref(), Some(std::path::Path::new("/proc/1/ns/net")));
        assert!(parse_connect(&json!({"forct": false})).is_err());
        assert!(
            parse_connect(&json!({"container": "c", "EndpointConfig": {"IPAMConfig": {"IPv4Address": "x"}}})).is_err()
        );
    }
}
