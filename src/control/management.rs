//! The management face (127.0.0.1:6786 by default): health and statistics. Later
//! issues grow it into the full management API over the same router.

use super::router::{ErrorStyle, Params, Request, Response, Router};
use crate::daemon::Shared;
use crate::stats::{self, Latency};
use serde_json::json;
use std::sync::atomic::Ordering;

pub fn router() -> Router<Shared> {
    let mut r = Router::new(ErrorStyle::Json);
    r.add("GET", "/health", health)
        .add("GET", "/api/v1/stats", stats_handler);
    r
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
        "service": s.service.as_ref().map(|q| json!({
            "gateways": settings.config.overlay.gateways,
            "handled": q.handled.load(Ordering::Relaxed),
            "replies": q.replies.load(Ordering::Relaxed),
        })),
        "peers": s.peers.views(),
        "announced": settings.announced.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
    })
}
