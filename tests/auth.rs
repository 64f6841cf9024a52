//! Identity and access through the management listener with a real HTTP client:
//! Weka's login → call → refresh → call, a wrong password's 401 and the rate limit's
//! 429, token-login's cookie and cookie-authenticated calls, a readonly token's GET and
//! refused POST, expired/tampered/other-key/revoked/disabled tokens, a role above its
//! account, Container Station's login then a network call, and the offline mint.
//! Needs root (ignored without it unless TUNLOOM_REQUIRE_NETNS=1).

mod common;

use common::Needs;
use serde_json::{json, Value};
use tunloom_lab::testbed::{api_request, OneHost};

const NONE: &[(&str, &str)] = &[("Authorization", "")];

struct Api<'a> {
    ns: &'a str,
}

impl Api<'_> {
    fn call(&self, method: &str, path: &str, body: Option<Value>, headers: &[(&str, &str)]) -> (u16, Value, String) {
        let (s, b) = api_request(
            self.ns,
            6786,
            method,
            path,
            body.map(|b| b.to_string().into_bytes()),
            headers,
        )
        .unwrap();
        let text = String::from_utf8_lossy(&b).into_owned();
        (s, serde_json::from_str(&text).unwrap_or(Value::Null), text)
    }

    fn bearer(&self, method: &str, path: &str, body: Option<Value>, token: &str) -> (u16, Value) {
        let auth = format!("Bearer {token}");
        let (s, v, _) = self.call(method, path, body, &[("Authorization", auth.as_str())]);
        (s, v)
    }
}

/// The raw `Set-Cookie` of a response, read with a plain HTTP/1.1 exchange inside the
/// namespace (the test client does not show response headers).
fn set_cookie(ns: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let ns = ns.to_string();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    std::thread::spawn(move || {
        tunloom_lab::netns::enter(&ns).unwrap();
        let mut c = std::net::TcpStream::connect("127.0.0.1:6786").unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        c.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        let status = out.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let cookie = out
            .lines()
            .find_map(|l| {
                l.strip_prefix("Set-Cookie: ")
                    .or_else(|| l.strip_prefix("set-cookie: "))
            })
            .unwrap_or("")
            .trim()
            .to_string();
        (status, cookie)
    })
    .join()
    .unwrap()
}

