//! The management API through its real listener, with a real HTTP client: health,
//! statistics, and the shared error behaviour (404, 405, 413, JSON errors).
//! Needs root (skipped without it unless TUNLOOM_REQUIRE_NETNS=1).

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};
use tunloom::netns::Netns;
use tunloom::testbed::{api_request, Proc, TempDir};

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

#[test]
fn management_api_answers_and_errors_in_json() {
    if !common::netns_or_skip("management_api_answers_and_errors_in_json") {
        return;
    }
    let pid = std::process::id();
    let ns = Netns::create(&format!("tl-api-{pid}")).unwrap();
    let dir = TempDir::new(&format!("tunloom-api-{pid}")).unwrap();
    let cfg = dir.0.join("t.toml");
    std::fs::write(
        &cfg,
        "[node]\nname = \"api-node\"\n[overlay]\nannounce = [\"198.19.5.0/24\"]\n",
    )
    .unwrap();
    let log = std::fs::File::create(dir.0.join("log")).unwrap();
    let _daemon = Proc::new(
        ns.command(
            common::exe().to_str().unwrap(),
            &[
                "run",
                "-c",
                cfg.to_str().unwrap(),
                "--state-dir",
                dir.0.join("state").to_str().unwrap(),
            ],
        )
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap(),
        "tunloom",
    );
    let get = |path: &str| api_request(&ns.name, 6786, "GET", path, None, &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while get("/health").is_err() {
        assert!(
            Instant::now() < deadline,
            "daemon did not come up: {}",
            std::fs::read_to_string(dir.0.join("log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let (status, body) = get("/health").unwrap();
    assert_eq!(status, 200);
    let h = json(&body);
    assert_eq!(
        (h["status"].as_str(), h["node"].as_str()),
        (Some("ok"), Some("api-node"))
    );

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
    assert_eq!(s["announced"], serde_json::json!(["198.19.5.0/24"]));
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
