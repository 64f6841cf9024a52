//! The service thread: tunloom's own IP endpoint at gateway addresses.
//!
//! A packet whose destination routes to [`NextHop::Service`](crate::snapshot::NextHop)
//! (a configured gateway address) does not go to a peer: the worker copies it into a
//! pooled buffer and hands it over a bounded lock-free queue. This thread feeds those
//! packets to a smoltcp interface (ICMP echo today; later issues add DNS on UDP 53)
//! and hands each reply back to the worker that brought the request, waking it; the
//! worker writes the reply to its TUN queue. When a queue or the buffer pool is
//! exhausted the packet is dropped and counted, never waited for.

mod device;
pub mod queues;

pub use queues::{ServiceEvent, ServicePacket, ServiceQueues};

use crate::snapshot::Published;
use device::QueueDevice;
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
            self.dev.queues.counters.inc(ServiceEvent::Handled);
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
        assert_eq!(q.counters.get(ServiceEvent::Handled), 1);
    }

    #[test]
    fn a_dry_pool_or_full_queue_refuses_instead_of_waiting() {
        let q = ServiceQueues::new(1, 1, 100);
        assert!(!q.submit(0, &[0u8; 200]), "larger than a buffer");
        assert!(q.submit(0, &[0u8; 20]));
        assert!(!q.submit(0, &[0u8; 20]), "queue of one is full");
    }
}
