//! What tunloom counts and times, and the one registry every reader goes through.
//!
//! - `counted_enum!` declares an event enum whose variants index a counter array and
//!   carry the snake_case names that stats and metrics show ([`Counted`]).
//! - [`Counters`] is the shared, atomic array of one such enum. A thread that counts
//!   per packet fills a plain array of its own and [`flush`]es it into atomics once
//!   per batch, so counting costs no shared-cache traffic per packet (the dataplane's
//!   worker stats keep both arrays inline, in one cache-padded struct per worker).
//! - [`Registry`] gathers named sections of counters (peer control, store, service;
//!   the dataplane's per-worker stats are read beside it); the stats document renders
//!   them as JSON and the metrics face as Prometheus text, both from here.
//! - [`BucketHistogram`] times events that many threads record at once (API
//!   requests): fixed buckets of atomic counts, no lock, exact Prometheus buckets.
//!
//! - [`recent_log`] keeps the last lines logged, for the sysdump.
//!
//! A leaf module: it depends on nothing else in the crate, so the pipeline, the
//! peers, the store and the service can all declare their events with it.

pub mod recent_log;

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// An enum whose variants are counted: each has an index into a counter array and a
/// snake_case name for stats and metrics. Implemented by `counted_enum!`.
pub trait Counted: Copy + Send + Sync + 'static {
    const ALL: &'static [Self];
    fn index(self) -> usize;
    fn name(self) -> &'static str;
    /// What the counter counts, one sentence (Prometheus HELP).
    fn help(self) -> &'static str;
}

/// Declares an enum whose variants index a counter array and have snake_case names
/// for stats and metrics: `ALL`, `COUNT`, `name()` and [`Counted`].
macro_rules! counted_enum {
    ($(#[$meta:meta])* $enum:ident { $($name:ident => $text:literal, $doc:literal;)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $enum { $(#[doc = $doc] $name,)* }

        impl $enum {
            pub const ALL: &'static [$enum] = &[$($enum::$name,)*];
            pub const COUNT: usize = Self::ALL.len();
            /// The snake_case name used in stats and metrics.
            pub const fn name(self) -> &'static str {
                match self { $($enum::$name => $text,)* }
            }
            /// What the counter counts.
            pub const fn help(self) -> &'static str {
                match self { $($enum::$name => $doc,)* }
            }
        }

        impl $crate::telemetry::Counted for $enum {
            const ALL: &'static [$enum] = $enum::ALL;
            #[inline]
            fn index(self) -> usize {
                self as usize
            }
            fn name(self) -> &'static str {
                $enum::name(self)
            }
            fn help(self) -> &'static str {
                $enum::help(self)
            }
        }
    };
}
pub(crate) use counted_enum;

/// One atomic counter per variant of `E`, shared between threads.
pub struct Counters<E: Counted> {
    values: Box<[AtomicU64]>,
    _kind: PhantomData<E>,
}

impl<E: Counted> Default for Counters<E> {
    fn default() -> Self {
        Counters {
            values: E::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            _kind: PhantomData,
        }
    }
}

impl<E: Counted> Counters<E> {
    #[inline]
    pub fn add(&self, e: E, n: u64) {
        self.values[e.index()].fetch_add(n, Ordering::Relaxed);
    }

    #[inline]
    pub fn inc(&self, e: E) {
        self.add(e, 1);
    }

    pub fn get(&self, e: E) -> u64 {
        self.values[e.index()].load(Ordering::Relaxed)
    }

    /// Every counter by name.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        named::<E>(&self.values)
    }
}

/// Adds `local` to `shared` and clears it. Only non-zero entries touch the shared
/// cache lines.
#[inline]
pub fn flush(shared: &[AtomicU64], local: &mut [u64]) {
    for (a, v) in shared.iter().zip(local.iter_mut()) {
        if *v != 0 {
            a.fetch_add(*v, Ordering::Relaxed);
            *v = 0;
        }
    }
}

