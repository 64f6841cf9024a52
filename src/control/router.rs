//! A small synchronous HTTP router shared by every API face: path patterns with
//! parameters, 404 for unknown paths, 405 (with `Allow`) for wrong methods, and
//! responses as values so handlers stay plain functions.
//!
//! Every matched request passes the face's **gate** first: a before-hook that says
//! who is asking (a [`Principal`]) or answers for itself (401). Each route carries a
//! [`Permission`] — public, read or write — and the principal must hold it (403
//! otherwise). Faces without authentication of their own (Weave, bound to loopback)
//! use [`open_gate`], whose principal is the local operator; the identity layer
//! plugs its token check in here.

use serde::Serialize;
use std::net::SocketAddr;

/// Who a request comes from, as the face's gate established it.
#[derive(Debug, Clone)]
pub enum Principal {
    /// The local operator, on a face without authentication of its own that only
    /// listens on loopback: allowed everything.
    Local,
    /// Nobody: no credentials were presented. Allowed public routes only.
    Anonymous,
    /// The holder of a verified token: reads with any role, writes with admin.
    Token(Box<crate::auth::Claims>),
}

/// What a route requires of the principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Anyone, with or without credentials (health, login, the API document).
    Public,
    /// Any authenticated principal.
    Read,
    /// A principal allowed to change things.
    Write,
}

impl Principal {
    pub fn may(&self, need: Permission) -> bool {
        match (self, need) {
            (_, Permission::Public) => true,
            (Principal::Local, _) => true,
            (Principal::Anonymous, _) => false,
            (Principal::Token(_), Permission::Read) => true,
            (Principal::Token(c), Permission::Write) => c.is_admin(),
        }
    }
}

/// A face's before-hook: the principal of a request, or the answer that refuses it.
/// It is told the matched route's permission, so it can tell a refusal that stands
/// (a protected route) from credentials a public route ignores anyway; the router
/// still decides whether the principal holds the permission.
pub type Gate<S> = Box<dyn Fn(&S, &Request, Permission) -> Result<Principal, Response> + Send + Sync>;

/// The gate of a face without authentication: everyone is the local operator.
pub fn open_gate<S>() -> Gate<S> {
    Box::new(|_, _, _| Ok(Principal::Local))
}

/// A request as handlers see it: decoded path, query pairs, headers, whole body.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The path as sent (still percent-encoded); segments are decoded by the router.
    pub path: String,
    /// Query pairs, decoded.
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Where the request came from, when it came over a socket.
    pub remote: Option<SocketAddr>,
}

impl Request {
    /// A request from its wire parts: `target` is split into path and query, and the
    /// query decoded. Err: what is wrong with the target (a 400).
    pub fn from_raw(
        method: String,
        target: &str,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        remote: Option<SocketAddr>,
    ) -> Result<Request, String> {
        if !target.starts_with('/') {
            return Err(format!("request target {target:?} is not a path"));
        }
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        Ok(Request {
            method: method.to_ascii_uppercase(),
            path: path.to_string(),
            query: parse_query(query)?,
            headers,
            body,
            remote,
        })
    }

