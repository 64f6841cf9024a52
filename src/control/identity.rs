//! Who is asking, on the management listener: the token gate every route passes, and
//! the faces that hand out and manage credentials — Weka's login and refresh (seed
//! 004), Neuwerk's session, identity and service-account routes (seed 003), and
//! Container Station's login (seed 002). All of them are thin adapters over
//! [`crate::auth::Identity`], which decides and stores.
//!
//! The gate takes `Authorization: Bearer <jwt>` first, then the `neuwerk_auth`
//! cookie (which token-login and the Container Station login set); a token in the
//! query string is refused, so it never lands in a log or a browser history. Without
//! credentials a protected route is 401 `missing bearer token`; a bad, expired or
//! revoked token is 401 saying why; a write without the admin role is 403 `admin role
//! required` (the router decides that from the route's permission).
//!
//! Refusals are counted by reason in the identity's [`AuthFailure`] counters (the
//! stats' `auth` section): by the gate on routes that need a token, and by the login
//! routes where they answer.
//!
//! [`AuthFailure`]: crate::auth::AuthFailure

use super::router::{Ctx, Gate, Permission, Principal, Response, Router};
use crate::auth::{AuthError, Claims, Identity, Role};
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

/// The session cookie (Neuwerk's name; the Container Station login sets it too).
pub const COOKIE: &str = "neuwerk_auth";

/// What the identity routes need of a face's state.
pub trait HasIdentity {
    fn identity(&self) -> &Arc<Identity>;
    /// Whether the listener speaks TLS (cookies get `Secure`).
    fn tls(&self) -> bool;
}

/// The token gate: the principal a request's credentials prove, or its 401.
/// Refusals on protected routes, and writes a readonly token will be refused, are
/// counted as authentication failures (a public route's ignored credentials are not).
pub fn token_gate<S: HasIdentity + 'static>() -> Gate<S> {
    Box::new(|s: &S, req, need| {
        let id = s.identity();
        let refuse = |e: AuthError| {
            if need != Permission::Public {
                id.count_failure(&e);
            }
            Response::error(401, &e.to_string()).with_header("WWW-Authenticate", "Bearer")
        };
        if req
            .query
            .iter()
            .any(|(k, _)| matches!(k.as_str(), "token" | "access_token" | "jwt" | "auth"))
        {
            return Err(refuse(AuthError::BadToken(
                "a token in the query string is refused; send it as Authorization: Bearer".into(),
            )));
        }
        let token = match req.header("authorization") {
            Some(h) => match h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")) {
                Some(t) => t.trim().to_string(),
                None => {
                    return Err(refuse(AuthError::BadToken(
                        "the Authorization header must be Bearer <token>".into(),
                    )))
                }
            },
            None => match cookie(req.header("cookie").unwrap_or(""), COOKIE) {
                Some(t) => t,
                None => return Err(refuse(AuthError::MissingToken)),
            },
        };
        match id.verify(&token) {
            Ok(c) => {
                if need == Permission::Write && !c.is_admin() {
                    id.count_failure(&AuthError::Forbidden("admin role required".into()));
                }
                Ok(Principal::Token(Box::new(c)))
            }
            Err(e) => Err(refuse(e)),
        }
    })
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie(header: &str, name: &str) -> Option<String> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name && !v.is_empty()).then(|| v.to_string())
    })
}

fn set_cookie<S: HasIdentity>(s: &S, token: &str, max_age: Option<u64>) -> String {
    let mut c = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/");
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    if s.tls() {
        c.push_str("; Secure");
    }
    c
}

/// The client's address, for the login rate limit.
fn client(c: &Ctx) -> IpAddr {
    c.req.remote.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip())
}

fn json_body(c: &Ctx) -> Result<serde_json::Map<String, Value>, String> {
    match serde_json::from_slice::<Value>(&c.req.body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err("the body must be a JSON object".into()),
        Err(e) => Err(format!("malformed JSON: {e}")),
    }
}

fn text_field(o: &serde_json::Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("{key} must be a string, not {other}")),
    }
}

/// `e`, counted as an authentication failure when it is one (a login route's answer).
fn counted<'a>(id: &Identity, e: &'a AuthError) -> &'a AuthError {
    id.count_failure(e);
    e
}

/// An error in the JSON faces' shape, with `Retry-After` for a rate limit.
fn failed(e: &AuthError) -> Response {
    let r = Response::error(e.status(), &e.to_string());
    match e {
        AuthError::RateLimited { retry_after_s } => r.with_header("Retry-After", retry_after_s.to_string()),
        _ => r,
    }
}

