//! The Weave Net face, driven over HTTP through its real listener: every route and
//! status code of the seed, IPAM semantics, bad input, restarts, a crash during 1,000
//! concurrent allocations, and the synchronous promise of `/connect` and `/expose`.
//! Needs root (ignored without it unless TUNLOOM_REQUIRE_NETNS=1).

mod common;

use common::Needs;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tunloom_lab::netns::Netns;
use tunloom_lab::testbed::{HostSpec, OneHost, TwoHosts, BLOCK, OVERLAY, UNDERLAY};

const CONFIG: &str = r#"
[node]
name = "6e:1f:a5:00:00:01"
nickname = "weave-test"
[dns]
upstream = ["198.18.9.9"]
"#;

fn host(tag: &str) -> OneHost {
    let mut h = OneHost::create(tag, &common::exe(), CONFIG).unwrap();
    h.start().unwrap();
    h
}

/// (status, body) of a Weave request; panics with the daemon's log on I/O errors.
fn w(h: &OneHost, method: &str, path: &str, form: Option<&str>) -> (u16, String) {
    h.weave(method, path, form)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", h.log()))
}

fn every_route_of_the_seed_answers_as_weave_does() {
    let mut h = host("weave");

    // Status: the seed's StatusResponse.
    let (status, body) = w(&h, "GET", "/status", None);
    assert_eq!(status, 200, "{body}");
    let s: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(s["version"].is_string());
    assert_eq!(s["router"]["encryption"], false);
    assert_eq!(s["router"]["peers"][0]["name"], "6e:1f:a5:00:00:01");
    assert_eq!(s["router"]["peers"][0]["nick_name"], "weave-test");
    assert!(s["router"]["connections"].is_array());
    assert_eq!(s["ipam"]["status"], "ready");
    assert_eq!(s["ipam"]["subnet"], "10.32.0.0/12");
    assert_eq!(s["ipam"]["range_num_ips"], 1 << 20);
    assert_eq!(s["ipam"]["owned_num_ips"], 1 << 20);
    assert_eq!(s["dns"]["domain"], "weave.local.");
    assert_eq!(s["dns"]["upstream"], serde_json::json!(["198.18.9.9"]));

    assert_eq!(
        w(&h, "GET", "/ipinfo/defaultsubnet", None),
        (200, "10.32.0.0/12".into())
    );
    // A log line per request: face, client, method, path, status, time.
    let log = h.log();
    assert!(
        log.lines()
            .any(|l| l.contains("weave: 127.0.0.1:") && l.contains(" GET /ipinfo/defaultsubnet 200 ")),
        "{log}"
    );
    assert_eq!(w(&h, "GET", "/domain", None), (200, "weave.local.".into()));

    // Allocation: network and gateway are never handed out; idempotent per container.
    assert_eq!(w(&h, "POST", "/ip/c1", None), (200, "10.32.0.2/12".into()));
    assert_eq!(w(&h, "POST", "/ip/c1", None), (200, "10.32.0.2/12".into()));
    assert_eq!(w(&h, "POST", "/ip/c2", None), (200, "10.32.0.3/12".into()));
    assert_eq!(w(&h, "GET", "/ip/c1", None), (200, "10.32.0.2/12".into()));
    // In a subnet (the path value carries a slash).
    assert_eq!(w(&h, "POST", "/ip/c1/10.40.0.0/16", None), (200, "10.40.0.2/16".into()));
    assert_eq!(w(&h, "POST", "/ip/c1/10.40.0.0/16", None), (200, "10.40.0.2/16".into()));
    // GET lists every address inside the default subnet, space-separated (as Weave).
    assert_eq!(w(&h, "GET", "/ip/c1", None), (200, "10.32.0.2/12 10.40.0.2/16".into()));
    // Claims.
    assert_eq!(w(&h, "PUT", "/ip/c3/10.32.0.9/12", None).0, 200);
    assert_eq!(
        w(&h, "PUT", "/ip/c3/10.32.0.9/12", None).0,
        200,
        "claiming twice is fine"
    );
    assert_eq!(w(&h, "GET", "/ip/c3", None), (200, "10.32.0.9/12".into()));
    // check-alive: no namespace or process of that name: cancelled, nothing allocated.
    let alive = format!("tl-alive-{}", std::process::id());
    assert_eq!(
        w(&h, "POST", &format!("/ip/{alive}?check-alive=true"), None),
        (200, "cancelled".into())
    );
    assert_eq!(w(&h, "GET", &format!("/ip/{alive}"), None).0, 404);
    {
        let _ns = Netns::create(&alive).unwrap();
        let (status, addr) = w(&h, "POST", &format!("/ip/{alive}"), Some("check-alive=true"));
        assert_eq!(status, 200);
        assert!(addr.starts_with("10.32.0."), "{addr}");
        let (status, _) = w(&h, "PUT", &format!("/ip/{alive}/10.32.0.77/12?check-alive=true"), None);
        assert_eq!(status, 200);
    }
    // Release.
    assert_eq!(w(&h, "DELETE", "/ip/c2", None).0, 204);
    assert_eq!(w(&h, "DELETE", "/ip/c2", None).0, 404);
    assert_eq!(w(&h, "GET", "/ip/c2", None).0, 404);

    // DNS names.
    assert_eq!(w(&h, "PUT", "/name/c1/10.32.0.2", Some("fqdn=app.weave.local.")).0, 200);
    assert_eq!(w(&h, "PUT", "/name/c1/10.32.0.2", Some("fqdn=app.weave.local.")).0, 200);
    assert_eq!(w(&h, "DELETE", "/name/c1/10.32.0.2", None).0, 200);
    assert_eq!(w(&h, "DELETE", "/name/c1/10.32.0.2", None).0, 404);
    assert_eq!(w(&h, "PUT", "/name/c3/10.32.0.9", Some("fqdn=db.weave.local")).0, 200);

    // Peers and exposure.
    assert_eq!(w(&h, "DELETE", "/peer/no-such-peer", None).0, 404);
    let (status, _) = w(&h, "POST", "/connect", Some("peer=198.18.0.99&peer=198.18.0.98:7000"));
    assert_eq!(status, 200);
    assert_eq!(w(&h, "POST", "/expose/10.32.0.100/12", None).0, 200);
    // The seed's own example: the default network's gateway. The host gets it, and
    // tunloom keeps answering echo requests and DNS at it for the overlay.
    assert_eq!(w(&h, "POST", "/expose/10.32.0.1/12", None).0, 200);
    let shown =
        h.ns.run("ip", &["-o", "addr", "show", "dev", "tl0"], Duration::from_secs(5))
            .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("10.32.0.100/12") && shown.contains("10.32.0.1/12"),
        "{shown}"
    );
    let (status, body) = w(&h, "DELETE", "/peer/198.18.0.98", None);
    assert_eq!((status, body.as_str()), (200, "0 IPs taken over from 198.18.0.98\n"));
    let s: serde_json::Value = serde_json::from_str(&w(&h, "GET", "/status", None).1).unwrap();
    let conns: Vec<&str> = s["router"]["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["address"].as_str().unwrap())
        .collect();
    assert_eq!(conns, vec!["198.18.0.99:6783"]);

    // Restart: everything comes back.
    h.stop(false);
    h.start().unwrap();
    assert_eq!(w(&h, "GET", "/ip/c1", None), (200, "10.32.0.2/12 10.40.0.2/16".into()));
    assert_eq!(w(&h, "GET", "/ip/c3", None), (200, "10.32.0.9/12".into()));
    assert_eq!(w(&h, "POST", "/ip/c1/10.40.0.0/16", None), (200, "10.40.0.2/16".into()));
    assert_eq!(w(&h, "GET", "/ip/c2", None).0, 404);
    assert_eq!(
        w(&h, "DELETE", "/name/c3/10.32.0.9", None).0,
        200,
        "the DNS record survived"
    );
    let shown =
        h.ns.run("ip", &["-o", "addr", "show", "dev", "tl0"], Duration::from_secs(5))
            .unwrap();
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("10.32.0.100/12"),
        "exposed again"
    );
    let s: serde_json::Value = serde_json::from_str(&w(&h, "GET", "/status", None).1).unwrap();
    assert_eq!(
        s["router"]["connections"][0]["address"], "198.18.0.99:6783",
        "peers to connect to survived"
    );
    // A new container does not get an address someone holds.
    let (_, a) = w(&h, "POST", "/ip/c4", None);
    assert!(
        !["10.32.0.2/12", "10.32.0.9/12", "10.32.0.100/12"].contains(&a.as_str()),
        "{a}"
    );

    // `weave hide`: releasing weave:expose takes the address off the device and
    // frees it for containers.
    assert_eq!(w(&h, "DELETE", "/ip/weave:expose", None).0, 204);
    let shown =
        h.ns.run("ip", &["-o", "addr", "show", "dev", "tl0"], Duration::from_secs(5))
            .unwrap();
    assert!(
        !String::from_utf8_lossy(&shown.stdout).contains("10.32.0.100/12"),
        "hidden"
    );
    assert_eq!(w(&h, "DELETE", "/ip/weave:expose", None).0, 404);
    assert_eq!(w(&h, "PUT", "/ip/c5/10.32.0.100/12", None).0, 200);
}

