//! The Weave Net face (`../shared/seeds/000_*`): Weave's local HTTP API on
//! 127.0.0.1:6784, path for path, method for method, with its plain-text answers
//! (`10.32.0.2/12`), so weave-era scripts run unchanged. No authentication, so the
//! configuration only allows a loopback address.
//!
//! Every handler is a thin adapter over [`crate::model::Model`]: parse the path and
//! form into a [`Call`], carry it out on the model, and map the model's error kinds
//! to status codes in one place (`failed`: 400 wrong request or conflict, as Weave
//! answers both, 404 unknown thing, 503 not possible now). The face's state,
//! [`Weave`], is the model and the few settings `/status` shows — nothing else.
//!
//! Where the seed leaves a detail open the real Weave Net decides: `check-alive=true` on a container that is gone answers 200
//! `cancelled` and allocates nothing; `GET /ip/{id}` lists the container's addresses
//! in the default subnet separated by spaces; `DELETE /peer/{name}` answers
//! `<n> IPs taken over from <name>`.

use super::router::{open_gate, parse_query, Ctx, ErrorStyle, Request, Response, Router};
use crate::model::{self, Allocation, Kind, Model};
use crate::peers::{Peer, PeerAddr};
use ipnet::{IpNet, Ipv4Net};
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// What the Weave face works with.
pub struct Weave {
    pub model: Arc<Model>,
    /// The control port, for peers given without one.
    pub control_port: u16,
    pub node_name: String,
    pub nickname: String,
    /// Control messages are signed with a cluster secret.
    pub signed: bool,
}

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

type Parse = fn(&Ctx, u16) -> Result<Call, Response>;

/// Every route of the face and how its request is parsed. `u16` is the default
/// control port, for peers given without one.
const ROUTES: &[(&str, &str, Parse)] = &[
    ("GET", "/status", |_, _| Ok(Call::Status)),
    ("POST", "/connect", parse_connect),
    ("POST", "/expose/{cidr*}", parse_expose),
    ("GET", "/ip/{id}", |c, _| Ok(Call::Lookup(c.param("id").to_string()))),
    ("POST", "/ip/{id}", |c, _| {
        Ok(Call::Allocate {
            id: c.param("id").to_string(),
            subnet: None,
            check_alive: check_alive(&form(c.req)?),
        })
    }),
    ("DELETE", "/ip/{id}", |c, _| {
        Ok(Call::Release(c.param("id").to_string()))
    }),
    ("POST", "/ip/{id}/{subnet*}", |c, _| {
        Ok(Call::Allocate {
            id: c.param("id").to_string(),
            check_alive: check_alive(&form(c.req)?),
            subnet: Some(subnet_of(c)?),
        })
    }),
    ("PUT", "/ip/{id}/{subnet*}", |c, _| {
        Ok(Call::Claim {
            id: c.param("id").to_string(),
            check_alive: check_alive(&form(c.req)?),
            cidr: cidr_of(c)?,
        })
    }),
    ("DELETE", "/peer/{name}", |c, _| {
        Ok(Call::RemovePeer(c.param("name").to_string()))
    }),
    ("GET", "/ipinfo/defaultsubnet", |_, _| Ok(Call::DefaultSubnet)),
    ("GET", "/domain", |_, _| Ok(Call::Domain)),
    ("PUT", "/name/{id}/{ip}", parse_put_name),
    ("DELETE", "/name/{id}/{ip}", parse_delete_name),
];

/// Every route: parse the request (peers default to the control port `port` gives),
/// then hand the call to `then`.
fn routes<S: 'static>(port: fn(&S) -> u16, then: fn(&S, Call) -> Response) -> Router<S> {
    // Weave's API has no authentication; the face listens on loopback only.
    let mut r = Router::new(ErrorStyle::Text, open_gate());
    for &(method, pattern, parse) in ROUTES {
        r.add(method, pattern, move |s: &S, c: &Ctx| match parse(c, port(s)) {
            Ok(call) => then(s, call),
            Err(resp) => resp,
        });
        // These answer once peers forward by the change: they may wait seconds.
        if matches!(pattern, "/connect" | "/expose/{cidr*}") {
            r.slow(method);
        }
    }
    r
}

/// The face: each route parses its request, then the model carries it out.
pub fn router() -> Router<Weave> {
    routes(|s| s.control_port, execute)
}

/// The same routes, parsing only: what a request would do, as text (for fuzzing and
/// tests of the parsing alone).
#[cfg(any(fuzzing, test))]
pub fn parse_router() -> Router<()> {
    routes(|_| 6783, |_, call| text(200, format!("{call:?}")))
}

