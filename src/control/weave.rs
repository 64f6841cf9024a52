//! The Weave Net face (`../shared/seeds/000_*`): Weave's local HTTP API on
//! 127.0.0.1:6784, path for path, method for method, with its plain-text answers
//! (`10.32.0.2/12`), so weave-era scripts run unchanged. No authentication, so the
//! configuration only allows a loopback address.
//!
//! Every handler is a thin adapter over [`crate::model::Model`]: parse the path and
//! form, call the model, map its error kinds to status codes (400 wrong request, 404
//! unknown thing, 503 not possible now). Where the seed leaves a detail open the real
//! Weave Net decides: `check-alive=true` on a container that is gone answers 200
//! `cancelled` and allocates nothing; `GET /ip/{id}` lists the container's addresses
//! in the default subnet separated by spaces; `DELETE /peer/{name}` answers
//! `<n> IPs taken over from <name>`.

use super::router::{parse_query, ErrorStyle, Params, Request, Response, Router};
use crate::daemon::Shared;
use crate::model::{Allocation, ModelError};
use ipnet::{IpNet, Ipv4Net};
use serde_json::json;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

pub fn router() -> Router<Shared> {
    let mut r = Router::new(ErrorStyle::Text);
    r.add("GET", "/status", status)
        .add("POST", "/connect", connect)
        .add("POST", "/expose/{cidr*}", expose)
        .add("GET", "/ip/{id}", lookup)
        .add("POST", "/ip/{id}", allocate)
        .add("DELETE", "/ip/{id}", release)
        .add("POST", "/ip/{id}/{subnet*}", allocate_in)
        .add("PUT", "/ip/{id}/{subnet*}", claim)
        .add("DELETE", "/peer/{name}", remove_peer)
        .add("GET", "/ipinfo/defaultsubnet", default_subnet)
        .add("GET", "/domain", domain)
        .add("PUT", "/name/{id}/{ip}", put_name)
        .add("DELETE", "/name/{id}/{ip}", delete_name);
    r
}

fn text(status: u16, body: impl Into<String>) -> Response {
    Response::text(status, body)
}

fn bad(message: impl std::fmt::Display) -> Response {
    text(400, format!("{message}\n"))
}

fn failed(e: ModelError) -> Response {
    match e {
        ModelError::Bad(m) => bad(m),
        ModelError::NotFound(m) => text(404, format!("{m}\n")),
        ModelError::Unavailable(m) => text(503, format!("{m}\n")),
        // The one JSON answer here: the change is stored but a worker has not applied
        // it, which every face reports alike.
        ModelError::Behind(b) => Response::error(503, &b.to_string()),
    }
}

/// The request's form: query string plus an urlencoded body.
fn form(req: &Request) -> Result<Vec<(String, String)>, Response> {
    let mut fields = req.query.clone();
    if req.body.is_empty() {
        return Ok(fields);
    }
    let ctype = req
        .header("content-type")
        .unwrap_or("application/x-www-form-urlencoded");
    if !ctype.starts_with("application/x-www-form-urlencoded") {
        return Err(bad(format!(
            "expected a form (application/x-www-form-urlencoded), not {ctype}"
        )));
    }
    let body = std::str::from_utf8(&req.body).map_err(|_| bad("the form is not valid UTF-8"))?;
    if body.contains(['\n', '\r', '\0']) {
        return Err(bad("the form is malformed (raw line breaks or NUL bytes)"));
    }
    fields.extend(parse_query(body.trim()));
    Ok(fields)
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn check_alive(fields: &[(String, String)]) -> bool {
    field(fields, "check-alive") == Some("true")
}

fn status(s: &Shared, _: &Request, _: &Params) -> Response {
    let st = s.model.status();
    let signed = s.settings.secret.is_some();
    let info = if signed {
        "tunloom control, HMAC-SHA256 signed"
    } else {
        "tunloom control"
    };
    let conn = |p: &crate::peers::Peer| {
        json!({
            "address": p.control_addr.to_string(),
            "state": match (p.up, p.last_seen) {
                (true, _) => "established",
                (false, Some(_)) => "failed",
                (false, None) => "connecting",
            },
            "info": info,
        })
    };
    let connections: Vec<_> = st.peers.iter().map(conn).collect();
    let mut peers = vec![json!({
        "name": s.settings.node_name,
        "nick_name": s.settings.nickname,
        "connections": connections,
    })];
    for p in st.peers.iter().filter(|p| !p.name.is_empty()) {
        peers.push(json!({
            "name": p.name,
            "nick_name": p.nickname,
            "connections": if p.up { vec![json!({"address": s.settings.node_name, "state": "established", "info": info})] } else { vec![] },
        }));
    }
    let body = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "router": {
            "encryption": signed,
            "peers": peers,
            "connections": connections,
        },
        "ipam": {
            "status": if st.ready { "ready" } else { "waiting" },
            "subnet": st.default_subnet.to_string(),
            "range_num_ips": st.ipam.range_num_ips,
            "owned_num_ips": st.ipam.owned_num_ips,
        },
        "dns": {
            "domain": st.domain,
            "upstream": s.settings.config.dns.upstream,
        },
    });
    Response::json(if st.ready { 200 } else { 503 }, &body)
}

