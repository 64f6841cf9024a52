//! The management face (127.0.0.1:6786 by default): `/health`, `/api/v1/stats` and
//! `/api/v1/openapi.json`. It only reads: the workers' counters and histograms (summed
//! here, on the control thread), the telemetry registry, the peer table and the
//! model's counts; it never writes state and never touches a worker. Its state,
//! [`Management`], holds exactly those. Later issues grow it into the full
//! management API over the same router.

use super::router::{Ctx, ErrorStyle, Response, Router};
use crate::dataplane::device::Steering;
use crate::dataplane::stats::{self, WorkerStats};
use crate::dataplane::Offloads;
use crate::model::Model;
use crate::peers::{announced_vnis, split_announced};
use crate::telemetry::{Latency, Registry};
use crate::wire::ether;
use crossbeam_utils::CachePadded;
use serde_json::json;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// This node, as the management face shows it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    pub nickname: String,
    pub mac: ether::Address,
}

/// What the management face reads.
pub struct Management {
    pub node: NodeInfo,
    pub model: Arc<Model>,
    pub workers: Vec<Arc<CachePadded<WorkerStats>>>,
    pub registry: Arc<Registry>,
    pub dataplane: DataplaneInfo,
    pub started: Instant,
    /// Users, tokens and service accounts: what the gate checks credentials against.
    pub identity: Arc<crate::auth::Identity>,
    /// The listener speaks TLS (session cookies get `Secure`).
    pub tls: bool,
    /// `api.performance_mode` when the configuration sets it.
    pub performance_mode: Option<bool>,
    /// The configuration file as loaded, secrets redacted (`config::redacted`).
    pub config: serde_json::Value,
    /// How long every listener's handlers took to answer (the stats' `api`).
    pub requests: Arc<super::http::RequestTimes>,
}

impl super::identity::HasIdentity for Management {
    fn identity(&self) -> &Arc<crate::auth::Identity> {
        &self.identity
    }

    fn tls(&self) -> bool {
        self.tls
    }
}

/// The dataplane as it was set up.
#[derive(Debug, Clone)]
pub struct DataplaneInfo {
    pub tun: String,
    pub mtu: u16,
    pub vni: u32,
    pub data_port: u16,
    pub offloads: Offloads,
    pub steering: Steering,
    /// Gateway addresses the configuration has the service thread answer.
    pub gateways: Vec<IpAddr>,
}

impl AsRef<Model> for Management {
    fn as_ref(&self) -> &Model {
        &self.model
    }
}

pub fn router() -> Router<Management> {
    // Every route needs a token but health, readiness, the document and the logins.
    let mut r = Router::new(ErrorStyle::Json, super::identity::token_gate());
    r.add_public("GET", "/health", health)
        .add_public("GET", "/ready", ready)
        .add("GET", "/api/v1/stats", stats_handler)
        .add("GET", "/api/v1/state/backup", backup)
        .add("GET", "/api/v1/dns-cache", dns_cache)
        .add("GET", "/api/v1/settings/performance-mode", get_performance_mode)
        .add("PUT", "/api/v1/settings/performance-mode", put_performance_mode)
        .add("POST", "/api/v1/support/sysdump/node", sysdump)
        .add_public("GET", "/api/v1/openapi.json", openapi);
    super::container_station::mount(&mut r);
    super::identity::mount(&mut r);
    r
}

/// The OpenAPI document of every face (management with Container Station, Weave,
/// libnetwork), kept in the repository
/// beside the code it describes; a test checks that it lists exactly the routes served.
pub const OPENAPI: &str = include_str!("../../api/openapi.json");

fn openapi(_: &Management, _: &Ctx) -> Response {
    Response {
        status: 200,
        content_type: "application/json",
        headers: Vec::new(),
        body: OPENAPI.as_bytes().to_vec(),
    }
}

fn health(s: &Management, _: &Ctx) -> Response {
    Response::json(
        200,
        &json!({
            "status": "ok",
            "node": s.node.name,
            "uptime_s": s.started.elapsed().as_secs(),
        }),
    )
}

