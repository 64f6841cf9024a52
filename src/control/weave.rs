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

/// A parsed Weave API request: what to do, with every argument checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Status,
    Connect {
        peers: Vec<PeerAddr>,
        replace: bool,
    },
    Expose(IpNet),
    Lookup(String),
    Allocate {
        id: String,
        subnet: Option<Ipv4Net>,
        check_alive: bool,
    },
    Claim {
        id: String,
        cidr: Ipv4Net,
        check_alive: bool,
    },
    Release(String),
    RemovePeer(String),
    DefaultSubnet,
    Domain,
    PutName {
        id: String,
        ip: IpAddr,
        fqdn: String,
    },
    DeleteName {
        id: String,
        ip: IpAddr,
        fqdn: Option<String>,
    },
}

type Parse = fn(&Request, &Params, u16) -> Result<Call, Response>;

/// Every route of the face and how its request is parsed. `u16` is the default
/// control port, for peers given without one.
const ROUTES: &[(&str, &str, Parse)] = &[
    ("GET", "/status", |_, _, _| Ok(Call::Status)),
    ("POST", "/connect", parse_connect),
    ("POST", "/expose/{cidr*}", parse_expose),
    ("GET", "/ip/{id}", |_, p, _| Ok(Call::Lookup(p.get("id").to_string()))),
    ("POST", "/ip/{id}", |r, p, _| {
        Ok(Call::Allocate {
            id: p.get("id").to_string(),
            subnet: None,
            check_alive: check_alive(&form(r)?),
        })
    }),
    ("DELETE", "/ip/{id}", |_, p, _| {
        Ok(Call::Release(p.get("id").to_string()))
    }),
    ("POST", "/ip/{id}/{subnet*}", |r, p, _| {
        Ok(Call::Allocate {
            id: p.get("id").to_string(),
            check_alive: check_alive(&form(r)?),
            subnet: Some(subnet_of(p)?),
        })
    }),
    ("PUT", "/ip/{id}/{subnet*}", |r, p, _| {
        Ok(Call::Claim {
            id: p.get("id").to_string(),
            check_alive: check_alive(&form(r)?),
            cidr: cidr_of(p)?,
        })
    }),
    ("DELETE", "/peer/{name}", |_, p, _| {
        Ok(Call::RemovePeer(p.get("name").to_string()))
    }),
    ("GET", "/ipinfo/defaultsubnet", |_, _, _| Ok(Call::DefaultSubnet)),
    ("GET", "/domain", |_, _, _| Ok(Call::Domain)),
    ("PUT", "/name/{id}/{ip}", parse_put_name),
    ("DELETE", "/name/{id}/{ip}", parse_delete_name),
];

/// Every route: parse the request (peers default to the control port `port` gives),
/// then hand the call to `then`.
fn routes<S: 'static>(port: fn(&S) -> u16, then: fn(&S, Call) -> Response) -> Router<S> {
    let mut r = Router::new(ErrorStyle::Text);
    for &(method, pattern, parse) in ROUTES {
        r.add(method, pattern, move |s: &S, req: &Request, p: &Params| {
            match parse(req, p, port(s)) {
                Ok(call) => then(s, call),
                Err(resp) => resp,
            }
        });
    }
    r
}

/// The face: each route parses its request, then the model carries it out.
pub fn router() -> Router<Shared> {
    routes(|s| s.settings.config.control.port, execute)
}

/// The same routes, parsing only: what a request would do, as text (for fuzzing and
/// tests of the parsing alone).
#[cfg(any(fuzzing, test))]
pub fn parse_router() -> Router<()> {
    routes(|_| 6783, |_, call| text(200, format!("{call:?}")))
}

/// The face as it runs, except that `/connect` only says what it would do: it
/// resolves names and sends datagrams, which a fuzzer must not.
#[cfg(any(fuzzing, test))]
pub fn offline_router() -> Router<Shared> {
    routes(
        |s| s.settings.config.control.port,
        |s, call| match call {
            Call::Connect { .. } => text(200, format!("{call:?}")),
            call => execute(s, call),
        },
    )
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

/// A peer as a request names it: an address, or a host name still to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAddr {
    Addr(SocketAddr),
    Host(String, u16),
}

impl PeerAddr {
    /// The address; host names are resolved here, when the request is carried out.
    fn resolve(&self) -> Result<SocketAddr, String> {
        match self {
            PeerAddr::Addr(a) => Ok(*a),
            PeerAddr::Host(h, port) => (h.as_str(), *port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| format!("peer {h} does not resolve")),
        }
    }
}