fn parse_peer(v: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(a) = v.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = v.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let with_port = if v.contains(':') {
        v.to_string()
    } else {
        format!("{v}:{port}")
    };
    with_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("invalid peer address {v:?}"))
}

fn connect(s: &Shared, req: &Request, _: &Params) -> Response {
    let fields = match form(req) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let port = s.settings.config.control.port;
    let mut addrs = Vec::new();
    for (k, v) in &fields {
        if k == "peer" {
            match parse_peer(v, port) {
                Ok(a) => addrs.push(a),
                Err(e) => return bad(e),
            }
        }
    }
    let replace = match field(&fields, "replace") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return bad(format!("replace must be true or false, not {other:?}")),
    };
    if addrs.is_empty() && !replace {
        return bad("form field peer is required");
    }
    match s.model.connect(&addrs, replace) {
        Ok(late) if late.is_empty() => text(200, ""),
        Ok(late) => {
            let l: Vec<String> = late.iter().map(ToString::to_string).collect();
            text(200, format!("not connected yet (will keep trying): {}\n", l.join(" ")))
        }
        Err(e) => failed(e),
    }
}

fn expose(s: &Shared, _: &Request, p: &Params) -> Response {
    let cidr: IpNet = match p.get("cidr").parse() {
        Ok(c) => c,
        Err(_) => {
            return bad(format!(
                "invalid CIDR {:?} (expected address/prefix-length)",
                p.get("cidr")
            ))
        }
    };
    match s.model.expose(cidr) {
        Ok(late) if late.is_empty() => text(200, ""),
        Ok(late) => text(
            200,
            format!("exposed; peers not yet forwarding to it: {}\n", late.join(" ")),
        ),
        Err(e) => failed(e),
    }
}