/// An admin token for `sub` from the signing key in `state` (`tunloom auth token mint`).
fn mint(sub: &str, ttl: &str, state: &std::path::Path) -> String {
    let out = std::process::Command::new(common::exe())
        .args([
            "auth",
            "token",
            "mint",
            "--sub",
            sub,
            "--role",
            "admin",
            "--ttl",
            ttl,
            "--state-dir",
        ])
        .arg(state)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn identity_and_access_end_to_end() {
    let pw = "correct horse battery staple";
    let mut h = OneHost::create(
        "auth",
        &common::exe(),
        "[node]\nname = \"auth\"\n[auth]\nadmin_password_file = \"PWFILE\"\n",
    )
    .unwrap();
    // The admin password from a file the configuration names.
    let pwfile = h.dir.0.join("admin.pw");
    std::fs::write(&pwfile, format!("{pw}\n")).unwrap();
    let cfg = std::fs::read_to_string(h.config_path())
        .unwrap()
        .replace("PWFILE", pwfile.to_str().unwrap());
    std::fs::write(h.config_path(), cfg).unwrap();
    h.start().unwrap();
    let api = Api { ns: &h.ns.name };
    // A token that will have expired (past the 60 s skew) by the end of this test.
    let minted_at = std::time::Instant::now();
    let brief = mint("brief", "1s", &h.state_dir());

    // Public: health, readiness, the document. Everything else needs credentials.
    assert_eq!(api.call("GET", "/health", None, NONE).0, 200);
    assert_eq!(api.call("GET", "/api/v1/openapi.json", None, NONE).0, 200);
    let (s, v, _) = api.call("GET", "/api/v1/stats", None, NONE);
    assert_eq!((s, v["error"].as_str()), (401, Some("missing bearer token")));
    let (s, _, _) = api.call("GET", "/container-station/api/v1/networks", None, NONE);
    assert_eq!(s, 401, "the Container Station face needs credentials too");
    let (s, v, _) = api.call("GET", "/api/v1/stats?token=abc", None, NONE);
    assert_eq!(s, 401);
    assert!(v["error"].as_str().unwrap().contains("query string"), "{v}");

    // Weka: login → call → refresh → call.
    let (s, login, _) = api.call(
        "POST",
        "/api/v2/login",
        Some(json!({"username": "admin", "password": pw})),
        NONE,
    );
    assert_eq!(s, 200, "{login}");
    let d = &login["data"];
    assert_eq!(
        (d["token_type"].as_str(), d["expires_in"].as_u64()),
        (Some("Bearer"), Some(300))
    );
    assert_eq!(d["password_change_required"], false);
    let access = d["access_token"].as_str().unwrap().to_string();
    let refresh = d["refresh_token"].as_str().unwrap().to_string();
    let (s, cluster) = api.bearer("GET", "/api/v2/cluster", None, &access);
    assert_eq!(s, 200, "{cluster}");
    assert!(cluster["data"].is_object(), "{cluster}");
    let (s, again, _) = api.call(
        "POST",
        "/api/v2/login/refresh",
        Some(json!({"refresh_token": refresh})),
        NONE,
    );
    assert_eq!(s, 200, "{again}");
    let access2 = again["data"]["access_token"].as_str().unwrap().to_string();
    assert_eq!(api.bearer("GET", "/api/v1/stats", None, &access2).0, 200);
    let (s, bad, _) = api.call(
        "POST",
        "/api/v2/login/refresh",
        Some(json!({"refresh_token": "nope"})),
        NONE,
    );
    assert_eq!((s, bad), (401, json!({"data": "Unauthorized"})));

    // Neuwerk: token-login sets the cookie; the cookie authenticates; logout clears it.
    let (s, cookie) = set_cookie(
        &h.ns.name,
        "/api/v1/auth/token-login",
        &json!({"token": format!("Bearer {access}")}).to_string(),
    );
    assert_eq!(s, 200);
    assert!(cookie.starts_with(&format!("neuwerk_auth={access}")), "{cookie}");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    let jar = format!("neuwerk_auth={access}");
    let (s, who, _) = api.call("GET", "/api/v1/auth/whoami", None, &[("Cookie", jar.as_str())]);
    assert_eq!((s, who["sub"].as_str()), (200, Some("admin")), "{who}");
    assert_eq!(who["roles"], json!(["admin"]));
    let (s, cleared) = set_cookie(&h.ns.name, "/api/v1/auth/logout", "");
    assert_eq!(s, 204);
    assert!(cleared.contains("Max-Age=0"), "{cleared}");

    // Service accounts: a readonly account's token reads but may not write.
    let (s, sa) = api.bearer(
        "POST",
        "/api/v1/service-accounts",
        Some(json!({"name": "ci", "description": "robot", "role": "readonly"})),
        &access2,
    );
    assert_eq!(s, 200, "{sa}");
    let sa_id = sa["id"].as_str().unwrap().to_string();
    let (s, minted) = api.bearer(
        "POST",
        &format!("/api/v1/service-accounts/{sa_id}/tokens"),
        Some(json!({"name": "ci", "ttl": "24h", "role": "readonly"})),
        &access2,
    );
    assert_eq!(s, 200, "{minted}");
    let ro = minted["token"].as_str().unwrap().to_string();
    assert_eq!(minted["token_meta"]["status"], "active");
    assert_eq!(api.bearer("GET", "/api/v1/stats", None, &ro).0, 200);
    let (s, refused) = api.bearer(
        "POST",
        "/container-station/api/v1/networks",
        Some(json!({"name": "x"})),
        &ro,
    );
    assert_eq!(
        (s, refused["error"].as_str()),
        (403, Some("admin role required")),
        "{refused}"
    );
    // A role above the account's, and ttl with eternal: 400.
    let path = format!("/api/v1/service-accounts/{sa_id}/tokens");
    assert_eq!(
        api.bearer("POST", &path, Some(json!({"name": "up", "role": "admin"})), &access2)
            .0,
        400
    );
    assert_eq!(
        api.bearer(
            "POST",
            &path,
            Some(json!({"name": "both", "ttl": "1h", "eternal": true})),
            &access2
        )
        .0,
        400
    );
    // The list never shows the raw token.
    let (s, list) = api.bearer("GET", &path, None, &access2);
    assert_eq!(s, 200);
    assert!(!list.to_string().contains(&ro), "{list}");
    // Revoked: the very next request is 401.
    let tid = minted["token_meta"]["id"].as_str().unwrap().to_string();
    assert_eq!(api.bearer("DELETE", &format!("{path}/{tid}"), None, &access2).0, 204);
    assert_eq!(api.bearer("GET", "/api/v1/stats", None, &ro).0, 401);
    // A disabled account's tokens: 401 at once.
    let (_, m2) = api.bearer("POST", &path, Some(json!({"name": "ci2", "eternal": true})), &access2);
    let eternal = m2["token"].as_str().unwrap().to_string();
    assert_eq!(api.bearer("GET", "/api/v1/stats", None, &eternal).0, 200);
    assert_eq!(
        api.bearer("DELETE", &format!("/api/v1/service-accounts/{sa_id}"), None, &access2)
            .0,
        204
    );
    assert_eq!(api.bearer("GET", "/api/v1/stats", None, &eternal).0, 401);

    // Tampered, and from another node's key.
    let mut tampered = access2.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(api.bearer("GET", "/api/v1/stats", None, &tampered).0, 401);
    let other = h.dir.0.join("other-state");
    std::fs::create_dir_all(&other).unwrap();
    let foreign = mint("mallory", "10m", &other);
    assert_eq!(api.bearer("GET", "/api/v1/stats", None, &foreign).0, 401);
    // The offline mint works while the daemon runs on that state directory.
    // (Expiry past the 60 s skew is unit-tested with an injected clock.)
    let short = mint("late", "1s", &h.state_dir());
    assert_eq!(
        api.bearer("GET", "/api/v1/stats", None, &short).0,
        200,
        "a fresh offline token works"
    );

    // Container Station: login, then a network call with the session cookie.
    let (s, cs_cookie) = set_cookie(
        &h.ns.name,
        "/container-station/api/v1/login",
        &json!({"username": "admin", "password": pw}).to_string(),
    );
    assert_eq!(s, 200);
    let jar = cs_cookie.split(';').next().unwrap().to_string();
    let (s, nets, _) = api.call(
        "GET",
        "/container-station/api/v1/networks",
        None,
        &[("Cookie", jar.as_str())],
    );
    assert_eq!(s, 200, "{nets}");
    let (s, body, _) = api.call(
        "POST",
        "/container-station/api/v1/login",
        Some(json!({"username": "admin", "password": pw})),
        NONE,
    );
    assert_eq!(s, 200);
    assert_eq!(
        (
            body["anonymous"].as_bool(),
            body["isAdmin"].as_bool(),
            body["username"].as_str()
        ),
        (Some(false), Some(true), Some("admin"))
    );

    // A wrong password: 401; 20 failures block the client with 429.
    let wrong = json!({"username": "admin", "password": "nope"});
    let (s, v, _) = api.call("POST", "/api/v2/login", Some(wrong.clone()), NONE);
    assert_eq!((s, v), (401, json!({"data": "Unauthorized"})));
    let mut last = 0;
    for _ in 0..25 {
        last = api.call("POST", "/api/v2/login", Some(wrong.clone()), NONE).0;
        if last == 429 {
            break;
        }
    }
    assert_eq!(last, 429, "the rate limit holds");
    let (s, _, _) = api.call(
        "POST",
        "/api/v2/login",
        Some(json!({"username": "admin", "password": pw})),
        NONE,
    );
    assert_eq!(s, 429, "even the right password waits out the block");

    // Expired: 1 s of life plus the 60 s of allowed skew, then 401 saying so.
    assert_eq!(
        api.bearer("GET", "/api/v1/stats", None, &brief).0,
        200,
        "still within its life and the skew"
    );
    let end = minted_at + std::time::Duration::from_secs(63);
    std::thread::sleep(end.saturating_duration_since(std::time::Instant::now()));
    let (s, v) = api.bearer("GET", "/api/v1/stats", None, &brief);
    assert_eq!((s, v["error"].as_str()), (401, Some("jwt expired")), "{v}");
    h.stop(false);
}

fn main() -> std::process::ExitCode {
    common::main(&[(
        "identity_and_access_end_to_end",
        Needs::Netns,
        identity_and_access_end_to_end,
    )])
}
