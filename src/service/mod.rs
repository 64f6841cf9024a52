//! The service thread: tunloom's own IP endpoint at gateway addresses.
//!
//! A packet whose destination routes to [`NextHop::Service`](crate::snapshot::NextHop)
//! (a configured gateway address) does not go to a peer: the worker copies it into a
//! pooled buffer and hands it over a bounded lock-free queue. This thread feeds those
//! packets to a smoltcp interface (ICMP echo, and DNS on UDP and TCP 53: see `dns`)
//! and hands each reply back to the worker that brought the request, waking it; the
//! worker writes the reply to its TUN queue. When a queue or the buffer pool is
//! exhausted the packet is dropped and counted, never waited for.
//!
//! The thread sleeps in a mio poll: workers wake it through a `Waker` (only when it
//! said it was going to sleep), and the DNS server's upstream sockets wake it with
//! their answers.

mod device;
mod dns;
pub mod queues;

pub use queues::{ServiceEvent, ServicePacket, ServiceQueues};

use crate::snapshot::Published;
use device::QueueDevice;
use dns::DnsServer;
use mio::{Events, Poll, Token, Waker};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};
use std::collections::VecDeque;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAKE: Token = Token(0);

/// The service endpoint: a smoltcp interface answering at the gateway addresses.
pub struct Service {
    iface: Interface,
    sockets: SocketSet<'static>,
    dev: QueueDevice,
    started: Instant,
    poll: Poll,
    dns: DnsServer,
}

impl Service {
    /// `gateways` must not be empty.
    pub fn new(
        queues: Arc<ServiceQueues>,
        dns: Arc<crate::dns::Dns>,
        gateways: &[IpAddr],
        mtu: usize,
    ) -> io::Result<Service> {
        let poll = Poll::new()?;
        let _ = queues.waker.set(Waker::new(poll.registry(), WAKE)?);
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
        let mut sockets = SocketSet::new(Vec::new());
        let dns = DnsServer::new(dns, &mut sockets, poll.registry().try_clone()?, mtu);
        Ok(Service {
            iface,
            sockets,
            dev,
            started,
            poll,
            dns,
        })
    }

    fn now(&self) -> SmolInstant {
        SmolInstant::from_micros(self.started.elapsed().as_micros() as i64)
    }

