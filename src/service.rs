//! The service thread: tunloom's own IP endpoint at gateway addresses.
//!
//! A packet whose destination routes to [`NextHop::Service`](crate::snapshot::NextHop)
//! (a configured gateway address) does not go to a peer: the worker copies it into a
//! pooled buffer and hands it over a bounded lock-free queue. This thread feeds those
//! packets to a smoltcp interface (ICMP echo today; later issues add DNS on UDP 53)
//! and hands each reply back to the worker that brought the request, waking it; the
//! worker writes the reply to its TUN queue. When a queue or the buffer pool is
//! exhausted the packet is dropped and counted, never waited for.

use crate::snapshot::Published;
use crossbeam_queue::ArrayQueue;
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// A packet travelling between a worker and the service thread.
pub struct ServicePacket {
    pub buf: Box<[u8]>,
    pub len: usize,
    pub worker: u16,
}

/// The queues and buffer pool shared by the workers and the service thread.
pub struct ServiceQueues {
    to_service: ArrayQueue<ServicePacket>,
    to_worker: Vec<ArrayQueue<ServicePacket>>,
    free: ArrayQueue<Box<[u8]>>,
    buf_len: usize,
    thread: OnceLock<Thread>,
    pub handled: AtomicU64,
    pub replies: AtomicU64,
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
            thread: OnceLock::new(),
            handled: AtomicU64::new(0),
            replies: AtomicU64::new(0),
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
                if let Some(t) = self.thread.get() {
                    t.unpark();
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

/// smoltcp's view of the queues.
struct QueueDevice {
    queues: Arc<ServiceQueues>,
    rx: VecDeque<ServicePacket>,
    /// The worker whose packet is being processed: replies go back to it.
    current: u16,
    /// Workers that got replies in this round, as a bit set of the first 64.
    woken: u64,
    mtu: usize,
}

struct Rx(ServicePacket, Arc<ServiceQueues>);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(&self.0.buf[..self.0.len]);
        self.1.recycle(self.0.buf);
        r
    }
}

struct Tx<'a> {
    dev: &'a mut QueueDevice,
    buf: Box<[u8]>,
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(mut self, len: usize, f: F) -> R {
        let len = len.min(self.buf.len());
        let r = f(&mut self.buf[..len]);
        let w = self.dev.current;
        let q = &self.dev.queues;
        let p = ServicePacket {
            buf: self.buf,
            len,
            worker: w,
        };
        match q.to_worker.get(usize::from(w)).map(|tw| tw.push(p)) {
            Some(Ok(())) => {
                q.replies.fetch_add(1, Ordering::Relaxed);
                self.dev.woken |= 1u64 << (w % 64);
            }
            Some(Err(p)) => q.recycle(p.buf),
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
        Some((Rx(p, q), Tx { dev: self, buf }))
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<Tx<'_>> {
        let buf = self.queues.free.pop()?;
        Some(Tx { dev: self, buf })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = self.mtu;
        c
    }
}

/// The service endpoint: a smoltcp interface answering at the gateway addresses.
pub struct Service {
    iface: Interface,
    sockets: SocketSet<'static>,
    dev: QueueDevice,
    started: Instant,
}