/// The face as it runs, except that `/connect` only says what it would do: it
/// resolves host names and waits for peers, which a fuzzer must not.
#[cfg(any(fuzzing, test))]
pub fn offline_router() -> Router<Weave> {
    routes(
        |s| s.control_port,
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

/// The model's errors as Weave answers them: the one place this face maps them.
fn failed(e: model::Error) -> Response {
    if let model::Error::PeerUp(_) = e {
        // Not Weave's answer (it took over at once): refusing is what avoids the
        // double allocations Weave's users ran into; 409 says "not in this state".
        return text(409, format!("{e}\n"));
    }
    match e.kind() {
        // Weave answers a taken address as it answers a malformed one.
        Kind::Invalid | Kind::Conflict => bad(e),
        Kind::Forbidden => text(403, format!("{e}\n")),
        Kind::NotFound => text(404, format!("{e}\n")),
        Kind::Unavailable => text(503, format!("{e}\n")),
        // The one JSON answer here: the change is stored but a worker has not applied
        // it, which every face reports alike.
        Kind::Behind => Response::error(503, &e.to_string()),
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
    fields.extend(parse_query(body.trim()).map_err(|e| bad(format!("the form: {e}")))?);
    Ok(fields)
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn check_alive(fields: &[(String, String)]) -> bool {
    field(fields, "check-alive") == Some("true")
}

fn parse_connect(c: &Ctx, port: u16) -> Result<Call, Response> {
    let fields = form(c.req)?;
    let mut peers = Vec::new();
    for (k, v) in &fields {
        if k == "peer" {
            peers.push(PeerAddr::parse(v, port).map_err(bad)?);
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

fn parse_expose(c: &Ctx, _: u16) -> Result<Call, Response> {
    c.param("cidr").parse().map(Call::Expose).map_err(|_| {
        bad(format!(
            "invalid CIDR {:?} (expected address/prefix-length)",
            c.param("cidr")
        ))
    })
}

/// An address with its subnet's prefix length, as a claim names it.
fn cidr_of(c: &Ctx) -> Result<Ipv4Net, Response> {
    c.param("subnet").parse::<Ipv4Net>().map_err(|_| {
        bad(format!(
            "invalid subnet {:?} (expected an IPv4 address/prefix-length)",
            c.param("subnet")
        ))
    })
}

/// A subnet to allocate in: no host bits.
fn subnet_of(c: &Ctx) -> Result<Ipv4Net, Response> {
    let net = cidr_of(c)?;
    // As Weave does: a subnet with host bits set is a mistake to report, not to guess at.
    if net != net.trunc() {
        return Err(bad(format!(
            "subnet {net} has bits set after the network prefix (did you mean {}?)",
            net.trunc()
        )));
    }
    Ok(net)
}

fn ip_of(c: &Ctx) -> Result<IpAddr, Response> {
    c.param("ip")
        .parse::<IpAddr>()
        .map_err(|_| bad(format!("invalid IP address {:?}", c.param("ip"))))
}

fn parse_put_name(c: &Ctx, _: u16) -> Result<Call, Response> {
    let fields = form(c.req)?;
    let ip = ip_of(c)?;
    let fqdn = field(&fields, "fqdn").ok_or_else(|| bad("form field fqdn is required"))?;
    Ok(Call::PutName {
        id: c.param("id").to_string(),
        ip,
        fqdn: fqdn.to_string(),
    })
}

fn parse_delete_name(c: &Ctx, _: u16) -> Result<Call, Response> {
    let fields = form(c.req)?;
    Ok(Call::DeleteName {
        id: c.param("id").to_string(),
        ip: ip_of(c)?,
        fqdn: field(&fields, "fqdn").map(str::to_string),
    })
}

fn execute(s: &Weave, call: Call) -> Response {
    match call {
        Call::Status => status(s),
        Call::Connect { peers, replace } => {
            let max = s.model.settings().max_peers;
            if peers.len() > max {
                return bad(format!(
                    "{} peers in one request, more than control.max_peers ({max})",
                    peers.len()
                ));
            }
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

fn connect(s: &Weave, addrs: &[SocketAddr], replace: bool) -> Response {
    match s.model.connect(addrs, replace) {
        Ok(late) if late.is_empty() => text(200, ""),
        Ok(late) => {
            let l: Vec<String> = late.iter().map(ToString::to_string).collect();
            text(200, format!("not connected yet (will keep trying): {}\n", l.join(" ")))
        }
        Err(e) => failed(e),
    }
}

/// An upstream server as Weave shows one: its address, with the port when not 53.
fn upstream_text(a: std::net::SocketAddr) -> String {
    if a.port() == 53 {
        a.ip().to_string()
    } else {
        a.to_string()
    }
}

fn status(s: &Weave) -> Response {
    let st = s.model.status();
    let dns = s.model.dns();
    let signed = s.signed;
    let info = if signed {
        "tunloom control, HMAC-SHA256 signed"
    } else {
        "tunloom control"
    };
    let conn = |p: &Peer| {
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
        "name": s.node_name,
        "nick_name": s.nickname,
        "connections": connections,
    })];
    for p in st.peers.iter().filter(|p| !p.name.is_empty()) {
        let back = if p.up {
            vec![json!({"address": s.node_name, "state": "established", "info": info})]
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
            "upstream": dns.settings.upstream.iter().map(|a| upstream_text(*a)).collect::<Vec<_>>(),
            "ttl": dns.settings.ttl,
            "entries": dns.zone().records(),
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

fn answer(r: Result<Allocation, model::Error>) -> Response {
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
            remote: None,
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
        let r = failed(model::Error::Behind(b));
        assert_eq!((r.status, r.content_type), (503, "application/json"));
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"], "worker 1 is behind: it has applied generation 4, not 5");
        let r = failed(model::Error::BadContainerId);
        let want = format!("{}\n", crate::names::CONTAINER_ID_RULE);
        assert_eq!(
            (r.status, r.content_type, r.body.as_slice()),
            (400, "text/plain; charset=utf-8", want.as_bytes())
        );
        let taken = model::Error::Held {
            addr: "10.32.0.2".parse().unwrap(),
            holder: "c1".into(),
        };
        assert_eq!(failed(taken).status, 400, "Weave answers a taken address 400");
        assert_eq!(failed(model::Error::NoPeer("x".into())).status, 404);
        let store = model::Error::Store(crate::store::StoreError::Failed);
        assert_eq!(failed(store).status, 503);
    }

    /// The face as it runs, built from a model on the in-memory store and nothing
    /// else.
    fn face() -> Weave {
        let settings = crate::testkit::model_settings("10.32.0.0/12");
        let store = crate::store::memory::MemoryStore::default();
        let (model, _) = crate::testkit::model_on(settings, store, 0).unwrap();
        Weave {
            model: Arc::new(model),
            control_port: 6783,
            node_name: "m".into(),
            nickname: "m".into(),
            signed: false,
        }
    }

    #[test]
    fn a_containers_life_on_a_model_in_memory() {
        let (w, r) = (face(), router());
        let call = |m: &str, p: &str, b: &str| {
            let resp = r.dispatch(&w, &req(m, p, b));
            (resp.status, String::from_utf8_lossy(&resp.body).into_owned())
        };
        assert_eq!(call("POST", "/ip/c1", ""), (200, "10.32.0.2/12".into()));
        assert_eq!(call("POST", "/ip/c1", ""), (200, "10.32.0.2/12".into()), "idempotent");
        assert_eq!(call("GET", "/ip/c1", ""), (200, "10.32.0.2/12".into()));
        assert_eq!(call("PUT", "/ip/c2/10.32.0.9/12", "").0, 200);
        let (status, body) = call("PUT", "/ip/c3/10.32.0.9/12", "");
        assert_eq!(status, 400);
        assert!(body.contains("already allocated to container c2"), "{body}");
        assert_eq!(call("PUT", "/name/c1/10.32.0.2", "fqdn=one.weave.local").0, 200);
        assert_eq!(call("DELETE", "/name/c1/10.32.0.2", "").0, 200);
        assert_eq!(call("DELETE", "/name/c1/10.32.0.2", "").0, 404);
        assert_eq!(call("DELETE", "/ip/c1", "").0, 204);
        assert_eq!(call("GET", "/ip/c1", "").0, 404);
        assert_eq!(call("POST", "/expose/10.32.0.100/12", "").0, 200);
        assert_eq!(call("DELETE", "/ip/weave:expose", "").0, 204);
        assert_eq!(call("GET", "/domain", ""), (200, "weave.local.".into()));
        let (status, body) = call("GET", "/status", "");
        assert_eq!(status, 200, "no worker to wait for: ready");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["ipam"]["subnet"], "10.32.0.0/12");
    }

    #[test]
    fn forms_come_from_query_and_body() {
        let req = Request {
            remote: None,
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
