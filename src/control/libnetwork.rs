//! The libnetwork face (seed 001): the 2015 libnetwork networking API, on a listener
//! of its own (`api.libnetwork_listen`, loopback only: like its original it has no
//! authentication).
//!
//! Paths, bodies and status codes are the seed's; where it is silent, upstream
//! libnetwork's (`api/api.go` of mid-2015): errors are plain text, `Resource not
//! found: Network|Endpoint` for 404, `Invalid body: …` for 400; a duplicate name and
//! deleting what is in use are 403; lists filtered to nothing are `null`; two
//! filters at once are 400 `Unsupported query`. Where the seed and upstream differ,
//! the seed wins: creates answer 200 (upstream 201). A container (`container_id`)
//! names its network namespace as Docker's connect does here: a name under
//! `/run/netns`, a pid, or a namespace path; join answers that path (the sandbox
//! key). `/services…` belongs to the services issue and answers 404 saying so.

use super::router::{Ctx, ErrorStyle, Response, Router};
use crate::model::network::{ConnectRequest, Endpoint, NetworkRequest, NetworkView};
use crate::model::{Error, Kind, Model};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What the face reads and changes: the model.
pub struct Libnetwork {
    pub model: Arc<Model>,
}

pub fn router() -> Router<Libnetwork> {
    let mut r = Router::new(ErrorStyle::Text, super::router::open_gate());
    r.add("GET", "/networks", list_networks)
        .add("POST", "/networks", create_network)
        .add("GET", "/networks/{nid}", get_network)
        .add("DELETE", "/networks/{nid}", delete_network)
        .add("GET", "/networks/{nid}/endpoints", list_endpoints)
        .add("POST", "/networks/{nid}/endpoints", create_endpoint)
        .add("GET", "/networks/{nid}/endpoints/{eid}", get_endpoint)
        .add("DELETE", "/networks/{nid}/endpoints/{eid}", delete_endpoint)
        .add("POST", "/networks/{nid}/endpoints/{eid}/containers", join)
        .add("DELETE", "/networks/{nid}/endpoints/{eid}/containers/{cid}", leave);
    for m in ["GET", "POST", "DELETE"] {
        r.add(m, "/services", services).add(m, "/services/{rest*}", services);
    }
    r
}

fn text(status: u16, msg: impl Into<String>) -> Response {
    let mut m = msg.into();
    m.push('\n');
    Response::text(status, m)
}

/// The model's errors as libnetwork answers them: the one place it maps them.
fn failed(e: Error, what: &str) -> Response {
    match &e {
        Error::NoNetwork(_) => return text(404, "Resource not found: Network"),
        Error::NoEndpoint(_) => return text(404, "Resource not found: Endpoint"),
        Error::NetworkExists(_)
        | Error::EndpointExists(_)
        | Error::ActiveEndpoints { .. }
        | Error::EndpointInUse { .. } => return text(403, e.to_string()),
        _ => {}
    }
    let status = match e.kind() {
        Kind::Invalid | Kind::Conflict => 400,
        Kind::NotFound => 404,
        Kind::Forbidden => 403,
        Kind::Unavailable | Kind::Behind => 500,
    };
    text(status, format!("{what}: {e}"))
}

fn services(_: &Libnetwork, _: &Ctx) -> Response {
    text(
        404,
        "services are not served yet: they come with tunloom's service load balancing",
    )
}

/// One of the two filters, or none; both at once is upstream's 400.
fn filter(c: &Ctx) -> Result<Option<(&'static str, String)>, Response> {
    let name = c.req.query("name");
    let partial = c.req.query("partial-id");
    match (name, partial) {
        (Some(_), Some(_)) => Err(text(400, "Unsupported query")),
        (Some(n), None) => Ok(Some(("name", n.to_string()))),
        (None, Some(p)) => Ok(Some(("partial-id", p.to_string()))),
        (None, None) => Ok(None),
    }
}

