//! A small synchronous HTTP router shared by every API face: path patterns with
//! parameters, 404 for unknown paths, 405 (with `Allow`) for wrong methods, and
//! responses as values so handlers stay plain functions.

use serde::Serialize;

/// A request as handlers see it: decoded path, query pairs, headers, whole body.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
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

pub type Handler<S> = Box<dyn Fn(&S, &Request, &Params) -> Response + Send + Sync>;

struct Route<S> {
    pattern: Vec<Seg>,
    methods: Vec<(&'static str, Handler<S>)>,
}

/// How errors are shaped on this face: JSON, or plain text (the Weave face).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorStyle {
    Json,
    Text,
}

pub struct Router<S> {
    routes: Vec<Route<S>>,
    pub style: ErrorStyle,
}

impl<S> Router<S> {
    pub fn new(style: ErrorStyle) -> Router<S> {
        Router {
            routes: Vec::new(),
            style,
        }
    }

    /// Adds `method pattern → handler`. Patterns are `/`-separated literals,
    /// `{param}` for one segment and a final `{param*}` for the rest of the path.
    pub fn add(
        &mut self,
        method: &'static str,
        pattern: &'static str,
        h: impl Fn(&S, &Request, &Params) -> Response + Send + Sync + 'static,
    ) -> &mut Self {
        let h: Handler<S> = Box::new(h);
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
            r.methods.push((method, h));
        } else {
            self.routes.push(Route {
                pattern: segs,
                methods: vec![(method, h)],
            });
        }
        self
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
            for (m, _) in &r.methods {
                out.push((*m, path.clone()));
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
        let segs: Vec<String> = req
            .path
            .trim_start_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .map(percent_decode)
            .collect();
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
            if let Some((_, h)) = r.methods.iter().find(|(m, _)| *m == want) {
                return h(state, req, &params);
            }
            allowed.extend(r.methods.iter().map(|(m, _)| *m));
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

/// Decodes `%XX` escapes; invalid escapes stay as they are.
pub fn percent_decode(s: &str) -> String {
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
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `a=1&b=x%20y` (also form bodies; `+` is a space).
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                percent_decode(&k.replace('+', " ")),
                percent_decode(&v.replace('+', " ")),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            query: vec![],
            headers: vec![],
            body: vec![],
        }
    }

    fn router() -> Router<()> {
        let mut r = Router::new(ErrorStyle::Json);
        r.add("GET", "/a/{id}", |_, _, p| Response::text(200, p.get("id").to_string()))
            .add("DELETE", "/a/{id}", |_, _, _| Response::text(204, ""))
            .add("PUT", "/ip/{id}/{cidr*}", |_, _, p| {
                Response::text(200, format!("{}|{}", p.get("id"), p.get("cidr")))
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
    fn query_and_percent_decoding() {
        assert_eq!(
            parse_query("peer=10.0.0.1&replace=true&x=a+b%2Fc&bad=%zz&"),
            vec![
                ("peer".into(), "10.0.0.1".into()),
                ("replace".into(), "true".into()),
                ("x".into(), "a b/c".into()),
                ("bad".into(), "%zz".into())
            ]
        );
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("a%4"), "a%4");
        assert_eq!(percent_decode("%41"), "A");
    }
}