fn addresses(list: &[(std::net::Ipv4Addr, u8)]) -> String {
    list.iter()
        .map(|(a, l)| format!("{a}/{l}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn lookup(s: &Shared, _: &Request, p: &Params) -> Response {
    let id = p.get("id");
    match s.model.lookup(id) {
        list if list.is_empty() => text(404, format!("no address allocated to container {id}\n")),
        list => text(200, addresses(&list)),
    }
}

fn answer(r: Result<Allocation, ModelError>) -> Response {
    match r {
        Ok(Allocation::Address(a, len)) => text(200, format!("{a}/{len}")),
        Ok(Allocation::Cancelled) => text(200, "cancelled"),
        Err(e) => failed(e),
    }
}

fn allocate(s: &Shared, req: &Request, p: &Params) -> Response {
    let fields = match form(req) {
        Ok(f) => f,
        Err(r) => return r,
    };
    answer(s.model.allocate(p.get("id"), None, check_alive(&fields)))
}

fn subnet_of(p: &Params) -> Result<Ipv4Net, Response> {
    p.get("subnet").parse::<Ipv4Net>().map_err(|_| {
        bad(format!(
            "invalid subnet {:?} (expected an IPv4 address/prefix-length)",
            p.get("subnet")
        ))
    })
}

fn allocate_in(s: &Shared, req: &Request, p: &Params) -> Response {
    let fields = match form(req) {
        Ok(f) => f,
        Err(r) => return r,
    };
    match subnet_of(p) {
        Ok(subnet) => answer(s.model.allocate(p.get("id"), Some(subnet), check_alive(&fields))),
        Err(r) => r,
    }
}

fn claim(s: &Shared, req: &Request, p: &Params) -> Response {
    let fields = match form(req) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let cidr = match subnet_of(p) {
        Ok(c) => c,
        Err(r) => return r,
    };
    match s.model.claim(p.get("id"), cidr, check_alive(&fields)) {
        Ok(Allocation::Cancelled) => text(200, "cancelled"),
        Ok(_) => text(200, ""),
        Err(e) => failed(e),
    }
}

fn release(s: &Shared, _: &Request, p: &Params) -> Response {
    match s.model.release(p.get("id")) {
        Ok(_) => text(204, ""),
        Err(e) => failed(e),
    }
}

fn remove_peer(s: &Shared, _: &Request, p: &Params) -> Response {
    let name = p.get("name");
    match s.model.remove_peer(name) {
        Ok(n) => text(200, format!("{n} IPs taken over from {name}\n")),
        Err(e) => failed(e),
    }
}

fn default_subnet(s: &Shared, _: &Request, _: &Params) -> Response {
    text(200, s.model.default_subnet().to_string())
}

fn domain(s: &Shared, _: &Request, _: &Params) -> Response {
    text(200, s.model.domain())
}

fn put_name(s: &Shared, req: &Request, p: &Params) -> Response {
    let fields = match form(req) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let Ok(ip) = p.get("ip").parse::<IpAddr>() else {
        return bad(format!("invalid IP address {:?}", p.get("ip")));
    };
    let Some(fqdn) = field(&fields, "fqdn") else {
        return bad("form field fqdn is required");
    };
    match s.model.put_record(p.get("id"), ip, fqdn) {
        Ok(()) => text(200, ""),
        Err(e) => failed(e),
    }
}

fn delete_name(s: &Shared, req: &Request, p: &Params) -> Response {
    let fields = match form(req) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let Ok(ip) = p.get("ip").parse::<IpAddr>() else {
        return bad(format!("invalid IP address {:?}", p.get("ip")));
    };
    match s.model.delete_records(p.get("id"), ip, field(&fields, "fqdn")) {
        Ok(_) => text(200, ""),
        Err(e) => failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stuck_worker_is_a_json_503_and_other_errors_are_text() {
        let b = crate::snapshot::Behind {
            worker: 1,
            seen: 4,
            wanted: 5,
        };
        let r = failed(ModelError::Behind(b));
        assert_eq!((r.status, r.content_type), (503, "application/json"));
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"], "worker 1 is behind: it has applied generation 4, not 5");
        let r = failed(ModelError::Bad("no".into()));
        assert_eq!(
            (r.status, r.content_type, r.body.as_slice()),
            (400, "text/plain; charset=utf-8", &b"no\n"[..])
        );
        assert_eq!(failed(ModelError::NotFound("x".into())).status, 404);
        assert_eq!(failed(ModelError::Unavailable("x".into())).status, 503);
    }

    #[test]
    fn peers_parse_with_and_without_ports() {
        assert_eq!(parse_peer("10.0.1.5", 6783), Ok("10.0.1.5:6783".parse().unwrap()));
        assert_eq!(parse_peer("10.0.1.5:7000", 6783), Ok("10.0.1.5:7000".parse().unwrap()));
        assert_eq!(
            parse_peer("[fd00::1]:7000", 6783),
            Ok("[fd00::1]:7000".parse().unwrap())
        );
        assert_eq!(parse_peer("fd00::1", 6783), Ok("[fd00::1]:6783".parse().unwrap()));
        assert!(parse_peer("not an address!", 6783).is_err());
    }

    #[test]
    fn forms_come_from_query_and_body() {
        let req = Request {
            method: "POST".into(),
            path: "/connect".into(),
            query: vec![("replace".into(), "true".into())],
            headers: vec![],
            body: b"peer=10.0.0.1&peer=10.0.0.2".to_vec(),
        };
        let f = form(&req).unwrap();
        assert_eq!(field(&f, "replace"), Some("true"));
        assert_eq!(f.iter().filter(|(k, _)| k == "peer").count(), 2);
        let json = Request {
            headers: vec![("Content-Type".into(), "application/json".into())],
            ..req.clone()
        };
        assert_eq!(form(&json).unwrap_err().status, 400);
        let binary = Request {
            body: vec![0xff, 0xfe],
            ..req
        };
        assert_eq!(form(&binary).unwrap_err().status, 400);
    }
}