/// One readiness check.
#[derive(Debug, serde::Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// A peer as the readiness check sees it.
pub struct PeerView {
    pub name: String,
    /// "up", "down" or "unknown".
    pub state: &'static str,
    /// Its latest announcements are applied here.
    pub applied: bool,
}

/// The peers check: failing only while a peer that is up has announcements not yet
/// applied here. Peers that are down or were never heard from are named in the
/// detail but do not fail it — one dead host must not take every other one out of
/// service, nor a rolling restart the whole cluster.
pub fn peers_check(peers: &[PeerView]) -> Check {
    let named = |f: &dyn Fn(&PeerView) -> bool| -> Vec<&str> {
        peers.iter().filter(|p| f(p)).map(|p| p.name.as_str()).collect()
    };
    let behind = named(&|p| p.state == "up" && !p.applied);
    let up = peers.iter().filter(|p| p.state == "up").count();
    let mut detail = if behind.is_empty() {
        format!("{up} peers up and in sync")
    } else {
        format!("announcements not yet applied from {}", behind.join(", "))
    };
    for state in ["down", "unknown"] {
        let these = named(&|p| p.state == state);
        if !these.is_empty() {
            detail.push_str(&format!("; {state}: {}", these.join(", ")));
        }
    }
    Check {
        name: "peers",
        ok: behind.is_empty(),
        detail,
    }
}

/// What must hold for this node to carry traffic as configured: the store takes
/// writes, every worker runs on the latest snapshot, and every peer that is up has
/// its announcements applied here.
pub fn readiness(s: &Management) -> Vec<Check> {
    let store_ok = !s.model.store_failed();
    let published = s.model.published();
    let latest = published.load().generation;
    let behind: Vec<String> = (0..s.workers.len())
        .filter(|&i| published.seen(i) < latest)
        .map(|i| format!("worker {i} at generation {}", published.seen(i)))
        .collect();
    let peers: Vec<PeerView> = s.model.peers().read(|t| {
        t.peers()
            .iter()
            .map(|p| PeerView {
                name: if p.name.is_empty() {
                    p.control_addr.to_string()
                } else {
                    p.name.clone()
                },
                state: p.state_name(),
                // Up, and what it sent is applied (whatever it has acknowledged of
                // ours: that is its readiness, not this node's).
                applied: p.settled(0),
            })
            .collect()
    });
    vec![
        Check {
            name: "store",
            ok: store_ok,
            detail: if store_ok {
                "open, taking writes".into()
            } else {
                "a commit failed; writes are refused until restart".into()
            },
        },
        Check {
            name: "dataplane",
            ok: behind.is_empty(),
            detail: if behind.is_empty() {
                format!("{} workers on generation {latest}", s.workers.len())
            } else {
                format!("latest generation {latest}; {}", behind.join(", "))
            },
        },
        peers_check(&peers),
    ]
}

fn ready(s: &Management, _: &Ctx) -> Response {
    let checks = readiness(s);
    let ok = checks.iter().all(|c| c.ok);
    Response::json(if ok { 200 } else { 503 }, &json!({ "ready": ok, "checks": checks }))
}

/// A consistent copy of the stored state, for `tunloom state backup`.
fn backup(s: &Management, _: &Ctx) -> Response {
    match s.model.dump() {
        Ok((entries, revision)) => {
            let entries: Vec<serde_json::Value> = entries
                .iter()
                .map(|e| json!({"key": e.key, "value": e.value, "revision": e.revision}))
                .collect();
            Response::json(200, &json!({"revision": revision, "entries": entries}))
        }
        Err(e) => Response::error(503, &format!("reading the state: {e}")),
    }
}

/// The hostnames upstream DNS answers taught, in the seed's shape.
fn dns_cache(s: &Management, _: &Ctx) -> Response {
    let entries: Vec<serde_json::Value> = s
        .model
        .dns()
        .learned_entries()
        .into_iter()
        .map(|(hostname, ips, last_seen)| json!({"hostname": hostname, "ips": ips, "last_seen": last_seen}))
        .collect();
    Response::json(200, &json!({ "entries": entries }))
}