fn parse_peer(v: &str, port: u16) -> Result<PeerAddr, String> {
    if let Ok(a) = v.parse::<SocketAddr>() {
        return Ok(PeerAddr::Addr(a));
    }
    if let Ok(ip) = v.parse::<IpAddr>() {
        return Ok(PeerAddr::Addr(SocketAddr::new(ip, port)));
    }
    // A host name: letters, digits, dots and hyphens only, optionally with a port.
    let (host, port) = match v.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| format!("invalid peer address {v:?}"))?),
        None => (v, port),
    };
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.bytes().any(|b| b.is_ascii_alphabetic())
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if !valid {
        return Err(format!("invalid peer address {v:?}"));
    }
    Ok(PeerAddr::Host(host.to_ascii_lowercase(), port))
}

fn parse_connect(req: &Request, _: &Params, port: u16) -> Result<Call, Response> {
    let fields = form(req)?;
    let mut peers = Vec::new();
    for (k, v) in &fields {
        if k == "peer" {
            peers.push(parse_peer(v, port).map_err(bad)?);
        }
    }
    let replace = match field(&fields, "replace") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(bad(format!("replace must be true or false, not {other:?}"))),
    };
    if peers.is_empty() && !replace {
        return Err(bad("form field peer is required"));
    }
    Ok(Call::Connect { peers, replace })
}

fn parse_expose(_: &Request, p: &Params, _: u16) -> Result<Call, Response> {
    p.get("cidr").parse().map(Call::Expose).map_err(|_| {
        bad(format!(
            "invalid CIDR {:?} (expected address/prefix-length)",
            p.get("cidr")
        ))
    })
}

/// An address with its subnet's prefix length, as a claim names it.
fn cidr_of(p: &Params) -> Result<Ipv4Net, Response> {
    p.get("subnet").parse::<Ipv4Net>().map_err(|_| {
        bad(format!(
            "invalid subnet {:?} (expected an IPv4 address/prefix-length)",
            p.get("subnet")
        ))
    })
}

/// A subnet to allocate in: no host bits.
fn subnet_of(p: &Params) -> Result<Ipv4Net, Response> {
    let net = cidr_of(p)?;
    // As Weave does: a subnet with host bits set is a mistake to report, not to guess at.
    if net != net.trunc() {
        return Err(bad(format!(
            "subnet {net} has bits set after the network prefix (did you mean {}?)",
            net.trunc()
        )));
    }
    Ok(net)
}

fn ip_of(p: &Params) -> Result<IpAddr, Response> {
    p.get("ip")
        .parse::<IpAddr>()
        .map_err(|_| bad(format!("invalid IP address {:?}", p.get("ip"))))
}

fn parse_put_name(req: &Request, p: &Params, _: u16) -> Result<Call, Response> {
    let fields = form(req)?;
    let ip = ip_of(p)?;
    let fqdn = field(&fields, "fqdn").ok_or_else(|| bad("form field fqdn is required"))?;
    Ok(Call::PutName {
        id: p.get("id").to_string(),
        ip,
        fqdn: fqdn.to_string(),
    })
}

fn parse_delete_name(req: &Request, p: &Params, _: u16) -> Result<Call, Response> {
    let fields = form(req)?;
    Ok(Call::DeleteName {
        id: p.get("id").to_string(),
        ip: ip_of(p)?,
        fqdn: field(&fields, "fqdn").map(str::to_string),
    })
}

