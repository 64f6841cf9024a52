//! The queues between the workers and the service thread, and the pool of packet
//! buffers they share: bounded and lock-free, so a worker never waits for the
//! service thread. Workers only touch [`ServiceQueues::submit`],
//! [`ServiceQueues::take_reply`] and [`ServiceQueues::recycle`].

use crate::telemetry::{counted_enum, Counters};
use crossbeam_queue::ArrayQueue;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

counted_enum! {
    /// What the service thread counts.
    ServiceEvent {
        Handled => "handled", "Packets for gateway addresses the service thread took.";
        Replies => "replies", "Replies the service thread handed back to workers.";
        RepliesDropped => "replies_dropped", "Immediate replies (ICMP echo) that found their worker's queue full.";
    }
}

/// A packet travelling between a worker and the service thread.
pub struct ServicePacket {
    pub buf: Box<[u8]>,
    pub len: usize,
    pub worker: u16,
}

/// The queues and buffer pool shared by the workers and the service thread.
pub struct ServiceQueues {
    pub(super) to_service: ArrayQueue<ServicePacket>,
    pub(super) to_worker: Vec<ArrayQueue<ServicePacket>>,
    pub(super) free: ArrayQueue<Box<[u8]>>,
    buf_len: usize,
    /// Wakes the service thread from its poll; set once it runs.
    pub(super) waker: OnceLock<mio::Waker>,
    /// The service thread is (about to be) asleep: the next submit wakes it. A
    /// submit while it is awake costs no system call.
    pub(super) sleeping: AtomicBool,
    pub counters: Arc<Counters<ServiceEvent>>,
}

impl ServiceQueues {
    /// Queues of `depth` packets per direction, buffers of `buf_len` bytes.
    pub fn new(workers: usize, depth: usize, buf_len: usize) -> ServiceQueues {
        let free = ArrayQueue::new(depth * (workers + 2));
        for _ in 0..free.capacity() {
            let _ = free.push(vec![0u8; buf_len].into_boxed_slice());
        }
        ServiceQueues {
            to_service: ArrayQueue::new(depth),
            to_worker: (0..workers).map(|_| ArrayQueue::new(depth)).collect(),
            free,
            buf_len,
            waker: OnceLock::new(),
            sleeping: AtomicBool::new(false),
            counters: Arc::default(),
        }
    }

    /// Worker side: copies `pkt` for the service thread and wakes it. False when the
    /// pool or the queue is exhausted or the packet is larger than a buffer.
    pub fn submit(&self, worker: usize, pkt: &[u8]) -> bool {
        if pkt.len() > self.buf_len {
            return false;
        }
        let Some(mut buf) = self.free.pop() else {
            return false;
        };
        buf[..pkt.len()].copy_from_slice(pkt);
        let p = ServicePacket {
            buf,
            len: pkt.len(),
            worker: worker as u16,
        };
        match self.to_service.push(p) {
            Ok(()) => {
                if self.sleeping.swap(false, Ordering::SeqCst) {
                    if let Some(w) = self.waker.get() {
                        // A failed wake only delays the packet to the next timer.
                        let _ = w.wake();
                    }
                }
                true
            }
            Err(p) => {
                let _ = self.free.push(p.buf);
                false
            }
        }
    }

    /// Worker side: the next reply for worker `worker`.
    #[inline]
    pub fn take_reply(&self, worker: usize) -> Option<ServicePacket> {
        self.to_worker.get(worker)?.pop()
    }

    /// Returns a buffer to the pool.
    pub fn recycle(&self, buf: Box<[u8]>) {
        let _ = self.free.push(buf);
    }
}