fn keep(f: &Option<(&'static str, String)>, name: &str, id: &str) -> bool {
    match f {
        None => true,
        Some(("name", n)) => name == n,
        Some((_, p)) => id.starts_with(p.as_str()),
    }
}

/// A list, or `null` when a filter matched nothing (a nil Go slice).
fn listed(f: &Option<(&'static str, String)>, items: Vec<Value>) -> Response {
    if items.is_empty() && f.is_some() {
        return Response::json(200, &Value::Null);
    }
    Response::json(200, &items)
}

fn endpoint_resource(e: &Endpoint, network: &str) -> Value {
    json!({"name": e.name, "id": e.id, "network": network})
}

fn network_resource(v: &NetworkView) -> Value {
    let n = &v.network;
    json!({
        "name": n.name,
        "id": n.id,
        "type": n.driver,
        "endpoints": v.endpoints.iter().map(|e| endpoint_resource(e, &n.name)).collect::<Vec<_>>(),
    })
}

fn list_networks(s: &Libnetwork, c: &Ctx) -> Response {
    let f = match filter(c) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let items = s
        .model
        .networks()
        .iter()
        .filter(|v| keep(&f, &v.network.name, &v.network.id))
        .map(network_resource)
        .collect();
    listed(&f, items)
}

fn body(c: &Ctx) -> Result<Value, Response> {
    serde_json::from_slice(&c.req.body).map_err(|e| text(400, format!("Invalid body: {e}")))
}

fn create_network(s: &Libnetwork, c: &Ctx) -> Response {
    let req = match body(c).and_then(|b| parse_network(&b).map_err(|e| text(400, format!("Invalid body: {e}")))) {
        Ok(r) => r,
        Err(r) => return r,
    };
    match s.model.create_network(req) {
        Ok((n, _)) => Response::json(200, &n.id),
        Err(e) => failed(e, "creating the network"),
    }
}

fn get_network(s: &Libnetwork, c: &Ctx) -> Response {
    match s.model.network(c.param("nid")) {
        Ok(v) => Response::json(200, &network_resource(&v)),
        Err(e) => failed(e, "reading the network"),
    }
}

fn delete_network(s: &Libnetwork, c: &Ctx) -> Response {
    match s.model.remove_network(c.param("nid")) {
        Ok(_) => Response::text(200, ""),
        Err(e) => failed(e, "deleting the network"),
    }
}

/// The network's endpoints, or its 404.
fn network_of(s: &Libnetwork, c: &Ctx) -> Result<NetworkView, Response> {
    s.model
        .network(c.param("nid"))
        .map_err(|e| failed(e, "reading the network"))
}

fn list_endpoints(s: &Libnetwork, c: &Ctx) -> Response {
    let (f, v) = match filter(c).and_then(|f| Ok((f, network_of(s, c)?))) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let items = v
        .endpoints
        .iter()
        .filter(|e| keep(&f, &e.name, &e.id))
        .map(|e| endpoint_resource(e, &v.network.name))
        .collect();
    listed(&f, items)
}

fn create_endpoint(s: &Libnetwork, c: &Ctx) -> Response {
    let parsed = body(c).and_then(|b| parse_endpoint(&b).map_err(|e| text(400, format!("Invalid body: {e}"))));
    let (name, ports) = match parsed {
        Ok(x) => x,
        Err(r) => return r,
    };
    let req = ConnectRequest {
        network: c.param("nid").to_string(),
        exposed_ports: ports,
        ..ConnectRequest::default()
    };
    match s.model.create_endpoint(req, &name) {
        Ok(e) => Response::json(200, &e.id),
        Err(e) => failed(e, "creating the endpoint"),
    }
}

/// The endpoint named by the path, on the network named by the path.
fn endpoint_of(s: &Libnetwork, c: &Ctx) -> Result<(NetworkView, Endpoint), Response> {
    let v = network_of(s, c)?;
    let eid = c.param("eid");
    let e = v
        .endpoints
        .iter()
        .find(|e| e.id == eid || e.name == eid)
        .cloned()
        .ok_or_else(|| text(404, "Resource not found: Endpoint"))?;
    Ok((v, e))
}

fn get_endpoint(s: &Libnetwork, c: &Ctx) -> Response {
    match endpoint_of(s, c) {
        Ok((v, e)) => Response::json(200, &endpoint_resource(&e, &v.network.name)),
        Err(r) => r,
    }
}

fn delete_endpoint(s: &Libnetwork, c: &Ctx) -> Response {
    let e = match endpoint_of(s, c) {
        Ok((_, e)) => e,
        Err(r) => return r,
    };
    match s.model.remove_endpoint(&e.id, false) {
        Ok(_) => Response::text(200, ""),
        Err(e) => failed(e, "deleting the endpoint"),
    }
}

fn join(s: &Libnetwork, c: &Ctx) -> Response {
    let (e, container) = match endpoint_of(s, c).and_then(|(_, e)| {
        let b = body(c)?;
        let container = parse_join(&b).map_err(|m| text(400, format!("Invalid body: {m}")))?;
        Ok((e, container))
    }) {
        Ok(x) => x,
        Err(r) => return r,
    };
    match s.model.join(&e.id, &container, None) {
        Ok(j) => {
            let key = j.joined.map(|j| j.netns.display().to_string()).unwrap_or_default();
            Response::json(200, &key)
        }
        Err(e) => failed(e, "joining the container"),
    }
}

fn leave(s: &Libnetwork, c: &Ctx) -> Response {
    let e = match endpoint_of(s, c) {
        Ok((_, e)) => e,
        Err(r) => return r,
    };
    match s.model.leave(&e.id, c.param("cid")) {
        Ok(_) => Response::text(200, ""),
        Err(e) => failed(e, "detaching the container"),
    }
}

/// `networkCreate{name, network_type, options}`. Options are the network's options
/// (Docker's overlay VNI option among them); tunloom also reads `subnet`,
/// `gateway`, `ip_range` and `internal` from them (there is no IPAM object in this
/// API).
pub fn parse_network(v: &Value) -> Result<NetworkRequest, String> {
    let o = v.as_object().ok_or("the body must be a JSON object")?;
    let name = match o.get("name") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(format!("name must be a string, not {other}")),
        None => return Err("name is required".into()),
    };
    let driver = match o.get("network_type") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(format!("network_type must be a string, not {other}")),
    };
    let mut options = BTreeMap::new();
    match o.get("options") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Bool(_) | Value::Number(_) => v.to_string(),
                    other => return Err(format!("options.{k} must be a string, number or bool, not {other}")),
                };
                options.insert(k.clone(), v);
            }
        }
        Some(other) => return Err(format!("options must be an object, not {other}")),
    }
    let net = |k: &str| -> Result<Option<ipnet::Ipv4Net>, String> {
        options
            .get(k)
            .map(|s| {
                s.parse::<ipnet::Ipv4Net>()
                    .map_err(|_| format!("options.{k} {s:?} is not an IPv4 CIDR"))
                    .and_then(|n| {
                        if n == n.trunc() {
                            Ok(n)
                        } else {
                            Err(format!("options.{k} {s} has bits set after the prefix"))
                        }
                    })
            })
            .transpose()
    };
    let subnet = net("subnet")?;
    let ip_range = net("ip_range")?;
    let gateway = options
        .get("gateway")
        .map(|g| {
            g.parse()
                .map_err(|_| format!("options.gateway {g:?} is not an IPv4 address"))
        })
        .transpose()?;
    let internal = match options.get("internal").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(format!("options.internal {other:?} must be true or false")),
    };
    if subnet.is_none() && (gateway.is_some() || ip_range.is_some()) {
        return Err("options.gateway and options.ip_range need options.subnet".into());
    }
    for k in ["subnet", "gateway", "ip_range", "internal"] {
        options.remove(k);
    }
    Ok(NetworkRequest {
        name,
        driver,
        subnet,
        gateway,
        ip_range,
        internal,
        options,
        check_duplicate: true,
        ..NetworkRequest::default()
    })
}