fn whoami_json(c: &Claims) -> Value {
    json!({"sub": c.sub, "sa_id": c.sa_id, "exp": c.exp, "roles": c.roles})
}

/// Adds the identity routes: Weka's, Neuwerk's and Container Station's login.
pub fn mount<S: HasIdentity + AsRef<crate::model::Model> + 'static>(r: &mut Router<S>) {
    r.add_public("POST", "/api/v2/login", weka_login::<S>)
        .add_public("POST", "/api/v2/login/refresh", weka_refresh::<S>)
        .add("GET", "/api/v2/cluster", weka_cluster::<S>)
        .add_public("POST", "/api/v1/auth/token-login", token_login::<S>)
        .add_public("POST", "/api/v1/auth/logout", logout::<S>)
        .add("GET", "/api/v1/auth/whoami", whoami::<S>)
        .add("GET", "/api/v1/service-accounts", accounts::<S>)
        .add("POST", "/api/v1/service-accounts", create_account::<S>)
        .add("PUT", "/api/v1/service-accounts/{id}", update_account::<S>)
        .add("DELETE", "/api/v1/service-accounts/{id}", delete_account::<S>)
        .add("GET", "/api/v1/service-accounts/{id}/tokens", tokens::<S>)
        .add("POST", "/api/v1/service-accounts/{id}/tokens", mint_token::<S>)
        .add(
            "DELETE",
            "/api/v1/service-accounts/{id}/tokens/{token_id}",
            revoke_token::<S>,
        )
        .add_public("POST", "/container-station/api/v1/login", cs_login::<S>);
}

/// Weka's envelope.
fn weka(status: u16, data: Value) -> Response {
    Response::json(status, &json!({ "data": data }))
}

fn weka_session(s: &crate::auth::Session) -> Value {
    json!({
        "access_token": s.access_token,
        "token_type": "Bearer",
        "expires_in": s.expires_in,
        "refresh_token": s.refresh_token,
        "password_change_required": s.password_change_required,
    })
}

fn weka_failed(e: &AuthError) -> Response {
    match e {
        AuthError::BadCredentials | AuthError::BadToken(_) | AuthError::MissingToken => {
            weka(401, json!("Unauthorized"))
        }
        AuthError::RateLimited { retry_after_s } => weka(
            429,
            json!(format!("too many failed logins; retry in {retry_after_s} s")),
        )
        .with_header("Retry-After", retry_after_s.to_string()),
        AuthError::Invalid(m) => Response::json(400, &json!({"message": m, "data": {}})),
        other => Response::json(other.status(), &json!({"message": other.to_string()})),
    }
}

fn weka_login<S: HasIdentity>(s: &S, c: &Ctx) -> Response {
    let id = s.identity();
    if let Err(e) = id.check_rate(client(c)) {
        return weka_failed(counted(id, &e));
    }
    let body = match json_body(c) {
        Ok(b) => b,
        Err(m) => return weka_failed(&AuthError::Invalid(m)),
    };
    let (user, pass) = match (text_field(&body, "username"), text_field(&body, "password")) {
        (Ok(Some(u)), Ok(Some(p))) => (u, p),
        (Err(m), _) | (_, Err(m)) => return weka_failed(&AuthError::Invalid(m)),
        _ => return weka_failed(&AuthError::Invalid("username and password are required".into())),
    };
    if let Err(m) = text_field(&body, "org") {
        return weka_failed(&AuthError::Invalid(m));
    }
    match id.login(&user, &pass, client(c)) {
        Ok(session) => weka(200, weka_session(&session)),
        Err(e) => weka_failed(counted(id, &e)),
    }
}

fn weka_refresh<S: HasIdentity>(s: &S, c: &Ctx) -> Response {
    let id = s.identity();
    if let Err(e) = id.check_rate(client(c)) {
        return weka_failed(counted(id, &e));
    }
    let token = match json_body(c).and_then(|b| text_field(&b, "refresh_token")) {
        Ok(Some(t)) => t,
        Ok(None) => return weka_failed(&AuthError::Invalid("refresh_token is required".into())),
        Err(m) => return weka_failed(&AuthError::Invalid(m)),
    };
    match id.refresh(&token) {
        Ok(session) => weka(200, weka_session(&session)),
        Err(e) => {
            id.record_failure(client(c));
            weka_failed(counted(id, &e))
        }
    }
}