/// `values`, indexed by `E`, by name.
pub fn named<E: Counted>(values: &[AtomicU64]) -> BTreeMap<&'static str, u64> {
    E::ALL
        .iter()
        .zip(values)
        .map(|(e, v)| (e.name(), v.load(Ordering::Relaxed)))
        .collect()
}

/// Something the registry can read counters from.
pub trait Source: Send + Sync {
    /// Calls `f` with each counter's name, help text and value.
    fn visit(&self, f: &mut dyn FnMut(&'static str, &'static str, u64));
}

impl<E: Counted> Source for Counters<E> {
    fn visit(&self, f: &mut dyn FnMut(&'static str, &'static str, u64)) {
        for e in E::ALL {
            f(e.name(), e.help(), self.get(*e));
        }
    }
}

/// Named sections of counters, in registration order.
#[derive(Default, Clone)]
pub struct Registry {
    sections: Vec<(&'static str, Arc<dyn Source>)>,
}

impl Registry {
    pub fn register(&mut self, section: &'static str, source: Arc<dyn Source>) {
        self.sections.push((section, source));
    }

    /// The counters of `section` by name (empty when no such section).
    pub fn section(&self, section: &str) -> BTreeMap<&'static str, u64> {
        self.section_with_help(section)
            .into_iter()
            .map(|(k, (_, v))| (k, v))
            .collect()
    }

    /// The counters of `section` by name, with their help texts.
    pub fn section_with_help(&self, section: &str) -> BTreeMap<&'static str, (&'static str, u64)> {
        let mut out: BTreeMap<&'static str, (&'static str, u64)> = BTreeMap::new();
        for (_, s) in self.sections.iter().filter(|(name, _)| *name == section) {
            s.visit(&mut |k, help, v| {
                let e = out.entry(k).or_insert((help, 0));
                e.1 += v;
            });
        }
        out
    }

    /// The section names, each once, in registration order.
    pub fn section_names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = Vec::new();
        for (name, _) in &self.sections {
            if !names.contains(name) {
                names.push(name);
            }
        }
        names
    }

    /// Every section as one JSON object of objects.
    pub fn to_json(&self) -> serde_json::Value {
        let mut doc = serde_json::Map::new();
        for (name, _) in &self.sections {
            doc.entry(name.to_string())
                .or_insert_with(|| serde_json::json!(self.section(name)));
        }
        serde_json::Value::Object(doc)
    }
}

/// Latency percentiles in microseconds, from a histogram of nanoseconds.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Latency {
    pub count: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.5)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// A new histogram for durations in nanoseconds: 1 ns to 10 s at 2 significant
/// digits (1% resolution). Three digits made each one 10 times larger (hundreds of
/// KiB), and every stats request and scrape copies and walks each worker's.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 10_000_000_000, 2).expect("static histogram bounds are valid")
}

/// Upper bounds (nanoseconds) of [`BucketHistogram`]'s buckets: 25 µs to 10 s in
/// 1-2-5 steps (the last bucket, past 10 s, has no bound: Prometheus' `+Inf`).
pub const LATENCY_BOUNDS_NS: [u64; 19] = [
    25_000,
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    20_000_000,
    50_000_000,
    100_000_000,
    200_000_000,
    500_000_000,
    1_000_000_000,
    2_000_000_000,
    5_000_000_000,
    10_000_000_000,
    u64::MAX,
];

/// A histogram of durations with fixed buckets ([`LATENCY_BOUNDS_NS`]) of atomic
/// counts: recording is two relaxed atomic adds, no lock, so any number of threads
/// record into one without waiting on each other or on a reader. Readers take a
/// [`BucketCounts`] copy; it may be a few samples out of step between buckets and
/// sum, never more. Exact for Prometheus buckets; quantiles are interpolated within
/// a bucket, as Prometheus' `histogram_quantile` does.
pub struct BucketHistogram {
    counts: [AtomicU64; LATENCY_BOUNDS_NS.len()],
    sum_ns: AtomicU64,
}

