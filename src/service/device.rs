//! smoltcp's view of the service queues: a `phy::Device` whose received packets are
//! what workers handed over and whose transmitted packets go back to the worker that
//! brought the request.

use super::queues::{ServiceEvent, ServicePacket, ServiceQueues};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant as SmolInstant;
use std::collections::VecDeque;
use std::sync::Arc;

/// smoltcp's view of the queues.
pub(super) struct QueueDevice {
    pub(super) queues: Arc<ServiceQueues>,
    pub(super) rx: VecDeque<ServicePacket>,
    /// The worker whose packet is being processed: replies go back to it.
    pub(super) current: u16,
    /// Workers that got replies in this round, as a bit set of the first 64.
    pub(super) woken: u64,
    pub(super) mtu: usize,
}

pub(super) struct Rx(ServicePacket, Arc<ServiceQueues>);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(&self.0.buf[..self.0.len]);
        self.1.recycle(self.0.buf);
        r
    }
}

pub(super) struct Tx<'a> {
    dev: &'a mut QueueDevice,
    /// Taken when the token is used; a token smoltcp drops unused (a datagram for a
    /// socket gets no immediate reply) gives its buffer back to the pool.
    buf: Option<Box<[u8]>>,
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.dev.queues.recycle(buf);
        }
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(mut self, len: usize, f: F) -> R {
        let mut buf = self.buf.take().expect("a token is consumed once");
        let len = len.min(buf.len());
        let r = f(&mut buf[..len]);
        let w = self.dev.current;
        let q = &self.dev.queues;
        let p = ServicePacket { buf, len, worker: w };
        match q.to_worker.get(usize::from(w)).map(|tw| tw.push(p)) {
            Some(Ok(())) => {
                q.counters.inc(ServiceEvent::Replies);
                self.dev.woken |= 1u64 << (w % 64);
            }
            Some(Err(p)) => {
                q.counters.inc(ServiceEvent::RepliesDropped);
                q.recycle(p.buf);
            }
            None => {}
        }
        r
    }
}

impl Device for QueueDevice {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: SmolInstant) -> Option<(Rx, Tx<'_>)> {
        let buf = self.queues.free.pop()?;
        let Some(p) = self.rx.pop_front() else {
            self.queues.recycle(buf);
            return None;
        };
        self.current = p.worker;
        let q = self.queues.clone();
        Some((
            Rx(p, q),
            Tx {
                dev: self,
                buf: Some(buf),
            },
        ))
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<Tx<'_>> {
        // A packet sent on its own (an answer that came from upstream, a TCP
        // segment) may go out through any worker: the last one that brought a
        // packet if its queue has room, else the first that has. None has: smoltcp
        // keeps the packet and offers it again at the next poll.
        let q = &self.queues;
        let room = |w: usize| q.to_worker.get(w).is_some_and(|tw| !tw.is_full());
        let w = if room(usize::from(self.current)) {
            usize::from(self.current)
        } else {
            (0..q.to_worker.len()).find(|w| room(*w))?
        };
        let buf = q.free.pop()?;
        self.current = w as u16;
        Some(Tx {
            dev: self,
            buf: Some(buf),
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = self.mtu;
        c
    }
}