/// Performance mode and where its value comes from: written through the API (kept
/// in the state), else `api.performance_mode`, else the built-in default (on).
/// tunloom has no audit or wiretap routes yet, so the flag is stored and reported
/// and nothing else depends on it.
pub fn performance_mode(s: &Management) -> (bool, &'static str) {
    match (s.model.performance_mode(), s.performance_mode) {
        (Some(on), _) => (on, "api"),
        (None, Some(on)) => (on, "config"),
        (None, None) => (true, "default"),
    }
}

fn performance_mode_response(s: &Management) -> Response {
    let (enabled, source) = performance_mode(s);
    Response::json(200, &json!({"enabled": enabled, "source": source}))
}

fn get_performance_mode(s: &Management, _: &Ctx) -> Response {
    performance_mode_response(s)
}

/// The body of `PUT /api/v1/settings/performance-mode`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerformanceMode {
    pub enabled: bool,
}

fn put_performance_mode(s: &Management, c: &Ctx) -> Response {
    let body: PerformanceMode = match serde_json::from_slice(&c.req.body) {
        Ok(b) => b,
        Err(e) => return Response::error(400, &format!("invalid json: {e}")),
    };
    match s.model.set_performance_mode(body.enabled) {
        Ok(()) => performance_mode_response(s),
        Err(e) => Response::error(503, &format!("storing performance mode: {e}")),
    }
}

/// The largest sysdump document before compression. Past it, the log lines are cut
/// to the last [`SYSDUMP_TRIMMED_LINES`] (and `log.truncated` says so).
pub const SYSDUMP_MAX: usize = 8 << 20;
/// How many log lines a sysdump over [`SYSDUMP_MAX`] keeps.
pub const SYSDUMP_TRIMMED_LINES: usize = 50;

/// What `POST /api/v1/support/sysdump/node` packs (before gzip): one JSON document
/// with the configuration as loaded (secrets redacted), the statistics document, the
/// peers, performance mode and the last log lines.
pub fn sysdump_json(s: &Management) -> serde_json::Value {
    let stats = stats_json(s);
    let (enabled, source) = performance_mode(s);
    let lines = crate::telemetry::recent_log::RECENT.lines();
    json!({
        "format": "tunloom-sysdump/1",
        "node": s.node.name,
        "created_at": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        "version": env!("CARGO_PKG_VERSION"),
        "config": s.config,
        "performance_mode": {"enabled": enabled, "source": source},
        "peers": stats["peers"],
        "stats": stats,
        "log": {
            "source": format!(
                "the last {} lines this process logged through the log crate (what RUST_LOG lets through to stderr), kept in memory; lines from before the logger started and other stderr output are not here",
                crate::telemetry::recent_log::LINES
            ),
            "truncated": false,
            "lines": lines,
        },
    })
}

/// The sysdump, gzip-compressed, under [`SYSDUMP_MAX`] before compression.
pub fn sysdump_gzip(s: &Management) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut doc = sysdump_json(s);
    let mut text = serde_json::to_vec(&doc).map_err(std::io::Error::other)?;
    if text.len() > SYSDUMP_MAX {
        if let Some(lines) = doc["log"]["lines"].as_array_mut() {
            let cut = lines.len().saturating_sub(SYSDUMP_TRIMMED_LINES);
            lines.drain(..cut);
        }
        doc["log"]["truncated"] = json!(true);
        text = serde_json::to_vec(&doc).map_err(std::io::Error::other)?;
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&text)?;
    gz.finish()
}

fn sysdump(s: &Management, _: &Ctx) -> Response {
    let name: String = s
        .node
        .name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
        .collect();
    match sysdump_gzip(s) {
        Ok(body) => Response {
            status: 200,
            content_type: "application/gzip",
            headers: Vec::new(),
            body,
        }
        .with_header(
            "Content-Disposition",
            format!("attachment; filename=\"tunloom-sysdump-{name}.json.gz\""),
        ),
        Err(e) => Response::error(500, &format!("building the sysdump: {e}")),
    }
}

fn stats_handler(s: &Management, _: &Ctx) -> Response {
    Response::json(200, &stats_json(s))
}