impl Default for BucketHistogram {
    fn default() -> Self {
        BucketHistogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl BucketHistogram {
    #[inline]
    pub fn record(&self, d: std::time::Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = LATENCY_BOUNDS_NS.partition_point(|&b| b < ns);
        self.counts[i.min(LATENCY_BOUNDS_NS.len() - 1)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub fn read(&self) -> BucketCounts {
        BucketCounts {
            counts: std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed)),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
        }
    }
}

/// What a [`BucketHistogram`] held when read (or several of them added up).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BucketCounts {
    /// Samples per bucket (not cumulative), bucket `i` bounded by `LATENCY_BOUNDS_NS[i]`.
    pub counts: [u64; LATENCY_BOUNDS_NS.len()],
    pub sum_ns: u64,
}

impl BucketCounts {
    pub fn add(&mut self, o: &BucketCounts) {
        for (a, b) in self.counts.iter_mut().zip(o.counts) {
            *a += b;
        }
        self.sum_ns = self.sum_ns.saturating_add(o.sum_ns);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The `q` quantile in nanoseconds, interpolated linearly within its bucket (0
    /// when empty; the last finite bound when it falls past it).
    pub fn quantile_ns(&self, q: f64) -> f64 {
        let total = self.count();
        if total == 0 {
            return 0.0;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
        let mut seen = 0u64;
        for (i, &n) in self.counts.iter().enumerate() {
            if n > 0 && (seen + n) as f64 >= rank {
                let last_finite = LATENCY_BOUNDS_NS[LATENCY_BOUNDS_NS.len() - 2] as f64;
                if i == LATENCY_BOUNDS_NS.len() - 1 {
                    return last_finite;
                }
                let lo = if i == 0 { 0.0 } else { LATENCY_BOUNDS_NS[i - 1] as f64 };
                let hi = LATENCY_BOUNDS_NS[i] as f64;
                return lo + (hi - lo) * (rank - seen as f64) / n as f64;
            }
            seen += n;
        }
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    counted_enum! {
        /// Events of a test.
        Ev {
            One => "one", "The first.";
            Two => "two", "The second.";
        }
    }

    #[test]
    fn locals_flush_into_shared_counters_and_the_registry_reads_them() {
        let shared = Arc::new(Counters::<Ev>::default());
        let mut local = [0u64; Ev::COUNT];
        local[Ev::Two as usize] += 3;
        flush(&shared.values, &mut local);
        assert_eq!(local, [0, 0], "flushing clears");
        shared.inc(Ev::One);
        let mut r = Registry::default();
        r.register("test", shared.clone());
        r.register("test", shared);
        assert_eq!(r.section("test").get("two"), Some(&6), "sections of one name add up");
        assert_eq!(r.to_json()["test"]["one"], 2);
        assert!(r.section("none").is_empty());
        assert_eq!(Ev::COUNT, 2);
    }

    #[test]
    fn latency_in_microseconds() {
        let mut h = new_histogram();
        h.record(1500).unwrap();
        let l = Latency::of(&h);
        assert_eq!(l.count, 1);
        assert!((l.p50_us - 1.5).abs() < 0.01);
    }

    #[test]
    fn bucket_histograms_count_exactly_and_interpolate_quantiles() {
        use std::time::Duration;
        let h = BucketHistogram::default();
        assert_eq!(h.read().quantile_ns(0.5), 0.0, "empty");
        for _ in 0..99 {
            h.record(Duration::from_micros(30)); // (25 µs, 50 µs]
        }
        h.record(Duration::from_secs(60)); // past the last bound
        h.record(Duration::from_micros(25)); // on a bound: that bucket
        let mut c = h.read();
        assert_eq!(c.count(), 101);
        assert_eq!(c.counts[0], 1);
        assert_eq!(c.counts[1], 99);
        assert_eq!(c.counts[LATENCY_BOUNDS_NS.len() - 1], 1);
        let p50 = c.quantile_ns(0.5);
        assert!((25_000.0..=50_000.0).contains(&p50), "{p50}");
        assert_eq!(c.quantile_ns(1.0), 10e9, "past the bounds: the last finite one");
        c.add(&h.read());
        assert_eq!(c.count(), 202);
        assert_eq!(c.sum_ns, 2 * (99 * 30_000 + 60_000_000_000 + 25_000));
    }
}