    pub fn query(&self, key: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A response value.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json<T: Serialize>(status: u16, value: &T) -> Response {
        match serde_json::to_vec_pretty(value) {
            Ok(body) => Response::json_bytes(status, body),
            Err(e) => Response::error(500, &format!("cannot encode response: {e}")),
        }
    }

    /// The JSON error shape every JSON face uses: `{"error": "..."}`.
    pub fn error(status: u16, message: &str) -> Response {
        Response::json_bytes(
            status,
            serde_json::to_vec(&serde_json::json!({ "error": message })).unwrap_or_default(),
        )
    }

    fn json_bytes(status: u16, mut body: Vec<u8>) -> Response {
        body.push(b'\n');
        Response {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body,
        }
    }

    pub fn text(status: u16, text: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: text.into().into_bytes(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }
}

/// Path parameters captured by a route pattern.
#[derive(Debug, Default, Clone)]
pub struct Params(Vec<(&'static str, String)>);

impl Params {
    pub fn get(&self, name: &str) -> &str {
        self.0.iter().find(|(k, _)| *k == name).map_or("", |(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, Copy)]
enum Seg {
    Lit(&'static str),
    /// `{name}`: one segment.
    Param(&'static str),
    /// `{name*}`: the rest of the path, slashes included (for CIDRs like 10.0.0.0/8).
    Rest(&'static str),
}

/// What a handler is given: the request, its path parameters, and who sent it.
pub struct Ctx<'a> {
    pub req: &'a Request,
    pub params: Params,
    pub principal: Principal,
}

impl Ctx<'_> {
    /// A path parameter (empty when the pattern has none of that name).
    pub fn param(&self, name: &str) -> &str {
        self.params.get(name)
    }
}

pub type Handler<S> = Box<dyn Fn(&S, &Ctx) -> Response + Send + Sync>;

struct Method<S> {
    name: &'static str,
    need: Permission,
    /// The handler may wait on peers: it runs on a pool of its own.
    slow: bool,
    handler: Handler<S>,
}

struct Route<S> {
    pattern: Vec<Seg>,
    methods: Vec<Method<S>>,
}

/// How errors are shaped on this face: JSON, or plain text (the Weave face).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorStyle {
    Json,
    Text,
}

pub struct Router<S> {
    routes: Vec<Route<S>>,
    gate: Gate<S>,
    pub style: ErrorStyle,
}

impl<S> Router<S> {
    /// A router whose every request passes `gate` first.
    pub fn new(style: ErrorStyle, gate: Gate<S>) -> Router<S> {
        Router {
            routes: Vec::new(),
            gate,
            style,
        }
    }

    /// Adds `method pattern → handler`, needing [`Permission::Read`] for GET and
    /// [`Permission::Write`] for every other method. Patterns are `/`-separated
    /// literals, `{param}` for one segment and a final `{param*}` for the rest of the
    /// path.
    pub fn add(
        &mut self,
        method: &'static str,
        pattern: &'static str,
        h: impl Fn(&S, &Ctx) -> Response + Send + Sync + 'static,
    ) -> &mut Self {
        let need = if method == "GET" {
            Permission::Read
        } else {
            Permission::Write
        };
        self.add_with(method, pattern, need, h)
    }

    /// Adds a route that anyone may call.
    pub fn add_public(
        &mut self,
        method: &'static str,
        pattern: &'static str,
        h: impl Fn(&S, &Ctx) -> Response + Send + Sync + 'static,
    ) -> &mut Self {
        self.add_with(method, pattern, Permission::Public, h)
    }

    /// Adds `method pattern → handler` needing `need`.
    pub fn add_with(
        &mut self,
        method: &'static str,
        pattern: &'static str,
        need: Permission,
        h: impl Fn(&S, &Ctx) -> Response + Send + Sync + 'static,
    ) -> &mut Self {
        let m = Method {
            name: method,
            need,
            slow: false,
            handler: Box::new(h),
        };
        let segs: Vec<Seg> = pattern
            .trim_start_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(p) => match p.strip_suffix('*') {
                    Some(rest) => Seg::Rest(rest),
                    None => Seg::Param(p),
                },
                None => Seg::Lit(s),
            })
            .collect();
        let key = format!("{segs:?}");
        if let Some(r) = self.routes.iter_mut().find(|r| format!("{:?}", r.pattern) == key) {
            r.methods.push(m);
        } else {
            self.routes.push(Route {
                pattern: segs,
                methods: vec![m],
            });
        }
        self
    }

    /// Marks the last route added for `method` as one that may wait on peers, so the
    /// server runs it on a pool of its own where it cannot hold up the others.
    pub fn slow(&mut self, method: &'static str) -> &mut Self {
        if let Some(m) = self
            .routes
            .last_mut()
            .and_then(|r| r.methods.iter_mut().rev().find(|m| m.name == method))
        {
            m.slow = true;
        }
        self
    }

    /// Whether `req` goes to a route marked [`Router::slow`].
    pub fn is_slow(&self, req: &Request) -> bool {
        let Ok(segs) = segments(&req.path) else { return false };
        self.routes
            .iter()
            .filter(|r| matches(&r.pattern, &segs).is_some())
            .flat_map(|r| r.methods.iter())
            .any(|m| m.name == req.method && m.slow)
    }

    /// Every (method, pattern) served, patterns with `{}` for parameters.
    pub fn routes(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for r in &self.routes {
            let path: String = r
                .pattern
                .iter()
                .map(|s| match s {
                    Seg::Lit(l) => format!("/{l}"),
                    Seg::Param(_) | Seg::Rest(_) => "/{}".to_string(),
                })
                .collect();
            for m in &r.methods {
                out.push((m.name, path.clone()));
            }
        }
        out
    }

    /// An error answer in this face's style.
    pub fn error(&self, status: u16, message: &str) -> Response {
        match self.style {
            ErrorStyle::Json => Response::error(status, message),
            ErrorStyle::Text => Response::text(status, format!("{message}\n")),
        }
    }

    /// Routes a request. HEAD is served as GET.
    pub fn dispatch(&self, state: &S, req: &Request) -> Response {
        let segs = match segments(&req.path) {
            Ok(s) => s,
            Err(e) => return self.error(400, &e),
        };
        let mut allowed: Vec<&'static str> = Vec::new();
        for r in &self.routes {
            let Some(params) = matches(&r.pattern, &segs) else {
                continue;
            };
            let want = if req.method == "HEAD" {
                "GET"
            } else {
                req.method.as_str()
            };
            if let Some(m) = r.methods.iter().find(|m| m.name == want) {
                let principal = match ((self.gate)(state, req, m.need), m.need) {
                    (Ok(p), _) => p,
                    // A public route serves callers whose credentials do not hold.
                    (Err(_), Permission::Public) => Principal::Anonymous,
                    (Err(refusal), _) => return refusal,
                };
                if !principal.may(m.need) {
                    let why = match m.need {
                        Permission::Write => "admin role required".to_string(),
                        _ => format!("{} {} needs {:?} permission", req.method, req.path, m.need),
                    };
                    return self.error(403, &why);
                }
                let ctx = Ctx { req, params, principal };
                return (m.handler)(state, &ctx);
            }
            allowed.extend(r.methods.iter().map(|m| m.name));
        }
        if allowed.is_empty() {
            self.error(404, &format!("no such endpoint: {}", req.path))
        } else {
            allowed.sort();
            allowed.dedup();
            self.error(
                405,
                &format!(
                    "method {} not allowed on {}; allowed: {}",
                    req.method,
                    req.path,
                    allowed.join(", ")
                ),
            )
            .with_header("Allow", allowed.join(", "))
        }
    }
}

fn matches(pattern: &[Seg], segs: &[String]) -> Option<Params> {
    let mut params = Params::default();
    let mut i = 0;
    for (k, p) in pattern.iter().enumerate() {
        match p {
            Seg::Lit(l) => {
                if segs.get(i).map(String::as_str) != Some(*l) {
                    return None;
                }
                i += 1;
            }
            Seg::Param(name) => {
                params.0.push((name, segs.get(i)?.clone()));
                i += 1;
            }
            Seg::Rest(name) => {
                debug_assert_eq!(k, pattern.len() - 1, "rest parameter must be last");
                if i >= segs.len() {
                    return None;
                }
                params.0.push((name, segs[i..].join("/")));
                i = segs.len();
            }
        }
    }
    (i == segs.len()).then_some(params)
}

/// The path's segments, each percent-decoded.
fn segments(path: &str) -> Result<Vec<String>, String> {
    path.trim_start_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect()
}

/// Decodes `%XX` escapes (invalid escapes stay as they are). What does not decode to
/// valid UTF-8 is an error naming it — never replaced, so two different inputs can
/// never decode to one name.
pub fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not valid UTF-8 once percent-decoded"))
}

/// Parses `a=1&b=x%20y` (also form bodies; `+` is a space). Err: a name or value
/// that is not valid UTF-8 once decoded.
pub fn parse_query(q: &str) -> Result<Vec<(String, String)>, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Ok((
                percent_decode(&k.replace('+', " "))?,
                percent_decode(&v.replace('+', " "))?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str) -> Request {
        Request {
            remote: None,
            method: method.into(),
            path: path.into(),
            query: vec![],
            headers: vec![],
            body: vec![],
        }
    }

    fn router() -> Router<()> {
        let mut r = Router::new(ErrorStyle::Json, open_gate());
        r.add("GET", "/a/{id}", |_, c| Response::text(200, c.param("id").to_string()))
            .add("DELETE", "/a/{id}", |_, _| Response::text(204, ""))
            .add("PUT", "/ip/{id}/{cidr*}", |_, c| {
                Response::text(200, format!("{}|{}", c.param("id"), c.param("cidr")))
            });
        r
    }

    #[test]
    fn params_rest_404_405() {
        let r = router();
        assert_eq!(r.dispatch(&(), &req("GET", "/a/x%20y")).body, b"x y");
        assert_eq!(r.dispatch(&(), &req("HEAD", "/a/1")).status, 200);
        assert_eq!(
            r.dispatch(&(), &req("PUT", "/ip/c1/10.32.0.0/12")).body,
            b"c1|10.32.0.0/12"
        );
        assert_eq!(r.dispatch(&(), &req("GET", "/a/1/2")).status, 404);
        assert_eq!(r.dispatch(&(), &req("GET", "/nope")).status, 404);
        let resp = r.dispatch(&(), &req("POST", "/a/1"));
        assert_eq!(resp.status, 405);
        assert_eq!(resp.headers, vec![("Allow", "DELETE, GET".to_string())]);
        let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert!(body["error"].as_str().unwrap().contains("not allowed"));
    }

    #[test]
    fn the_gate_runs_before_every_route_and_permissions_hold() {
        // A gate that knows one credential, which may only read.
        let gate: Gate<()> = Box::new(|_, req: &Request, _| match req.header("authorization") {
            None => Ok(Principal::Anonymous),
            Some("local") => Ok(Principal::Local),
            Some(_) => Err(Response::error(401, "bad credentials")),
        });
        let mut r = Router::new(ErrorStyle::Json, gate);
        r.add_public("GET", "/health", |_, c| {
            Response::text(200, format!("{:?}", c.principal))
        })
        .add("GET", "/things", |_, _| Response::text(200, "things"))
        .add("POST", "/things", |_, _| Response::text(201, "made"));
        let with = |m: &str, p: &str, auth: Option<&str>| {
            let mut q = req(m, p);
            if let Some(a) = auth {
                q.headers.push(("Authorization".into(), a.into()));
            }
            r.dispatch(&(), &q)
        };
        assert_eq!(with("GET", "/health", None).body, b"Anonymous");
        assert_eq!(
            with("GET", "/health", Some("wrong")).status,
            200,
            "public despite bad credentials"
        );
        assert_eq!(with("GET", "/things", Some("wrong")).status, 401);
        assert_eq!(with("GET", "/things", None).status, 403);
        assert_eq!(with("POST", "/things", None).status, 403);
        assert_eq!(with("POST", "/things", Some("local")).status, 201);
        assert_eq!(
            with("GET", "/nope", Some("wrong")).status,
            404,
            "no gate for unknown paths"
        );
    }

    #[test]
    fn query_and_percent_decoding() {
        assert_eq!(
            parse_query("peer=10.0.0.1&replace=true&x=a+b%2Fc&bad=%zz&").unwrap(),
            vec![
                ("peer".into(), "10.0.0.1".into()),
                ("replace".into(), "true".into()),
                ("x".into(), "a b/c".into()),
                ("bad".into(), "%zz".into())
            ]
        );
        assert_eq!(percent_decode("%").unwrap(), "%");
        assert_eq!(percent_decode("a%4").unwrap(), "a%4");
        assert_eq!(percent_decode("%41").unwrap(), "A");
        assert_eq!(percent_decode("%C3%A9").unwrap(), "é");
    }

    /// Two different ids never decode to one: what is not UTF-8 is refused, by name.
    #[test]
    fn invalid_utf8_after_decoding_is_a_400_never_a_replacement() {
        assert!(percent_decode("%FF").is_err() && percent_decode("%FE").is_err());
        assert!(percent_decode("%C3").unwrap_err().contains("%C3"));
        assert!(parse_query("id=%FF").is_err());
        let r = router();
        let resp = r.dispatch(&(), &req("GET", "/a/%FF"));
        assert_eq!(resp.status, 400);
        assert!(String::from_utf8_lossy(&resp.body).contains("%FF"));
        assert!(Request::from_raw("GET".into(), "/a?x=%FE", vec![], vec![], None).is_err());
        assert!(Request::from_raw("GET".into(), "http://h/a", vec![], vec![], None).is_err());
    }
}