/// The whole statistics document.
pub fn stats_json(s: &Management) -> serde_json::Value {
    let published = s.model.published();
    let workers: Vec<serde_json::Value> = s
        .workers
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let c = w.snapshot();
            json!({
                "id": i,
                "cpu": w.cpu.load(Ordering::Relaxed),
                "tid": w.tid.load(Ordering::Relaxed),
                "generation_seen": published.seen(i),
                "counters": c.counters,
                "drops": c.drops,
                "batch_latency": Latency::of(&w.histogram()),
            })
        })
        .collect();
    let (total, hist) = stats::totals(s.workers.iter().map(|w| &***w));
    let st = s.model.status();
    let (announced, state) = s.model.peers().read(|t| (t.announced().to_vec(), t.state()));
    let (prefixes, blocks) = split_announced(&announced);
    let ipam = json!({
        "range_num_ips": st.ipam.range_num_ips,
        "owned_num_ips": st.ipam.owned_num_ips,
        "allocated": st.ipam.allocated,
        "containers": st.ipam.containers,
        "default_subnet": st.default_subnet.to_string(),
        "yielded_blocks": st.yielded.iter().map(ToString::to_string).collect::<Vec<_>>(),
    });
    let mut store = json!(s.registry.section("store"));
    store["failed"] = json!(s.model.store_failed());
    let dns = s.model.dns();
    let mut dns_stats = json!(s.registry.section("dns"));
    dns_stats["latency"] = json!(dns.latency());
    dns_stats["records"] = json!(dns.zone().records());
    dns_stats["cache_entries"] = json!(dns.cached());
    dns_stats["outstanding"] = json!(dns.pending());
    dns_stats["learned_hostnames"] = json!(dns.learned_len());
    let mut service = json!(s.registry.section("service"));
    service["gateways"] = json!(s.dataplane.gateways);
    let now = Instant::now();
    let peers: Vec<serde_json::Value> = st
        .peers
        .iter()
        .map(|p| {
            let (prefixes, blocks) = split_announced(&p.prefixes);
            json!({
                "name": p.name,
                "nickname": p.nickname,
                "state": p.state_name(),
                "control_address": p.control_addr,
                "data_address": p.data_addr,
                "last_seen_ms_ago": p.last_seen.map(|t| now.duration_since(t).as_millis() as u64),
                "prefixes": prefixes,
                "blocks": blocks,
                "vnis": announced_vnis(&p.prefixes),
                "static_peer": p.target,
                "up_events": p.up_events,
                "down_events": p.down_events,
            })
        })
        .collect();
    let d = &s.dataplane;
    let totals = json!(total.counters);
    let counter = |name: &str| totals[name].as_u64().unwrap_or(0);
    let count = |state: &str| st.peers.iter().filter(|p| p.state_name() == state).count();
    let cluster = json!({
        "node": s.node.name,
        "peers": st.peers.len(),
        "peers_up": count("up"),
        "peers_down": count("down"),
        "peers_unknown": count("unknown"),
        "leader": null,
        "note": "no leader election and no replicated state: every node decides for itself and peers exchange announcements",
    });
    json!({
        "node": {
            "name": s.node.name,
            "nickname": s.node.nickname,
            "mac": s.node.mac.to_string(),
            "uptime_s": s.started.elapsed().as_secs(),
        },
        "dataplane": {
            "tun": d.tun,
            "mtu": d.mtu,
            "vni": d.vni,
            "data_port": d.data_port,
            "workers": s.workers.len(),
            "generation": published.load().generation,
            "offloads": d.offloads,
            "steering": d.steering,
            // The seed's dataplane figures, from the totals below.
            "packets": {
                "from_tun": counter("inside_packets"),
                "to_peers": counter("forwarded_packets"),
                "from_peers": counter("outside_packets"),
                "to_tun": counter("delivered_packets"),
            },
            "bytes": {
                "from_tun": counter("inside_bytes"),
                "to_peers": counter("forwarded_bytes"),
                "from_peers": counter("outside_bytes"),
                "to_tun": counter("delivered_bytes"),
            },
            "drops": total.total_drops(),
            "flows": null,
            "not_counted": "flows: tunloom forwards by route and keeps no connection table",
        },
        "tls": {
            "enabled": s.tls,
            "not_counted": "handshakes and handshake failures on the management listener (each failure is logged); tunloom inspects no TLS in the dataplane",
        },
        "dhcp": {
            "enabled": false,
            "note": "tunloom has no DHCP server: containers get addresses from IPAM (see ipam)",
        },
        "cluster": cluster,
        "total": {
            "counters": total.counters,
            "drops": total.drops,
            "drops_total": total.total_drops(),
            "batch_latency": Latency::of(&hist),
        },
        "workers": workers,
        "control": s.registry.section("control"),
        "api": api_json(&s.requests),
        "auth": s.registry.section("auth"),
        "store": store,
        "ipam": ipam,
        "service": service,
        "dns": dns_stats,
        "peers": peers,
        "announced": {
            "prefixes": prefixes,
            "blocks": blocks,
            "vnis": announced_vnis(&announced),
            "state": state,
        },
    })
}