/// `endpointCreate{name, exposed_ports[{proto, port}], port_mapping}`.
pub fn parse_endpoint(v: &Value) -> Result<(String, Vec<(u8, u16)>), String> {
    let o = v.as_object().ok_or("the body must be a JSON object")?;
    let name = match o.get("name") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(other) => return Err(format!("name must be a non-empty string, not {other}")),
        None => return Err("name is required".into()),
    };
    let mut ports = Vec::new();
    match o.get("exposed_ports") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) => {
            for (i, p) in a.iter().enumerate() {
                let proto = p.get("proto").and_then(Value::as_u64).filter(|n| *n <= 255);
                let port = p.get("port").and_then(Value::as_u64).filter(|n| *n <= 65_535);
                match (proto, port) {
                    (Some(proto), Some(port)) => ports.push((proto as u8, port as u16)),
                    _ => {
                        return Err(format!(
                            "exposed_ports[{i}] must be {{\"proto\": 0-255, \"port\": 0-65535}}"
                        ))
                    }
                }
            }
        }
        Some(other) => return Err(format!("exposed_ports must be a list, not {other}")),
    }
    match o.get("port_mapping") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(_) => return Err("port_mapping is not supported: publish ports with the services API".into()),
    }
    Ok((name, ports))
}

/// `endpointJoin{container_id, …}`: the container; the other fields (host name,
/// resolv.conf path, DNS, extra hosts) are a container runtime's and are ignored.
pub fn parse_join(v: &Value) -> Result<String, String> {
    let o = v.as_object().ok_or("the body must be a JSON object")?;
    match o.get("container_id") {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(other) => Err(format!("container_id must be a non-empty string, not {other}")),
        None => Err("container_id is required".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_parse_or_say_what_is_wrong() {
        let n = parse_network(&json!({"name": "foo", "network_type": "", "options": {}})).unwrap();
        assert_eq!((n.name.as_str(), n.subnet), ("foo", None));
        let n = parse_network(
            &json!({"name": "foo", "options": {"subnet": "10.48.9.0/24", "internal": "true",
            "com.docker.network.driver.overlay.vxlanid_list": "5001"}}),
        )
        .unwrap();
        assert_eq!(n.subnet, Some("10.48.9.0/24".parse().unwrap()));
        assert!(n.internal);
        assert_eq!(n.options.len(), 1);
        for bad in [
            json!(1),
            json!({}),
            json!({"name": 1}),
            json!({"name": "a", "options": {"subnet": "x"}}),
        ] {
            assert!(parse_network(&bad).is_err(), "{bad}");
        }
        let (name, ports) = parse_endpoint(
            &json!({"name": "baz", "exposed_ports": [{"proto": 6, "port": 8080}], "port_mapping": null}),
        )
        .unwrap();
        assert_eq!((name.as_str(), ports), ("baz", vec![(6, 8080)]));
        for bad in [
            json!({"name": ""}),
            json!({"name": "a", "exposed_ports": [{"proto": 6}]}),
            json!({"name": "a", "exposed_ports": [{"proto": 6, "port": 70000}]}),
        ] {
            assert!(parse_endpoint(&bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_join(&json!({"container_id": "c1", "host_name": null})).unwrap(),
            "c1"
        );
        assert!(parse_join(&json!({"container_id": null})).is_err());
    }
}