fn the_readme_curl_example_runs() {
    assert!(common::has("curl"), "needs curl (scripts/setup installs it)");
    let h = host("weavecurl");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/weave-curl.sh");
    let out = h.ns.run("bash", &[script, "ctr-1"], Duration::from_secs(30));
    let out = out.unwrap_or_else(|e| panic!("{e}\n{}", h.log()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("container ctr-1: 10.32.0.2/12"), "{text}");
    assert!(
        text.contains("HTTP 400: 10.32.0.200 is already allocated to container ctr-1-sidecar"),
        "{text}"
    );
    assert!(text.contains("released ctr-1"), "{text}");
}

fn bad_requests_get_the_right_4xx_and_say_why() {
    let h = host("weavebad");
    assert_eq!(w(&h, "PUT", "/ip/holder/10.32.0.20/12", None).0, 200);
    let cases: &[(&str, &str, Option<&str>, u16, &str)] = &[
        ("POST", "/ip/c1/10.32.0.0/99", None, 400, "invalid subnet"),
        ("POST", "/ip/c1/not-a-cidr", None, 400, "invalid subnet"),
        ("PUT", "/ip/c1/10.99.0.5/12", None, 400, "outside the allocation range"),
        ("POST", "/ip/c1/10.64.0.0/16", None, 400, "outside the allocation range"),
        (
            "PUT",
            "/ip/c1/10.32.0.20/12",
            None,
            400,
            "already allocated to container holder",
        ),
        ("PUT", "/ip/c1/10.32.0.1/12", None, 400, "gateway"),
        ("PUT", "/ip/c1/10.47.255.255/12", None, 400, "broadcast"),
        ("POST", "/ip/c1/10.32.0.0/31", None, 400, "too small"),
        (
            "POST",
            "/ip/c1/10.40.0.5/16",
            None,
            400,
            "bits set after the network prefix (did you mean 10.40.0.0/16?)",
        ),
        ("DELETE", "/ip/unknown-container", None, 404, "holds no addresses"),
        ("GET", "/ip/unknown-container", None, 404, "no address"),
        ("POST", "/connect", None, 400, "peer is required"),
        (
            "POST",
            "/connect",
            Some("peer=not..an..address!"),
            400,
            "invalid peer address",
        ),
        (
            "POST",
            "/connect",
            Some("peer=198.18.0.9&replace=perhaps"),
            400,
            "replace must be",
        ),
        ("POST", "/expose/10.32.0.5", None, 400, "invalid CIDR"),
        ("POST", "/expose/banana", None, 400, "invalid CIDR"),
        (
            "POST",
            "/expose/10.32.0.20/12",
            None,
            400,
            "allocated to container holder",
        ),
        ("PUT", "/name/c1/10.32.0.2", None, 400, "fqdn is required"),
        (
            "PUT",
            "/name/c1/10.32.0.2",
            Some("fqdn=bad..name"),
            400,
            "not a valid domain name",
        ),
        (
            "PUT",
            "/name/c1/banana",
            Some("fqdn=a.weave.local"),
            400,
            "invalid IP address",
        ),
        ("DELETE", "/name/c1/10.32.0.2", None, 404, "no DNS record"),
        ("DELETE", "/peer/nobody", None, 404, "no peer"),
        ("GET", "/nope", None, 404, "no such endpoint"),
        ("PATCH", "/ip/c1", None, 405, "not allowed"),
        ("POST", "/status", None, 405, "allowed: GET"),
    ];
    for (method, path, form, want, says) in cases {
        let (status, body) = w(&h, method, path, *form);
        assert_eq!(status, *want, "{method} {path} {form:?}: {body}");
        assert!(body.contains(says), "{method} {path}: {body:?} does not say {says:?}");
    }
    // Malformed forms: not a form, not UTF-8.
    let json = [("Content-Type", "application/json")];
    let (status, body) = tunloom_lab::testbed::api_request(
        &h.ns.name,
        6784,
        "POST",
        "/connect",
        Some(b"{\"peer\":1}".to_vec()),
        &json,
    )
    .unwrap();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let (status, _) = tunloom_lab::testbed::api_request(
        &h.ns.name,
        6784,
        "PUT",
        "/name/c1/10.32.0.2",
        Some(vec![0xff, 0xfe, 0x00]),
        &form,
    )
    .unwrap();
    assert_eq!(status, 400);
    // A 3 MiB body: 413.
    let (status, body) =
        tunloom_lab::testbed::api_request(&h.ns.name, 6784, "POST", "/connect", Some(vec![b'a'; 3 << 20]), &form)
            .unwrap();
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    // After all that, the node still answers.
    assert_eq!(w(&h, "POST", "/ip/after", None).0, 200);

    // A full default subnet: 503, as the seed says, and why.
    let mut small = OneHost::create(
        "weavefull",
        &common::exe(),
        &format!("{CONFIG}[ipam]\ndefault_subnet = \"10.32.0.0/30\"\n"),
    )
    .unwrap();
    small.start().unwrap();
    assert_eq!(w(&small, "POST", "/ip/only", None), (200, "10.32.0.2/30".into()));
    let (status, body) = w(&small, "POST", "/ip/one-too-many", None);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no free address"), "{body}");
}

fn kill_9_during_1000_concurrent_allocations_loses_nothing_acknowledged() {
    let mut h = host("weavekill");
    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let ns = h.ns.name.clone();
    // 1,000 clients, each with one allocation, all let loose at once.
    const CLIENTS: usize = 1000;
    let go = Arc::new(std::sync::Barrier::new(CLIENTS));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (ns, acked, go) = (ns.clone(), acked.clone(), go.clone());
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || {
                    tunloom_lab::netns::enter(&ns).unwrap();
                    let agent: ureq::Agent = ureq::Agent::config_builder()
                        .timeout_global(Some(Duration::from_secs(10)))
                        .http_status_as_error(false)
                        .build()
                        .into();
                    let id = format!("k{i}");
                    go.wait();
                    let Ok(mut r) = agent.post(&format!("http://127.0.0.1:6784/ip/{id}")).send_empty() else {
                        return;
                    };
                    if r.status() == 200 {
                        let addr = r.body_mut().read_to_string().unwrap_or_default();
                        acked.lock().unwrap().insert(id, addr);
                    }
                })
                .unwrap()
        })
        .collect();
    // Crash it in the middle of the storm.
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < 300 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    // Writes are grouped: fewer transactions than write requests.
    let (_, stats) = h.api("GET", "/api/v1/stats", None).unwrap();
    h.stop(true);
    let stats: serde_json::Value = serde_json::from_slice(&stats).unwrap();
    let (txns, reqs) = (&stats["store"]["transactions"], &stats["store"]["requests"]);
    assert!(txns.as_u64().unwrap() < reqs.as_u64().unwrap(), "{}", stats["store"]);
    for c in clients {
        c.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 300,
        "only {} allocations acknowledged before the kill",
        acked.len()
    );
    assert!(acked.len() < 1000, "the kill came after everything was acknowledged");
    h.start().unwrap();
    let mut seen: HashMap<String, String> = HashMap::new();
    for i in 0..CLIENTS {
        let id = format!("k{i}");
        let (status, addr) = w(&h, "GET", &format!("/ip/{id}"), None);
        if status == 200 {
            seen.insert(id, addr);
        }
    }
    for (id, addr) in &acked {
        assert_eq!(seen.get(id), Some(addr), "acknowledged allocation {id} -> {addr} lost");
    }
    let distinct: HashSet<&String> = seen.values().collect();
    assert_eq!(distinct.len(), seen.len(), "an address is held twice");
    eprintln!(
        "kill -9: {} of {CLIENTS} allocations acknowledged before the kill, {} held after restart; \
         {txns} transactions for {reqs} write requests",
        acked.len(),
        seen.len()
    );
}

