//! DNS for workloads: the names of the domain answered at every gateway address,
//! everything else forwarded upstream and cached.
//!
//! This module decides and owns no sockets: the service thread
//! ([`crate::service`]) receives queries, calls in here, and sends what it is told.
//! The model publishes the records it keeps as a [`Zone`] through [`Dns::publish`]
//! before a write that changed them answers; the service thread reads the current
//! zone per query without a lock.
//!
//! - [`zone`]: the published, immutable view of the records;
//! - [`answer`]: reading queries and writing answers, in place;
//! - [`forward`]: queries on their way upstream;
//! - [`cache`]: upstream answers kept for their TTL, and the hostnames they taught.
//!
//! It may touch `telemetry` and nothing else of the crate.

pub mod answer;
pub mod cache;
pub mod forward;
pub mod msg;
pub mod zone;

pub use zone::{Entry, Zone};

use crate::telemetry::{counted_enum, new_histogram, Counters, Latency};
use arc_swap::{ArcSwap, Guard};
use cache::Learned;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

counted_enum! {
    /// What the DNS server counts.
    DnsEvent {
        QueriesA => "queries_a", "Queries for A records.";
        QueriesAaaa => "queries_aaaa", "Queries for AAAA records.";
        QueriesPtr => "queries_ptr", "Queries for PTR records.";
        QueriesOther => "queries_other", "Queries for any other type.";
        QueriesTcp => "queries_tcp", "Queries that came over TCP.";
        Noerror => "noerror", "Answers with NOERROR (with or without records).";
        Nxdomain => "nxdomain", "Answers with NXDOMAIN.";
        Servfail => "servfail", "Answers with SERVFAIL (every upstream failed or timed out).";
        Formerr => "formerr", "Answers with FORMERR (a query that does not parse).";
        Notimp => "notimp", "Answers with NOTIMP (not a standard query).";
        Refused => "refused", "Answers with REFUSED (no upstream, too many outstanding, wrong class).";
        Badvers => "badvers", "Answers with BADVERS (an EDNS version other than 0).";
        OtherRcode => "other_rcode", "Forwarded answers with any other code.";
        Local => "local", "Queries answered from the domain's records.";
        Forwarded => "forwarded", "Queries sent upstream.";
        CacheHits => "cache_hits", "Queries answered from the cache of upstream answers.";
        UpstreamRetries => "upstream_retries", "Queries asked again of the next upstream after a timeout.";
        UpstreamTimeouts => "upstream_timeouts", "Queries no upstream answered in time (answered SERVFAIL).";
        UpstreamTcp => "upstream_tcp", "Truncated upstream answers asked again over TCP.";
        UpstreamMalformed => "upstream_malformed", "Upstream answers whose records do not parse (answered SERVFAIL, not cached).";
        Truncated => "truncated", "UDP answers cut short with TC set (the client retries over TCP).";
        DroppedShort => "dropped_short", "Packets shorter than a DNS header.";
        DroppedResponse => "dropped_response", "Responses sent to the server, not queries.";
        DroppedUnexpected => "dropped_unexpected", "Upstream packets that answer no outstanding query.";
        DroppedSend => "dropped_send", "Answers that found the socket's buffer full.";
        DroppedTcp => "dropped_tcp", "Upstream TCP connections not opened for want of a free slot (the truncated answer is passed on). Client connections beyond the free slots are reset by the stack, uncounted.";
    }
}

/// What the configuration decides for DNS.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The domain, absolute and lower case.
    pub domain: String,
    /// TTL of answers for the domain's names, seconds.
    pub ttl: u32,
    /// Servers asked for every other name.
    pub upstream: Vec<SocketAddr>,
    /// How long one upstream has to answer before the next is asked.
    pub timeout: Duration,
    /// Upstream answers kept at most.
    pub cache_size: usize,
    /// Longest an upstream answer is kept, seconds.
    pub cache_max_ttl: u32,
    /// Queries outstanding upstream at most.
    pub max_pending: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            domain: "weave.local.".into(),
            ttl: 1,
            upstream: Vec::new(),
            timeout: Duration::from_secs(2),
            cache_size: 4096,
            cache_max_ttl: 3600,
            max_pending: 1024,
        }
    }
}

/// The DNS state shared by the model (which publishes), the service thread (which
/// answers) and the API (which reads).
pub struct Dns {
    pub settings: Settings,
    zone: ArcSwap<Zone>,
    serial: AtomicU32,
    pub counters: Arc<Counters<DnsEvent>>,
    latency: Mutex<Histogram<u64>>,
    /// What upstream answers taught; the service thread locks it per upstream
    /// answer, the API per read.
    learned: Mutex<Learned>,
    cached: AtomicUsize,
    pending: AtomicUsize,
}

impl Dns {
    pub fn new(settings: Settings) -> Dns {
        let zone = Zone::empty(&settings.domain, settings.ttl);
        let learned = Learned::new(settings.cache_size);
        Dns {
            settings,
            zone: ArcSwap::from_pointee(zone),
            serial: AtomicU32::new(0),
            counters: Arc::default(),
            latency: Mutex::new(new_histogram()),
            learned: Mutex::new(learned),
            cached: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
        }
    }

    /// Replaces the zone by one of `records`: queries answered after this returns
    /// see them.
    pub fn publish<'a, E: Entry + 'a>(&self, records: impl IntoIterator<Item = &'a E>) {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let zone = Zone::build(&self.settings.domain, self.settings.ttl, serial, records);
        self.zone.store(Arc::new(zone));
    }

    /// The current zone.
    #[inline]
    pub fn zone(&self) -> Guard<Arc<Zone>> {
        self.zone.load()
    }

    /// The service thread's timings, merged about once a second.
    pub fn merge_latency(&self, local: &mut Histogram<u64>) {
        let _ = self.latency.lock().add(&*local);
        local.reset();
    }

    pub fn latency(&self) -> Latency {
        Latency::of(&self.latency.lock())
    }

    pub(crate) fn learned(&self) -> &Mutex<Learned> {
        &self.learned
    }

    /// How many hostnames upstream answers taught.
    pub fn learned_len(&self) -> usize {
        self.learned.lock().len()
    }

    /// The hostnames upstream answers taught: name, addresses, unix seconds.
    pub fn learned_entries(&self) -> Vec<(String, Vec<IpAddr>, u64)> {
        let entries = self.learned.lock().entries();
        entries.into_iter().map(|(n, e)| (n, e.ips, e.last_seen)).collect()
    }

    /// The service thread's gauges: cached answers and outstanding queries.
    pub fn set_gauges(&self, cached: usize, pending: usize) {
        self.cached.store(cached, Ordering::Relaxed);
        self.pending.store(pending, Ordering::Relaxed);
    }

    pub fn cached(&self) -> usize {
        self.cached.load(Ordering::Relaxed)
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }
}