fn weka_cluster<S: HasIdentity + AsRef<crate::model::Model>>(s: &S, _: &Ctx) -> Response {
    let model = s.as_ref();
    let status = model.status();
    let peers: Vec<Value> = status
        .peers
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "status": p.state_name(),
                "control_address": p.control_addr.to_string(),
                "data_address": p.data_addr.map(|a| a.to_string()),
            })
        })
        .collect();
    let up = status.peers.iter().filter(|p| p.up).count();
    weka(
        200,
        json!({
            "name": model.settings().domain,
            "status": if status.ready { "OK" } else { "DEGRADED" },
            "hosts": {"total": status.peers.len() + 1, "active": up + 1},
            "peers": peers,
            "ipam": {
                "range_num_ips": status.ipam.range_num_ips,
                "owned_num_ips": status.ipam.owned_num_ips,
                "allocated": status.ipam.allocated,
            },
        }),
    )
}

fn token_login<S: HasIdentity>(s: &S, c: &Ctx) -> Response {
    let id = s.identity();
    if let Err(e) = id.check_rate(client(c)) {
        return failed(counted(id, &e));
    }
    let raw = match json_body(c).and_then(|b| text_field(&b, "token")) {
        Ok(Some(t)) => t,
        Ok(None) => return Response::error(400, "token is required"),
        Err(m) => return Response::error(400, &m),
    };
    let token = raw.strip_prefix("Bearer ").unwrap_or(&raw).trim().to_string();
    match id.verify(&token) {
        Ok(claims) => Response::json(200, &whoami_json(&claims)).with_header("Set-Cookie", set_cookie(s, &token, None)),
        Err(e) => {
            id.record_failure(client(c));
            failed(counted(id, &e))
        }
    }
}

fn logout<S: HasIdentity>(s: &S, c: &Ctx) -> Response {
    // The session ends here whatever the cookie holds; a valid one is revoked too, so
    // a copy of it stops working.
    if let Some(t) = cookie(c.req.header("cookie").unwrap_or(""), COOKIE) {
        if let Ok(claims) = s.identity().verify(&t) {
            if let Err(e) = s.identity().logout(None, Some(&claims)) {
                return failed(&e);
            }
        }
    }
    Response {
        status: 204,
        content_type: "application/json",
        headers: Vec::new(),
        body: Vec::new(),
    }
    .with_header("Set-Cookie", set_cookie(s, "", Some(0)))
}

fn principal_claims<'a>(c: &'a Ctx) -> Option<&'a Claims> {
    match &c.principal {
        Principal::Token(claims) => Some(claims),
        _ => None,
    }
}

fn whoami<S: HasIdentity>(_: &S, c: &Ctx) -> Response {
    match principal_claims(c) {
        Some(claims) => Response::json(200, &whoami_json(claims)),
        None => Response::json(
            200,
            &json!({"sub": "local", "sa_id": null, "exp": null, "roles": ["admin"]}),
        ),
    }
}

fn actor(c: &Ctx) -> String {
    principal_claims(c).map_or_else(|| "local".to_string(), |cl| cl.sub.clone())
}

fn role_of(v: Option<&Value>, key: &str) -> Result<Option<Role>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
            "admin" => Ok(Some(Role::Admin)),
            "readonly" => Ok(Some(Role::Readonly)),
            _ => Err(format!("{key} must be \"admin\" or \"readonly\", not {s:?}")),
        },
        Some(other) => Err(format!("{key} must be a string, not {other}")),
    }
}

fn accounts<S: HasIdentity>(s: &S, _: &Ctx) -> Response {
    Response::json(200, &s.identity().accounts())
}

fn create_account<S: HasIdentity>(s: &S, c: &Ctx) -> Response {
    let parsed = json_body(c).and_then(|b| {
        let name = text_field(&b, "name")?
            .filter(|n| !n.trim().is_empty())
            .ok_or("name is required")?;
        let description = text_field(&b, "description")?.unwrap_or_default();
        let role = role_of(b.get("role"), "role")?.unwrap_or(Role::Readonly);
        Ok((name, description, role))
    });
    match parsed {
        Ok((name, description, role)) => match s.identity().create_account(&name, &description, role, &actor(c)) {
            Ok(a) => Response::json(200, &a),
            Err(e) => failed(&e),
        },
        Err(m) => Response::error(400, &m),
    }
}