fn connect_and_expose_are_in_force_when_they_return() {
    assert!(common::has("ping"), "needs ping");
    let spec = HostSpec {
        static_peers: false,
        expose: false,
        hello_interval_ms: 1000,
        ..HostSpec::default()
    };
    let mut h = TwoHosts::create("sync", &common::exe(), &spec, common::never()).unwrap();
    h.start(0).unwrap();
    h.start(1).unwrap();
    h.wait_up(0, Duration::from_secs(10)).unwrap();
    h.wait_up(1, Duration::from_secs(10)).unwrap();
    // b exposes its address (no peers yet, so nothing to wait for).
    assert_eq!(
        h.weave(1, "POST", &format!("/expose/{}/32", OVERLAY[1]), None)
            .unwrap()
            .0,
        200
    );
    // a exposes its own: the host now has a source address in the overlay.
    assert_eq!(
        h.weave(0, "POST", &format!("/expose/{}/32", OVERLAY[0]), None)
            .unwrap()
            .0,
        200
    );
    assert!(
        h.ping(0, OVERLAY[1], 1, "0.2").unwrap().is_empty(),
        "no peer yet: unreachable"
    );

    // Right after /connect returns, a's traffic to b's prefixes flows (first packet).
    let (status, body) = h.weave(0, "POST", "/connect", Some("peer=198.18.0.2")).unwrap();
    assert_eq!((status, body.as_str()), (200, ""), "{}", h.log(0));
    assert_eq!(
        h.ping(0, OVERLAY[1], 1, "0.2").unwrap().len(),
        1,
        "first ping after /connect\n{}",
        h.log(0)
    );

    // replace=true with no peers drops b at once.
    assert_eq!(h.weave(0, "POST", "/connect", Some("replace=true")).unwrap().0, 200);
    assert!(
        h.ping(0, OVERLAY[1], 1, "0.2").unwrap().is_empty(),
        "b dropped by replace=true"
    );
    let (status, body) = h
        .weave(0, "POST", "/connect", Some("peer=198.18.0.2&replace=true"))
        .unwrap();
    assert_eq!((status, body.as_str()), (200, ""));
    assert_eq!(
        h.ping(0, OVERLAY[1], 1, "0.2").unwrap().len(),
        1,
        "back after replace=true with b"
    );

    // Right after a new /expose returns, the host pings the peer from the new address.
    let extra = "198.19.1.77";
    assert_eq!(
        h.weave(0, "POST", &format!("/expose/{extra}/32"), None).unwrap(),
        (200, String::new())
    );
    let from_new = h.a.run(
        "ping",
        &["-n", "-c", "1", "-W", "1", "-I", extra, OVERLAY[1]],
        Duration::from_secs(5),
    );
    assert!(
        from_new.is_ok(),
        "ping from the just-exposed {extra}: {from_new:?}\n{}",
        h.log(1)
    );

    // b dies for good; removing it on a takes over its IPAM block, and a allocates
    // from that block at once.
    let (status, body) = h.weave(0, "POST", &format!("/ip/x1/{}", BLOCK[1]), None).unwrap();
    assert_eq!(
        (status, body.starts_with("no free address")),
        (503, true),
        "b's block is not a's before the takeover: {body}"
    );
    h.stop(1, true);
    // Space is taken over only from a peer that is down (a live one is refused, 409).
    h.wait_peers("down", Duration::from_secs(5)).unwrap();
    let (status, body) = h.weave(0, "DELETE", &format!("/peer/{}", UNDERLAY[1]), None).unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "8192 IPs taken over from 198.18.0.2\n"),
        "{}",
        h.log(0)
    );
    let (status, body) = h.weave(0, "POST", &format!("/ip/x1/{}", BLOCK[1]), None).unwrap();
    assert_eq!(status, 200, "{body}\n{}", h.log(0));
    let got: ipnet::Ipv4Net = body.trim().parse().unwrap();
    let block: ipnet::Ipv4Net = BLOCK[1].parse().unwrap();
    assert!(block.contains(&got.addr()), "{got} outside {block}");

    // The takeover is durable: after kill -9 a still owns the block.
    h.stop(0, true);
    h.start(0).unwrap();
    h.wait_up(0, Duration::from_secs(10)).unwrap();
    assert_eq!(h.weave(0, "GET", "/ip/x1", None).unwrap(), (200, format!("{got}")));
    let (status, body) = h.weave(0, "POST", &format!("/ip/x2/{}", BLOCK[1]), None).unwrap();
    assert_eq!(status, 200, "{body}\n{}", h.log(0));
}

fn main() -> std::process::ExitCode {
    common::main(&[
        (
            "every_route_of_the_seed_answers_as_weave_does",
            Needs::Netns,
            every_route_of_the_seed_answers_as_weave_does,
        ),
        (
            "the_readme_curl_example_runs",
            Needs::NetnsWith(&["curl"]),
            the_readme_curl_example_runs,
        ),
        (
            "bad_requests_get_the_right_4xx_and_say_why",
            Needs::Netns,
            bad_requests_get_the_right_4xx_and_say_why,
        ),
        (
            "kill_9_during_1000_concurrent_allocations_loses_nothing_acknowledged",
            Needs::Netns,
            kill_9_during_1000_concurrent_allocations_loses_nothing_acknowledged,
        ),
        (
            "connect_and_expose_are_in_force_when_they_return",
            Needs::NetnsWith(&["ping"]),
            connect_and_expose_are_in_force_when_they_return,
        ),
    ])
}