impl Service {
    /// `gateways` must not be empty.
    pub fn new(queues: Arc<ServiceQueues>, gateways: &[IpAddr], mtu: usize) -> Service {
        let mut dev = QueueDevice {
            queues,
            rx: VecDeque::with_capacity(1024),
            current: 0,
            woken: 0,
            mtu,
        };
        let started = Instant::now();
        let mut iface = Interface::new(Config::new(HardwareAddress::Ip), &mut dev, SmolInstant::from_micros(0));
        // Workers hand over only packets routed to a gateway, so the interface
        // accepts any destination ("any IP") and answers from the address asked for.
        iface.set_any_ip(true);
        let v4 = gateways.iter().find(|a| a.is_ipv4());
        let v6 = gateways.iter().find(|a| a.is_ipv6());
        iface.update_ip_addrs(|addrs| {
            for a in [v4, v6].into_iter().flatten() {
                let len = if a.is_ipv4() { 32 } else { 128 };
                let _ = addrs.push(IpCidr::new(IpAddress::from(*a), len));
            }
        });
        if let Some(IpAddr::V4(a)) = v4 {
            let _ = iface.routes_mut().add_default_ipv4_route(*a);
        }
        if let Some(IpAddr::V6(a)) = v6 {
            let _ = iface.routes_mut().add_default_ipv6_route(*a);
        }
        Service {
            iface,
            sockets: SocketSet::new(Vec::new()),
            dev,
            started,
        }
    }

    fn now(&self) -> SmolInstant {
        SmolInstant::from_micros(self.started.elapsed().as_micros() as i64)
    }

    /// Processes everything queued. Returns the set of workers with replies.
    pub fn run_once(&mut self) -> u64 {
        while let Some(p) = self.dev.queues.to_service.pop() {
            self.dev.queues.handled.fetch_add(1, Ordering::Relaxed);
            self.dev.rx.push_back(p);
        }
        let now = self.now();
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        // Anything smoltcp did not take (it stops when the pool is dry) waits.
        std::mem::take(&mut self.dev.woken)
    }

    /// Runs until `shutdown`, waking workers that have replies.
    pub fn run(mut self, published: &Published, shutdown: &AtomicBool) {
        let _ = self.dev.queues.thread.set(std::thread::current());
        while !shutdown.load(Ordering::Relaxed) {
            let woken = self.run_once();
            for w in 0..64 {
                if woken >> w & 1 != 0 {
                    published.wake(w);
                }
            }
            if self.dev.queues.to_service.is_empty() {
                let delay = self
                    .iface
                    .poll_delay(self.now(), &self.sockets)
                    .map_or(Duration::from_millis(100), |d| Duration::from_micros(d.total_micros()))
                    .min(Duration::from_millis(100));
                std::thread::park_timeout(delay);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{Icmpv4Type, IpSlice, PacketBuilder};

    #[test]
    fn echo_requests_to_a_gateway_are_answered_to_the_worker_that_asked() {
        let q = Arc::new(ServiceQueues::new(2, 8, 1500));
        let gw: IpAddr = "198.19.1.254".parse().unwrap();
        let mut svc = Service::new(q.clone(), &[gw], 1450);
        let mut req = Vec::new();
        PacketBuilder::ipv4([198, 19, 1, 5], [198, 19, 1, 254], 64)
            .icmpv4_echo_request(7, 9)
            .write(&mut req, b"hello")
            .unwrap();
        assert!(q.submit(1, &req));
        let woken = svc.run_once();
        assert_eq!(woken, 0b10);
        assert!(q.take_reply(0).is_none());
        let r = q.take_reply(1).expect("a reply for worker 1");
        let ip = IpSlice::from_slice(&r.buf[..r.len]).unwrap();
        assert_eq!(ip.source_addr(), gw);
        assert_eq!(ip.destination_addr(), "198.19.1.5".parse::<IpAddr>().unwrap());
        let icmp = etherparse::Icmpv4Slice::from_slice(ip.payload().payload).unwrap();
        assert!(matches!(icmp.icmp_type(), Icmpv4Type::EchoReply(h) if h.id == 7 && h.seq == 9));
        assert_eq!(icmp.payload(), b"hello");
        q.recycle(r.buf);
        assert_eq!(q.handled.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_dry_pool_or_full_queue_refuses_instead_of_waiting() {
        let q = ServiceQueues::new(1, 1, 100);
        assert!(!q.submit(0, &[0u8; 200]), "larger than a buffer");
        assert!(q.submit(0, &[0u8; 20]));
        assert!(!q.submit(0, &[0u8; 20]), "queue of one is full");
    }
}