fn update_account<S: HasIdentity>(s: &S, c: &Ctx) -> Response {
    let parsed = json_body(c).and_then(|b| {
        Ok((
            text_field(&b, "name")?,
            text_field(&b, "description")?,
            role_of(b.get("role"), "role")?,
        ))
    });
    match parsed {
        Ok((name, description, role)) => {
            match s
                .identity()
                .update_account(c.param("id"), name.as_deref(), description.as_deref(), role)
            {
                Ok(a) => Response::json(200, &a),
                Err(e) => failed(&e),
            }
        }
        Err(m) => Response::error(400, &m),
    }
}

fn no_content() -> Response {
    Response {
        status: 204,
        content_type: "application/json",
        headers: Vec::new(),
        body: Vec::new(),
    }
}

fn delete_account<S: HasIdentity>(s: &S, c: &Ctx) -> Response {
    match s.identity().delete_account(c.param("id")) {
        Ok(()) => no_content(),
        Err(e) => failed(&e),
    }
}

fn tokens<S: HasIdentity>(s: &S, c: &Ctx) -> Response {
    match s.identity().tokens(c.param("id")) {
        Ok(t) => Response::json(200, &t),
        Err(e) => failed(&e),
    }
}

fn mint_token<S: HasIdentity>(s: &S, c: &Ctx) -> Response {
    let parsed = json_body(c).and_then(|b| {
        let name = text_field(&b, "name")?.unwrap_or_default();
        let ttl = match text_field(&b, "ttl")? {
            Some(t) => Some(crate::auth::parse_duration(&t).map_err(|e| format!("ttl: {e}"))?),
            None => None,
        };
        let eternal = match b.get("eternal") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(e)) => *e,
            Some(other) => return Err(format!("eternal must be true or false, not {other}")),
        };
        Ok((name, ttl, eternal, role_of(b.get("role"), "role")?))
    });
    match parsed {
        Ok((name, ttl, eternal, role)) => {
            match s
                .identity()
                .mint_account_token(c.param("id"), &name, ttl, eternal, role, &actor(c))
            {
                Ok((meta, token)) => Response::json(200, &json!({"token": token, "token_meta": meta})),
                Err(e) => failed(&e),
            }
        }
        Err(m) => Response::error(400, &m),
    }
}

fn revoke_token<S: HasIdentity>(s: &S, c: &Ctx) -> Response {
    match s.identity().revoke_token(c.param("id"), c.param("token_id")) {
        Ok(()) => no_content(),
        Err(e) => failed(&e),
    }
}

/// Container Station's error body (code equal to the status).
fn cs_error(code: u16, message: &str) -> Response {
    Response::json(code, &json!({"error": {"code": code, "message": message}}))
}

fn cs_login<S: HasIdentity>(s: &S, c: &Ctx) -> Response {
    let id = s.identity();
    if let Err(e) = id.check_rate(client(c)) {
        return cs_error(429, &counted(id, &e).to_string());
    }
    let body = match json_body(c) {
        Ok(b) => b,
        Err(m) => return cs_error(400, &m),
    };
    let (user, pass) = match (text_field(&body, "username"), text_field(&body, "password")) {
        (Ok(Some(u)), Ok(Some(p))) => (u, p),
        (Err(m), _) | (_, Err(m)) => return cs_error(400, &m),
        _ => return cs_error(400, "username and password are required"),
    };
    match id.login(&user, &pass, client(c)) {
        Ok(session) => {
            let admin = id.verify(&session.access_token).is_ok_and(|cl| cl.is_admin());
            let now = crate::control::container_station::rfc3339_nanos(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
            );
            // Container Station's "2021-08-11 16:54:45".
            let logintime = now.get(..19).unwrap_or("").replace('T', " ");
            Response::json(
                200,
                &json!({"anonymous": false, "isAdmin": admin, "logintime": logintime, "username": user}),
            )
            .with_header(
                "Set-Cookie",
                set_cookie(
                    s,
                    &session.access_token,
                    Some(Duration::from_secs(session.expires_in).as_secs()),
                ),
            )
        }
        Err(e) => cs_error(counted(id, &e).status(), &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_name() {
        assert_eq!(cookie("a=1; neuwerk_auth=tok; b=2", COOKIE).as_deref(), Some("tok"));
        assert_eq!(cookie("neuwerk_auth=", COOKIE), None);
        assert_eq!(cookie("xneuwerk_auth=1", COOKIE), None);
    }
}
