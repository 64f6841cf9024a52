//! The Prometheus face: `GET /metrics` on a listener of its own (`api.metrics_listen`),
//! in the text exposition format 0.0.4 that every Prometheus and `promtool` read.
//!
//! It shows what `GET /api/v1/stats` shows, read from the same sources at scrape
//! time — the workers' counters and drops, the telemetry [`Registry`] sections
//! (peer control, store, service, DNS, auth failures), the batch-latency histogram,
//! the API request-latency histograms, peers, IPAM and the store's state — so the
//! two can never disagree. It keeps no state of its own
//! and only reads; the `prometheus` crate supplies the metric model and the encoder.
//!
//! [`Registry`]: crate::telemetry::Registry

use super::http::{RequestTimes, CODE_CLASSES, FACES};
use super::management::Management;
use super::router::{open_gate, Ctx, ErrorStyle, Response, Router};
use crate::dataplane::stats::{self, Counter};
use crate::pipeline::DropReason;
use crate::telemetry::LATENCY_BOUNDS_NS;
use hdrhistogram::Histogram;
use prometheus::proto::{self, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, TextEncoder};
use std::collections::BTreeMap;

/// Upper bounds (seconds) of the batch-latency histogram's buckets.
const BATCH_BUCKETS: [f64; 12] = [
    1e-6, 5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 5e-3, 25e-3, 100e-3,
];

pub fn router() -> Router<Management> {
    let mut r = Router::new(ErrorStyle::Json, open_gate());
    r.add_public("GET", "/metrics", scrape);
    r
}

fn scrape(m: &Management, _: &Ctx) -> Response {
    let mut body = Vec::new();
    match TextEncoder::new().encode(&families(m), &mut body) {
        Ok(()) => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            headers: Vec::new(),
            body,
        },
        Err(e) => Response::error(500, &format!("cannot encode the metrics: {e}")),
    }
}

fn label(name: &str, value: impl Into<String>) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.into());
    l.set_value(value.into());
    l
}

fn family(name: String, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name);
    f.set_help(help.into());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

fn counter(labels: Vec<LabelPair>, v: u64) -> Metric {
    let mut c = proto::Counter::default();
    c.set_value(v as f64);
    let mut m = Metric::default();
    m.set_label(labels);
    m.set_counter(c);
    m
}

fn gauge(labels: Vec<LabelPair>, v: f64) -> Metric {
    let mut g = proto::Gauge::default();
    g.set_value(v);
    let mut m = Metric::default();
    m.set_label(labels);
    m.set_gauge(g);
    m
}

/// A histogram of nanoseconds as Prometheus buckets in seconds. The sum is the
/// histogram's mean times its count (HdrHistogram keeps no exact sum).
fn histogram_seconds(h: &Histogram<u64>, bounds: &[f64]) -> Metric {
    let mut buckets = Vec::with_capacity(bounds.len());
    for &b in bounds {
        let mut bucket = proto::Bucket::default();
        let ns = (b * 1e9) as u64;
        bucket.set_upper_bound(b);
        bucket.set_cumulative_count(if h.is_empty() { 0 } else { h.count_between(0, ns) });
        buckets.push(bucket);
    }
    let mut p = proto::Histogram::default();
    p.set_sample_count(h.len());
    p.set_sample_sum(h.mean() * h.len() as f64 / 1e9);
    p.set_bucket(buckets);
    let mut m = Metric::default();
    m.set_histogram(p);
    m
}

