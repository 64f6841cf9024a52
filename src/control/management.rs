//! The management face (127.0.0.1:6786 by default): `/health`, `/api/v1/stats` and
//! `/api/v1/openapi.json`. It only reads: the workers' counters and histograms (summed
//! here, on the control thread), the peer table, the model's counts and the store's
//! commit counters; it never writes state and never touches a worker. Later issues
//! grow it into the full management API over the same router.

use super::router::{ErrorStyle, Params, Request, Response, Router};
use crate::daemon::Shared;
use crate::dataplane::stats;
use crate::telemetry::Latency;
use serde_json::json;
use std::sync::atomic::Ordering;

pub fn router() -> Router<Shared> {
    let mut r = Router::new(ErrorStyle::Json);
    r.add("GET", "/health", health)
        .add("GET", "/api/v1/stats", stats_handler)
        .add("GET", "/api/v1/openapi.json", openapi);
    r
}

/// The OpenAPI document of every face (management and Weave), kept in the repository
/// beside the code it describes; a test checks that it lists exactly the routes served.
pub const OPENAPI: &str = include_str!("../../api/openapi.json");

fn openapi(_: &Shared, _: &Request, _: &Params) -> Response {
    Response {
        status: 200,
        content_type: "application/json",
        headers: Vec::new(),
        body: OPENAPI.as_bytes().to_vec(),
    }
}

fn health(s: &Shared, _: &Request, _: &Params) -> Response {
    Response::json(
        200,
        &json!({
            "status": "ok",
            "node": s.settings.node_name,
            "uptime_s": s.started.elapsed().as_secs(),
        }),
    )
}

fn stats_handler(s: &Shared, _: &Request, _: &Params) -> Response {
    Response::json(200, &stats_json(s))
}

/// The whole statistics document.
pub fn stats_json(s: &Shared) -> serde_json::Value {
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
                "generation_seen": s.published.seen(i),
                "counters": c.counters,
                "drops": c.drops,
                "batch_latency": Latency::of(&w.histogram()),
            })
        })
        .collect();
    let (total, hist) = stats::totals(s.workers.iter().map(|w| &***w));
    let settings = &s.settings;
    let st = s.model.status();
    let announced = s.peers.announced();
    let ipam = json!({
        "range_num_ips": st.ipam.range_num_ips,
        "owned_num_ips": st.ipam.owned_num_ips,
        "allocated": st.ipam.allocated,
        "containers": st.ipam.containers,
        "default_subnet": st.default_subnet.to_string(),
    });
    json!({
        "node": {
            "name": settings.node_name,
            "nickname": settings.nickname,
            "mac": settings.node_mac.to_string(),
            "uptime_s": s.started.elapsed().as_secs(),
        },
        "dataplane": {
            "tun": settings.config.dataplane.tun_name,
            "mtu": settings.mtu,
            "vni": settings.config.dataplane.vni,
            "data_port": settings.config.dataplane.data_port,
            "workers": s.workers.len(),
            "generation": s.published.load().generation,
            "offloads": s.offloads,
        },
        "total": {
            "counters": total.counters,
            "drops": total.drops,
            "drops_total": total.total_drops(),
            "batch_latency": Latency::of(&hist),
        },
        "workers": workers,
        "control": s.peers.counters.to_json(),
        "store": s.model.commit_stats(),
        "ipam": ipam,
        "service": s.service.as_ref().map(|q| json!({
            "gateways": settings.config.overlay.gateways,
            "handled": q.handled.load(Ordering::Relaxed),
            "replies": q.replies.load(Ordering::Relaxed),
        })),
        "peers": s.peers.views(),
        "announced": {
            "prefixes": announced.iter().filter(|a| !a.block).map(|a| a.prefix.to_string()).collect::<Vec<_>>(),
            "blocks": announced.iter().filter(|a| a.block).map(|a| a.prefix.to_string()).collect::<Vec<_>>(),
            "state": s.peers.state(),
        },
    })
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
