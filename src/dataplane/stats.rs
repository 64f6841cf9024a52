//! Per-worker counters and latency histograms, and their sums for the API.
//!
//! Each worker owns one cache-padded [`WorkerStats`]: it accumulates into a plain
//! local [`Tally`] while it works a batch and adds the tally to its atomics once per
//! batch, so counting costs no shared-cache traffic per packet. Batch processing times
//! go into a worker-local hdrhistogram that is merged into the shared one about once a
//! second. The control side only reads. Built on [`crate::telemetry`]'s counter
//! arrays; touches nothing else.

use crate::pipeline::DropReason;
use crate::telemetry::{counted_enum, flush, named, new_histogram};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, AtomicU64};

counted_enum! {
    /// A dataplane event counted per worker.
    Counter {
        InsidePackets => "inside_packets", "Packets read from the TUN device (after splitting superpackets).";
        InsideBytes => "inside_bytes", "Bytes of the packets read from the TUN device.";
        ForwardedPackets => "forwarded_packets", "VXLAN datagrams sent to peers.";
        ForwardedBytes => "forwarded_bytes", "Inner bytes of the VXLAN datagrams sent to peers.";
        OutsidePackets => "outside_packets", "Datagrams received on the data port (after splitting GRO trains).";
        OutsideBytes => "outside_bytes", "Bytes of the datagrams received on the data port.";
        DeliveredPackets => "delivered_packets", "Inner packets written to the TUN device.";
        DeliveredBytes => "delivered_bytes", "Bytes of the inner packets written to the TUN device.";
        IcmpErrors => "icmp_errors", "ICMP errors sent back to local senders.";
        ServicePackets => "service_packets", "Packets for gateway addresses handed to the service thread.";
        Batches => "batches", "Batches processed.";
        TunReads => "tun_reads", "Reads from the TUN queue (one superpacket each with offload).";
        TunWrites => "tun_write_calls", "Batched writes to the TUN queue.";
        UdpRecvCalls => "udp_recv_calls", "recvmmsg calls that returned data.";
        UdpSendCalls => "udp_send_calls", "sendmmsg calls.";
        GsoTrains => "gso_trains", "UDP sends carrying more than one segment (UDP_SEGMENT).";
        SpinHits => "spin_hits", "Adaptive spins after a batch that found more work (a wake-up saved).";
        SpinMisses => "spin_misses", "Adaptive spins that found nothing before the worker slept.";
        HairpinDelivered => "hairpin_delivered", "Packets from the TUN device for a container on this host, written back to it for the host to deliver (also in delivered_packets).";
        EgressPackets => "egress_packets", "Packets from a network's container to outside the overlay, written back to the TUN device for the host to route and masquerade (also in delivered_packets).";
    }
}

/// Per-batch accumulation, owned by one worker. Plain arrays sized by the enums, so
/// counting a packet is one add at a fixed offset.
#[derive(Clone)]
pub struct Tally {
    pub counters: [u64; Counter::COUNT],
    pub drops: [u64; DropReason::COUNT],
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            counters: [0; Counter::COUNT],
            drops: [0; DropReason::COUNT],
        }
    }
}

impl Tally {
    #[inline]
    pub fn add(&mut self, c: Counter, n: u64) {
        self.counters[c as usize] += n;
    }
    #[inline]
    pub fn drop(&mut self, r: DropReason, n: u64) {
        self.drops[r as usize] += n;
    }
}

/// The last values read from one worker, or their sum over all workers.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct CounterSnapshot {
    pub counters: BTreeMap<&'static str, u64>,
    pub drops: BTreeMap<&'static str, u64>,
}

impl CounterSnapshot {
    pub fn get(&self, name: &str) -> u64 {
        self.counters
            .get(name)
            .or_else(|| self.drops.get(name))
            .copied()
            .unwrap_or(0)
    }
    pub fn total_drops(&self) -> u64 {
        self.drops.values().sum()
    }
    fn add(&mut self, o: &CounterSnapshot) {
        for (k, v) in &o.counters {
            *self.counters.entry(k).or_default() += v;
        }
        for (k, v) in &o.drops {
            *self.drops.entry(k).or_default() += v;
        }
    }
}

/// The counters one worker publishes, inline (the struct is cache-padded per worker,
/// so no other thread's data shares their cache lines).
pub struct WorkerStats {
    counters: [AtomicU64; Counter::COUNT],
    drops: [AtomicU64; DropReason::COUNT],
    pub tid: AtomicI32,
    pub cpu: AtomicI32,
    histogram: Mutex<Histogram<u64>>,
}

impl Default for WorkerStats {
    fn default() -> Self {
        WorkerStats {
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
            tid: AtomicI32::new(0),
            cpu: AtomicI32::new(-1),
            histogram: Mutex::new(new_histogram()),
        }
    }
}

impl WorkerStats {
    /// Adds a batch's tally and clears it. Called by the owning worker only.
    pub fn flush(&self, t: &mut Tally) {
        flush(&self.counters, &mut t.counters);
        flush(&self.drops, &mut t.drops);
    }

    /// Merges a worker-local histogram into the shared one and clears it.
    pub fn merge_histogram(&self, local: &mut Histogram<u64>) {
        // Same bounds on both sides, so `add` cannot fail.
        let _ = self.histogram.lock().add(&*local);
        local.reset();
    }

    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            counters: named::<Counter>(&self.counters),
            drops: named::<DropReason>(&self.drops),
        }
    }

    pub fn histogram(&self) -> Histogram<u64> {
        self.histogram.lock().clone()
    }
}

/// Sums per-worker snapshots and histograms.
pub fn totals<'a>(workers: impl Iterator<Item = &'a WorkerStats>) -> (CounterSnapshot, Histogram<u64>) {
    let mut c = CounterSnapshot::default();
    let mut h = new_histogram();
    for w in workers {
        c.add(&w.snapshot());
        let _ = h.add(w.histogram());
    }
    (c, h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_utils::CachePadded;

    #[test]
    fn tallies_flush_into_atomics_and_sum() {
        let ws: Vec<CachePadded<WorkerStats>> = (0..2).map(|_| CachePadded::new(WorkerStats::default())).collect();
        let mut t = Tally::default();
        t.add(Counter::InsidePackets, 3);
        t.drop(DropReason::Spoofed, 2);
        ws[0].flush(&mut t);
        assert_eq!(t.counters[Counter::InsidePackets as usize], 0);
        t.add(Counter::InsidePackets, 4);
        ws[1].flush(&mut t);
        let mut h = new_histogram();
        h.record(1500).unwrap();
        ws[1].merge_histogram(&mut h);
        assert_eq!(h.len(), 0);
        let (c, hist) = totals(ws.iter().map(|w| &**w));
        assert_eq!(c.get("inside_packets"), 7);
        assert_eq!(c.get("spoofed"), 2);
        assert_eq!(c.total_drops(), 2);
        assert_eq!(hist.len(), 1);
        assert!((crate::telemetry::Latency::of(&hist).p50_us - 1.5).abs() < 0.01);
    }
}