fn execute(s: &Shared, call: Call) -> Response {
    match call {
        Call::Status => status(s),
        Call::Connect { peers, replace } => {
            let mut addrs = Vec::with_capacity(peers.len());
            for p in &peers {
                match p.resolve() {
                    Ok(a) => addrs.push(a),
                    Err(e) => return bad(e),
                }
            }
            connect(s, &addrs, replace)
        }
        Call::Expose(cidr) => match s.model.expose(cidr) {
            Ok(late) if late.is_empty() => text(200, ""),
            Ok(late) => text(
                200,
                format!("exposed; peers not yet forwarding to it: {}\n", late.join(" ")),
            ),
            Err(e) => failed(e),
        },
        Call::Lookup(id) => match s.model.lookup(&id) {
            list if list.is_empty() => text(404, format!("no address allocated to container {id}\n")),
            list => text(200, addresses(&list)),
        },
        Call::Allocate {
            id,
            subnet,
            check_alive,
        } => answer(s.model.allocate(&id, subnet, check_alive)),
        Call::Claim { id, cidr, check_alive } => match s.model.claim(&id, cidr, check_alive) {
            Ok(Allocation::Cancelled) => text(200, "cancelled"),
            Ok(_) => text(200, ""),
            Err(e) => failed(e),
        },
        Call::Release(id) => match s.model.release(&id) {
            Ok(_) => text(204, ""),
            Err(e) => failed(e),
        },
        Call::RemovePeer(name) => match s.model.remove_peer(&name) {
            Ok(n) => text(200, format!("{n} IPs taken over from {name}\n")),
            Err(e) => failed(e),
        },
        Call::DefaultSubnet => text(200, s.model.default_subnet().to_string()),
        Call::Domain => text(200, s.model.domain()),
        Call::PutName { id, ip, fqdn } => match s.model.put_record(&id, ip, &fqdn) {
            Ok(()) => text(200, ""),
            Err(e) => failed(e),
        },
        Call::DeleteName { id, ip, fqdn } => match s.model.delete_records(&id, ip, fqdn.as_deref()) {
            Ok(_) => text(200, ""),
            Err(e) => failed(e),
        },
    }
}

fn connect(s: &Shared, addrs: &[SocketAddr], replace: bool) -> Response {
    match s.model.connect(addrs, replace) {
        Ok(late) if late.is_empty() => text(200, ""),
        Ok(late) => {
            let l: Vec<String> = late.iter().map(ToString::to_string).collect();
            text(200, format!("not connected yet (will keep trying): {}\n", l.join(" ")))
        }
        Err(e) => failed(e),
    }
}

fn status(s: &Shared) -> Response {
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
        let back = if p.up {
            vec![json!({"address": s.settings.node_name, "state": "established", "info": info})]
        } else {
            vec![]
        };
        peers.push(json!({ "name": p.name, "nick_name": p.nickname, "connections": back }));
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

fn addresses(list: &[(std::net::Ipv4Addr, u8)]) -> String {
    list.iter()
        .map(|(a, l)| format!("{a}/{l}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn answer(r: Result<Allocation, ModelError>) -> Response {
    match r {
        Ok(Allocation::Address(a, len)) => text(200, format!("{a}/{len}")),
        Ok(Allocation::Cancelled) => text(200, "cancelled"),
        Err(e) => failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, body: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            query: vec![],
            headers: vec![],
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn requests_parse_into_calls() {
        let r = parse_router();
        let call = |m: &str, p: &str, b: &str| {
            let resp = r.dispatch(&(), &req(m, p, b));
            (resp.status, String::from_utf8_lossy(&resp.body).into_owned())
        };
        assert_eq!(
            call("PUT", "/ip/c1/10.32.0.5/12", "check-alive=true"),
            (
                200,
                format!(
                    "{:?}",
                    Call::Claim {
                        id: "c1".into(),
                        cidr: "10.32.0.5/12".parse().unwrap(),
                        check_alive: true
                    }
                )
            )
        );
        assert_eq!(call("POST", "/connect", "peer=10.0.0.1&replace=true").0, 200);
        assert_eq!(
            call("POST", "/expose/10.32.0.1%2F12", "").0,
            200,
            "an escaped slash works too"
        );
        assert_eq!(call("PUT", "/name/c1/10.32.0.2", "").0, 400);
        assert_eq!(call("GET", "/ip", "").0, 404);
    }

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
        let a = |s: &str| Ok(PeerAddr::Addr(s.parse().unwrap()));
        assert_eq!(parse_peer("10.0.1.5", 6783), a("10.0.1.5:6783"));
        assert_eq!(parse_peer("10.0.1.5:7000", 6783), a("10.0.1.5:7000"));
        assert_eq!(parse_peer("[fd00::1]:7000", 6783), a("[fd00::1]:7000"));
        assert_eq!(parse_peer("fd00::1", 6783), a("[fd00::1]:6783"));
        assert_eq!(
            parse_peer("Node-B.lan:7000", 6783),
            Ok(PeerAddr::Host("node-b.lan".into(), 7000))
        );
        assert_eq!(parse_peer("localhost", 6783).unwrap().resolve().unwrap().port(), 6783);
        assert!(parse_peer("not an address!", 6783).is_err());
        assert!(parse_peer("host:notaport", 6783).is_err());
        assert!(parse_peer("", 6783).is_err());
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