/// `tunloom_api_request_duration_seconds{face,code_class}`: one histogram per
/// listener and status class, its buckets exactly the recorded ones.
fn api_requests(t: &RequestTimes) -> MetricFamily {
    let mut metrics = Vec::new();
    for (f, face) in FACES.iter().enumerate() {
        for (c, class) in CODE_CLASSES.iter().enumerate() {
            let counts = t.read(f, c);
            let mut buckets = Vec::with_capacity(LATENCY_BOUNDS_NS.len() - 1);
            let mut cumulative = 0;
            // The last bucket is +Inf, which the encoder adds from the count.
            for (&bound, &n) in LATENCY_BOUNDS_NS
                .iter()
                .zip(&counts.counts)
                .take(LATENCY_BOUNDS_NS.len() - 1)
            {
                cumulative += n;
                let mut b = proto::Bucket::default();
                b.set_upper_bound(bound as f64 / 1e9);
                b.set_cumulative_count(cumulative);
                buckets.push(b);
            }
            let mut h = proto::Histogram::default();
            h.set_sample_count(counts.count());
            h.set_sample_sum(counts.sum_ns as f64 / 1e9);
            h.set_bucket(buckets);
            let mut metric = Metric::default();
            metric.set_label(vec![label("code_class", *class), label("face", *face)]);
            metric.set_histogram(h);
            metrics.push(metric);
        }
    }
    family(
        "tunloom_api_request_duration_seconds".into(),
        "Time the API handlers took to answer (routing, token check, handler), by listener and status class; 2xx counts every answer below 400.",
        MetricType::HISTOGRAM,
        metrics,
    )
}

/// Every metric family, read now.
pub fn families(m: &Management) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    let snaps: Vec<_> = m.workers.iter().map(|w| w.snapshot()).collect();
    let worker = |i: usize| vec![label("worker", i.to_string())];
    for c in Counter::ALL {
        let metrics = snaps
            .iter()
            .enumerate()
            .map(|(i, s)| counter(worker(i), s.counters.get(c.name()).copied().unwrap_or(0)))
            .collect();
        out.push(family(
            format!("tunloom_dataplane_{}_total", c.name()),
            c.help(),
            MetricType::COUNTER,
            metrics,
        ));
    }
    let mut drops = Vec::new();
    for (i, s) in snaps.iter().enumerate() {
        for r in DropReason::ALL {
            let labels = vec![label("reason", r.name()), label("worker", i.to_string())];
            drops.push(counter(labels, s.drops.get(r.name()).copied().unwrap_or(0)));
        }
    }
    out.push(family(
        "tunloom_dataplane_drops_total".into(),
        "Packets the dataplane dropped, by worker and reason (the reasons of GET /api/v1/stats).",
        MetricType::COUNTER,
        drops,
    ));
    let (_, hist) = stats::totals(m.workers.iter().map(|w| &***w));
    out.push(family(
        "tunloom_dataplane_batch_duration_seconds".into(),
        "Time a worker spent on one batch (reads, processing and writes), all workers.",
        MetricType::HISTOGRAM,
        vec![histogram_seconds(&hist, &BATCH_BUCKETS)],
    ));
    out.push(api_requests(&m.requests));
    for section in m.registry.section_names() {
        for (name, (help, v)) in m.registry.section_with_help(section) {
            out.push(family(
                format!("tunloom_{section}_{name}_total"),
                help,
                MetricType::COUNTER,
                vec![counter(Vec::new(), v)],
            ));
        }
    }
    let st = m.model.status();
    let mut states: BTreeMap<&str, u64> = ["up", "down", "unknown"].into_iter().map(|s| (s, 0)).collect();
    for p in &st.peers {
        *states.entry(p.state_name()).or_default() += 1;
    }
    out.push(family(
        "tunloom_peers".into(),
        "Peers known to this node, by state.",
        MetricType::GAUGE,
        states
            .into_iter()
            .map(|(s, n)| gauge(vec![label("state", s)], n as f64))
            .collect(),
    ));
    for (name, help, v) in [
        (
            "tunloom_ipam_range_addresses",
            "Addresses in the IPAM range.",
            st.ipam.range_num_ips,
        ),
        (
            "tunloom_ipam_owned_addresses",
            "Addresses of the IPAM range this node owns.",
            st.ipam.owned_num_ips,
        ),
        (
            "tunloom_ipam_allocated_addresses",
            "Addresses allocated to containers.",
            st.ipam.allocated,
        ),
        (
            "tunloom_ipam_containers",
            "Containers holding at least one address.",
            st.ipam.containers,
        ),
    ] {
        out.push(family(
            name.into(),
            help,
            MetricType::GAUGE,
            vec![gauge(Vec::new(), v as f64)],
        ));
    }
    out.push(family(
        "tunloom_store_failed".into(),
        "1 when the store has refused a commit and takes no more writes until restart.",
        MetricType::GAUGE,
        vec![gauge(Vec::new(), if m.model.store_failed() { 1.0 } else { 0.0 })],
    ));
    out
}
