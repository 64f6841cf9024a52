//! The management API through its real listener, with a real HTTP client: health,
//! statistics, and the shared error behaviour (404, 405, 413, JSON errors).
//! Needs root (ignored without it unless TUNLOOM_REQUIRE_NETNS=1).

mod common;

use common::Needs;

use tunloom_lab::testbed::{api_request, OneHost};

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

fn management_api_answers_and_errors_in_json() {
    let mut h = OneHost::create(
        "api",
        &common::exe(),
        "[node]\nname = \"api-node\"\n[overlay]\nannounce = [\"198.19.5.0/24\"]\n",
    )
    .unwrap();
    h.start().unwrap();
    let ns = &h.ns;
    let get = |path: &str| api_request(&ns.name, 6786, "GET", path, None, &[]);

    let (status, body) = get("/health").unwrap();
    assert_eq!(status, 200);
    let h = json(&body);
    assert_eq!(
        (h["status"].as_str(), h["node"].as_str()),
        (Some("ok"), Some("api-node"))
    );

    // Ready: the store is open, the workers are on the latest snapshot, no peers.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let ready = loop {
        let (status, body) = get("/ready").unwrap();
        if status == 200 || std::time::Instant::now() > deadline {
            break (status, json(&body));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(ready.0, 200, "{}", ready.1);
    assert_eq!(ready.1["ready"], true);
    let names: Vec<&str> = ready.1["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["store", "dataplane", "peers"]);

    let (status, body) = get("/api/v1/stats").unwrap();
    assert_eq!(status, 200);
    let s = json(&body);
    let workers = s["workers"].as_array().unwrap();
    assert_eq!(workers.len() as u64, s["dataplane"]["workers"].as_u64().unwrap());
    for w in workers {
        assert!(w["tid"].as_i64().unwrap() > 0);
        assert!(w["counters"]["inside_packets"].is_u64() && w["drops"]["spoofed"].is_u64());
        assert!(w["batch_latency"]["p999_us"].is_number());
    }
    for key in ["p50_us", "p99_us", "p999_us"] {
        assert!(s["total"]["batch_latency"][key].is_number(), "{key}");
    }
    assert_eq!(s["announced"]["prefixes"], serde_json::json!(["198.19.5.0/24"]));
    assert_eq!(s["announced"]["blocks"], serde_json::json!(["10.32.0.0/12"]));
    assert!(s["peers"].as_array().unwrap().is_empty());
    assert!(s["dataplane"]["offloads"]["tun_tso"].is_boolean());

    // Unknown path: 404 with a JSON error that names it.
    let (status, body) = get("/api/v1/nope").unwrap();
    assert_eq!(status, 404);
    assert!(json(&body)["error"].as_str().unwrap().contains("/api/v1/nope"));
    // Wrong method: 405, with Allow.
    let (status, body) = api_request(&ns.name, 6786, "DELETE", "/api/v1/stats", None, &[]).unwrap();
    assert_eq!(status, 405);
    assert!(json(&body)["error"].as_str().unwrap().contains("allowed: GET"));
    // A 3 MiB body: 413, without the daemon reading it all.
    let (status, body) = api_request(&ns.name, 6786, "POST", "/api/v1/stats", Some(vec![b'x'; 3 << 20]), &[]).unwrap();
    assert_eq!(status, 413);
    assert!(json(&body)["error"].as_str().unwrap().contains("limit"));
    // The OpenAPI document of every face.
    let (status, body) = get("/api/v1/openapi.json").unwrap();
    assert_eq!(status, 200);
    let doc = json(&body);
    assert_eq!(doc["openapi"], "3.0.3");
    assert!(doc["paths"]["/ip/{containerId}/{subnet}"]["put"].is_object());
    // Still serving.
    assert_eq!(get("/health").unwrap().0, 200);
}

/// A configured peer that never answers does not make this node unready (one dead
/// host must not take the others out of service): 200, and the detail names it.
fn ready_names_a_peer_that_never_answered_without_failing() {
    let config = "[node]\nname = \"lonely\"\n[[peers]]\naddress = \"198.18.0.99\"\n";
    let mut h = OneHost::create("ready", &common::exe(), config).unwrap();
    h.start().unwrap();
    let (status, body) = api_request(&h.ns.name, 6786, "GET", "/ready", None, &[]).unwrap();
    let r = json(&body);
    assert_eq!(status, 200, "{r}");
    let peers = &r["checks"][2];
    assert_eq!(
        (peers["name"].as_str(), peers["ok"].as_bool()),
        (Some("peers"), Some(true))
    );
    assert!(
        peers["detail"].as_str().unwrap().contains("unknown: 198.18.0.99"),
        "{r}"
    );
}

/// The Weave face beyond loopback, opted in: it serves, and the log says loudly that
/// it has no authentication. (Without the opt-in the configuration is refused:
/// tests/cli.rs.)
fn the_weave_face_beyond_loopback_needs_the_opt_in_and_says_so() {
    let config = "[api]\nweave_listen = \"0.0.0.0:6784\"\nallow_unauthenticated = true\n";
    let mut h = OneHost::create("unauth", &common::exe(), config).unwrap();
    h.start().unwrap();
    let (status, _) = h.weave("GET", "/status", None).unwrap();
    assert_eq!(status, 200);
    let log = std::fs::read_to_string(h.dir.0.join("tunloom.log")).unwrap();
    assert!(log.contains("HAS NO AUTHENTICATION"), "{log}");
}

/// `GET /metrics` on the metrics listener: the text format promtool accepts, the same
/// figures as the stats document, every family there.
fn prometheus_metrics_match_the_stats_and_pass_promtool() {
    let mut h = OneHost::create("metrics", &common::exe(), "[node]\nname = \"metrics-node\"\n").unwrap();
    h.start().unwrap();
    let ns = &h.ns;
    let (status, body) = api_request(&ns.name, 6782, "GET", "/metrics", None, &[]).unwrap();
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    for line in [
        "# TYPE tunloom_dataplane_inside_packets_total counter",
        "# TYPE tunloom_dataplane_drops_total counter",
        "# TYPE tunloom_dataplane_batch_duration_seconds histogram",
        "tunloom_dataplane_batch_duration_seconds_bucket{le=\"+Inf\"}",
        "# TYPE tunloom_control_tx_messages_total counter",
        "tunloom_peers{state=\"up\"} 0",
        "tunloom_store_failed 0",
        "# TYPE tunloom_api_request_duration_seconds histogram",
        "tunloom_api_request_duration_seconds_bucket{code_class=\"4xx\",face=\"weave\",le=\"+Inf\"}",
        "# TYPE tunloom_auth_missing_token_total counter",
    ] {
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }
    assert!(text.contains("tunloom_dataplane_drops_total{reason=\"spoofed\",worker=\"0\"} 0"));
    let (_, stats) = api_request(&ns.name, 6786, "GET", "/api/v1/stats", None, &[]).unwrap();
    let range = json(&stats)["ipam"]["range_num_ips"].as_u64().unwrap();
    // The scrape above was timed into the same histograms the stats read.
    assert!(
        json(&stats)["api"]["metrics"]["by_class"]["2xx"].as_u64().unwrap() >= 1,
        "{}",
        String::from_utf8_lossy(&stats)
    );
    assert!(json(&stats)["auth"]["bad_credentials"].is_u64());
    assert!(
        text.contains(&format!("tunloom_ipam_range_addresses {range}\n")),
        "{text}"
    );
    // promtool (Debian's prometheus package) parses and lints the exposition.
    use std::io::Write;
    let mut p = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs");
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = tunloom_lab::netns::wait_limited(p, std::time::Duration::from_secs(30)).unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs curl with `args` inside the host's namespace: (exit code, stdout, stderr).
fn curl(h: &OneHost, args: &[&str]) -> (i32, String, String) {
    let child =
        h.ns.command("curl", args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("curl runs");
    let out = tunloom_lab::netns::wait_limited(child, std::time::Duration::from_secs(20)).unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The line of the daemon's log that names the certificate, and the CA's
/// fingerprint in it.
fn ca_fingerprint_logged(h: &OneHost, nth: usize) -> String {
    let log = std::fs::read_to_string(h.dir.0.join("tunloom.log")).unwrap();
    let line = log
        .lines()
        .filter(|l| l.contains("api: TLS with"))
        .nth(nth)
        .unwrap_or_else(|| panic!("no TLS line #{nth} in:\n{log}"));
    let fp = line.rsplit("SHA-256 ").next().unwrap();
    fp.split(')').next().unwrap().to_string()
}

/// `api.tls = "self-signed"`: curl trusting the CA in the state directory reaches
/// /health over https, plain http:// gets a 400 that says to use https, the CA and
/// certificate are reused after a restart, `tunloom check` shows the CA, and a
/// client that opens a connection and sends nothing is cut off by the head deadline.
fn tls_self_signed_serves_https_and_keeps_its_certificate() {
    let config = "[node]\nname = \"tls-node\"\n[api]\ntls = \"self-signed\"\nheader_timeout_ms = 500\n";
    let mut h = OneHost::create("tls", &common::exe(), config).unwrap();
    h.start_tls().unwrap();
    let ca = h.state_dir().join("tls/ca.pem");
    let ca_arg = ca.to_str().unwrap();
    let (code, body, err) = curl(&h, &["-sS", "--cacert", ca_arg, "https://127.0.0.1:6786/health"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(body.as_bytes())["node"], "tls-node");
    // By name too: the certificate names localhost.
    let (code, _, err) = curl(&h, &["-sSf", "--cacert", ca_arg, "https://localhost:6786/health"]);
    assert_eq!(code, 0, "{err}");
    // Without the CA: refused by curl.
    let (code, _, err) = curl(&h, &["-sS", "https://127.0.0.1:6786/health"]);
    assert_eq!(code, 60, "curl without --cacert: {err}");
    // Plain HTTP: a clear failure.
    let (code, body, err) = curl(&h, &["-sS", "-w", "\n%{http_code}", "http://127.0.0.1:6786/health"]);
    assert_eq!(code, 0, "{err}");
    assert!(body.ends_with("\n400") && body.contains("use https://"), "{body}");
    let (code, _, _) = curl(&h, &["-sSf", "http://127.0.0.1:6786/health"]);
    assert_eq!(code, 22);

    // The key files are the daemon's alone.
    use std::os::unix::fs::PermissionsExt;
    for k in ["tls/ca.key", "tls/key.pem"] {
        let mode = std::fs::metadata(h.state_dir().join(k)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{k}");
    }

    // A client that connects and sends nothing is closed after the head deadline.
    let ns = h.ns.name.clone();
    let took = common::in_ns(&ns, || {
        use std::io::Read;
        let mut c = std::net::TcpStream::connect("127.0.0.1:6786").unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        let t0 = std::time::Instant::now();
        let mut b = [0u8; 64];
        let n = c.read(&mut b).unwrap_or(0);
        assert_eq!(n, 0, "the server sent something to a client that said nothing");
        t0.elapsed()
    });
    assert!(
        took >= std::time::Duration::from_millis(400) && took < std::time::Duration::from_secs(5),
        "{took:?}"
    );

    // Restart: the same CA and certificate.
    let fp = ca_fingerprint_logged(&h, 0);
    let cert = std::fs::read(h.state_dir().join("tls/cert.pem")).unwrap();
    h.stop(false);
    h.start_tls().unwrap();
    assert_eq!(ca_fingerprint_logged(&h, 1), fp);
    assert_eq!(std::fs::read(h.state_dir().join("tls/cert.pem")).unwrap(), cert);
    let (code, _, err) = curl(&h, &["-sSf", "--cacert", ca_arg, "https://127.0.0.1:6786/health"]);
    assert_eq!(code, 0, "{err}");

    // tunloom check shows the CA to trust and the same fingerprint.
    let out = std::process::Command::new(common::exe())
        .args(["check", "-c"])
        .arg(h.config_path())
        .arg("--state-dir")
        .arg(h.state_dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(ca_arg) && text.contains(&fp), "{text}");
}

/// Neuwerk's runtime routes (seed 003): performance mode read, set and kept across a
/// crash; the stats document's top-level sections; and a sysdump that is gzip of one
/// JSON document with the configuration redacted (the control secret nowhere in it).
fn performance_mode_stats_sections_and_sysdump() {
    let config = "[node]\nname = \"ops-node\"\n[control]\nsecret = \"s3cret-s3cret\"\n";
    let mut h = OneHost::create("ops", &common::exe(), config).unwrap();
    h.start().unwrap();
    let req = |h: &OneHost, method: &str, path: &str, body: Option<&str>| {
        let (status, body) =
            api_request(&h.ns.name, 6786, method, path, body.map(|b| b.as_bytes().to_vec()), &[]).unwrap();
        (status, body)
    };
    let mode = "/api/v1/settings/performance-mode";
    let (status, body) = req(&h, "GET", mode, None);
    assert_eq!(status, 200);
    assert_eq!(json(&body), serde_json::json!({"enabled": true, "source": "default"}));
    let (status, body) = req(&h, "PUT", mode, Some(r#"{"enabled": false}"#));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body), serde_json::json!({"enabled": false, "source": "api"}));
    let (status, _) = req(&h, "PUT", mode, Some(r#"{"enabled": "no"}"#));
    assert_eq!(status, 400);
    // Answered means durable: a crash right after keeps it.
    h.stop(true);
    h.start().unwrap();
    let (status, body) = req(&h, "GET", mode, None);
    assert_eq!(status, 200);
    assert_eq!(json(&body), serde_json::json!({"enabled": false, "source": "api"}));

    let (status, body) = req(&h, "GET", "/api/v1/stats", None);
    assert_eq!(status, 200);
    let s = json(&body);
    for section in [
        "dataplane",
        "dns",
        "tls",
        "dhcp",
        "cluster",
        "workers",
        "total",
        "peers",
    ] {
        assert!(!s[section].is_null(), "{section} missing: {s}");
    }
    assert!(s["dataplane"]["packets"]["from_tun"].is_u64() && s["dataplane"]["drops"].is_u64());
    assert_eq!(s["tls"]["enabled"], false);
    assert_eq!(s["dhcp"]["enabled"], false);
    assert_eq!(s["cluster"]["node"], "ops-node");
    assert_eq!(s["cluster"]["peers_up"], 0);

    let (status, body) = req(&h, "POST", "/api/v1/support/sysdump/node", None);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(&body[..2], &[0x1f, 0x8b], "not gzip");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut text).unwrap();
    assert!(!text.contains("s3cret"), "the control secret is in the sysdump");
    let d = json(text.as_bytes());
    assert_eq!(d["format"], "tunloom-sysdump/1");
    assert_eq!(d["config"]["control"]["secret"], "<redacted>");
    assert_eq!(d["config"]["node"]["name"], "ops-node");
    assert_eq!(d["stats"]["cluster"]["node"], "ops-node");
    assert!(d["peers"].is_array());
    assert_eq!(d["performance_mode"]["enabled"], false);
    let lines = d["log"]["lines"].as_array().unwrap();
    assert!(
        lines.iter().any(|l| l.as_str().unwrap().contains("tunloom up")),
        "the start line is not among the recent log lines: {lines:?}"
    );
}

fn main() -> std::process::ExitCode {
    common::main(&[
        (
            "management_api_answers_and_errors_in_json",
            Needs::Netns,
            management_api_answers_and_errors_in_json,
        ),
        (
            "ready_names_a_peer_that_never_answered_without_failing",
            Needs::Netns,
            ready_names_a_peer_that_never_answered_without_failing,
        ),
        (
            "the_weave_face_beyond_loopback_needs_the_opt_in_and_says_so",
            Needs::Netns,
            the_weave_face_beyond_loopback_needs_the_opt_in_and_says_so,
        ),
        (
            "tls_self_signed_serves_https_and_keeps_its_certificate",
            Needs::NetnsWith(&["curl"]),
            tls_self_signed_serves_https_and_keeps_its_certificate,
        ),
        (
            "performance_mode_stats_sections_and_sysdump",
            Needs::Netns,
            performance_mode_stats_sections_and_sysdump,
        ),
        (
            "prometheus_metrics_match_the_stats_and_pass_promtool",
            Needs::NetnsWith(&["promtool"]),
            prometheus_metrics_match_the_stats_and_pass_promtool,
        ),
    ])
}