    /// Takes what the poll has to say, waiting at most `timeout`: which upstream
    /// sockets are readable.
    fn wait(&mut self, events: &mut Events, timeout: Duration) {
        if let Err(e) = self.poll.poll(events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                log::error!("service: poll: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        for e in events.iter() {
            self.dns.ready(e.token());
        }
    }

    /// One pass without waiting, the poll asked first (what `run` does each time
    /// it wakes). Returns the set of workers with replies.
    pub fn step(&mut self, events: &mut Events) -> u64 {
        self.wait(events, Duration::ZERO);
        self.run_once()
    }

    /// Processes everything queued. Returns the set of workers with replies.
    pub fn run_once(&mut self) -> u64 {
        while let Some(p) = self.dev.queues.to_service.pop() {
            self.dev.queues.counters.inc(ServiceEvent::Handled);
            self.dev.rx.push_back(p);
        }
        let now = self.now();
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        self.dns.run(&mut self.sockets);
        // What the DNS server wrote goes out in the same pass.
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        // Anything smoltcp did not take (it stops when the pool is dry) waits.
        std::mem::take(&mut self.dev.woken)
    }

    /// Runs until `shutdown`, waking workers that have replies.
    pub fn run(mut self, published: &Published, shutdown: &AtomicBool) {
        let mut events = Events::with_capacity(64);
        while !shutdown.load(Ordering::Relaxed) {
            let woken = self.run_once();
            for w in 0..64 {
                if woken >> w & 1 != 0 {
                    published.wake(w);
                }
            }
            let now = Instant::now();
            let mut delay = self
                .iface
                .poll_delay(self.now(), &self.sockets)
                .map_or(Duration::from_millis(100), |d| Duration::from_micros(d.total_micros()))
                .min(Duration::from_millis(100));
            if let Some(t) = self.dns.next_deadline(&self.sockets) {
                delay = delay.min(t.saturating_duration_since(now));
            }
            // Say so before looking at the queue: a packet submitted after the look
            // sees the flag and wakes the poll.
            self.dev.queues.sleeping.store(true, Ordering::SeqCst);
            if !self.dev.queues.to_service.is_empty() {
                delay = Duration::ZERO;
            }
            self.wait(&mut events, delay);
            self.dev.queues.sleeping.store(false, Ordering::SeqCst);
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
        let dns = Arc::new(crate::dns::Dns::new(crate::dns::Settings::default()));
        let mut svc = Service::new(q.clone(), dns, &[gw], 1450).unwrap();
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

    fn dns_query(name: &str, id: u16) -> Vec<u8> {
        let mut q = crate::testkit::dns_query(name, domain::base::iana::Rtype::A, None);
        q[..2].copy_from_slice(&id.to_be_bytes());
        q
    }

    /// Sends one DNS query over UDP from 198.19.1.5:5353 to the gateway; the answer's
    /// source address and DNS message.
    fn ask(svc: &mut Service, q: &ServiceQueues, gw: IpAddr, name: &str) -> (IpAddr, Vec<u8>) {
        let mut pkt = Vec::new();
        let IpAddr::V4(g) = gw else { unreachable!() };
        PacketBuilder::ipv4([198, 19, 1, 5], g.octets(), 64)
            .udp(5353, 53)
            .write(&mut pkt, &dns_query(name, 0x0707))
            .unwrap();
        assert!(q.submit(0, &pkt));
        svc.run_once();
        let r = q.take_reply(0).expect("an answer");
        let ip = IpSlice::from_slice(&r.buf[..r.len]).unwrap();
        let udp = etherparse::UdpSlice::from_slice(ip.payload().payload).unwrap();
        assert_eq!((udp.source_port(), udp.destination_port()), (53, 5353));
        let out = (ip.source_addr(), udp.payload().to_vec());
        q.recycle(r.buf);
        out
    }

    #[test]
    fn dns_queries_to_a_gateway_are_answered_from_the_published_zone() {
        use crate::dns::{Dns, Settings};
        use domain::base::{iana::Rcode, Message};
        let q = Arc::new(ServiceQueues::new(1, 8, 1500));
        let gws: [IpAddr; 2] = ["198.19.1.254".parse().unwrap(), "198.19.0.1".parse().unwrap()];
        let dns = Arc::new(Dns::new(Settings::default()));
        let mut svc = Service::new(q.clone(), dns.clone(), &gws, 1450).unwrap();
        let (from, a) = ask(&mut svc, &q, gws[0], "web.weave.local.");
        assert_eq!(from, gws[0]);
        assert_eq!(Message::from_slice(&a).unwrap().header().rcode(), Rcode::NXDOMAIN);
        dns.publish(&[crate::model::Record {
            container: "c1".into(),
            ip: "198.19.64.2".parse().unwrap(),
            fqdn: "web.weave.local.".into(),
        }]);
        // Asked at the other gateway, answered from it.
        let (from, a) = ask(&mut svc, &q, gws[1], "web.weave.local.");
        assert_eq!(from, gws[1]);
        let m = Message::from_slice(&a).unwrap();
        assert_eq!(
            (m.header().id(), m.header().rcode(), m.header_counts().ancount()),
            (0x0707, Rcode::NOERROR, 1)
        );
        // No upstream configured: other names are refused, not left unanswered.
        let (_, a) = ask(&mut svc, &q, gws[0], "example.com.");
        assert_eq!(Message::from_slice(&a).unwrap().header().rcode(), Rcode::REFUSED);
        let c = dns.counters.snapshot();
        assert_eq!((c["queries_a"], c["local"], c["refused"], c["nxdomain"]), (3, 2, 1, 1));
        // Every buffer is back in the pool: a datagram for a socket, which smoltcp
        // answers later, does not leak the reply buffer it was offered.
        assert_eq!(q.free.len(), q.free.capacity());
    }

    #[test]
    fn a_dry_pool_or_full_queue_refuses_instead_of_waiting() {
        let q = ServiceQueues::new(1, 1, 100);
        assert!(!q.submit(0, &[0u8; 200]), "larger than a buffer");
        assert!(q.submit(0, &[0u8; 20]));
        assert!(!q.submit(0, &[0u8; 20]), "queue of one is full");
    }
}