/// The stats' `api` section: per listener, the requests its handlers answered, by
/// status class, and their latency (interpolated within the histogram's buckets).
fn api_json(t: &super::http::RequestTimes) -> serde_json::Value {
    use super::http::{CODE_CLASSES, FACES};
    let mut faces = serde_json::Map::new();
    for (f, face) in FACES.iter().enumerate() {
        let mut all = crate::telemetry::BucketCounts::default();
        let mut by_class = serde_json::Map::new();
        for (c, class) in CODE_CLASSES.iter().enumerate() {
            let counts = t.read(f, c);
            by_class.insert(class.to_string(), json!(counts.count()));
            all.add(&counts);
        }
        let us = |q: f64| (all.quantile_ns(q) / 100.0).round() / 10.0;
        faces.insert(
            face.to_string(),
            json!({"count": all.count(), "by_class": by_class, "p50_us": us(0.5), "p99_us": us(0.99)}),
        );
    }
    serde_json::Value::Object(faces)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn normalize(path: &str) -> String {
        path.split('/')
            .map(|s| if s.starts_with('{') { "{}" } else { s })
            .collect::<Vec<_>>()
            .join("/")
    }

    #[test]
    fn only_an_up_peer_not_yet_applied_fails_readiness() {
        let p = |name: &str, state, applied| PeerView {
            name: name.into(),
            state,
            applied,
        };
        let c = peers_check(&[p("a", "up", true), p("b", "down", false), p("c", "unknown", false)]);
        assert!(c.ok, "{}", c.detail);
        assert_eq!(c.detail, "1 peers up and in sync; down: b; unknown: c");
        let c = peers_check(&[p("a", "up", false), p("b", "up", true)]);
        assert!(!c.ok);
        assert_eq!(c.detail, "announcements not yet applied from a");
        assert!(peers_check(&[]).ok);
    }

    #[test]
    fn performance_mode_request_body_is_strict() {
        let ok: PerformanceMode = serde_json::from_str(r#"{"enabled": false}"#).unwrap();
        assert!(!ok.enabled);
        for bad in [r#"{}"#, r#"{"enabled": "yes"}"#, r#"{"enabled": true, "x": 1}"#, "[]"] {
            assert!(serde_json::from_str::<PerformanceMode>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn openapi_document_lists_exactly_the_routes_served() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("api/openapi.json is JSON");
        assert_eq!(doc["openapi"], "3.0.3");
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in ["get", "post", "put", "delete", "patch"] {
                if let Some(op) = item.get(method) {
                    assert!(op["responses"].is_object(), "{method} {path} has responses");
                    documented.insert((method.to_uppercase(), normalize(path)));
                }
            }
        }
        let mut served = BTreeSet::new();
        for (m, p) in router()
            .routes()
            .into_iter()
            .chain(crate::control::weave::router().routes())
            .chain(crate::control::libnetwork::router().routes())
        {
            served.insert((m.to_string(), p));
        }
        assert_eq!(served, documented, "routes served vs documented in api/openapi.json");
        // Every $ref resolves.
        for r in OPENAPI.split("\"$ref\": \"#/components/schemas/").skip(1) {
            let name = &r[..r.find('"').unwrap()];
            assert!(doc["components"]["schemas"][name].is_object(), "missing schema {name}");
        }
    }
}
