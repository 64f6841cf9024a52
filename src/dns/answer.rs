//! Reading queries and writing answers: the part of the DNS server that sees bytes
//! from workloads. Everything here works in place on the query and writes into a
//! caller's buffer, so answering a local name allocates nothing once that buffer has
//! grown to its largest answer. Parsing and building are NLnet Labs' `domain`; this
//! module decides what to say.

use super::cache::Flags;
use super::msg;
use super::zone::{wire_key, Lookup, Zone, MAX_NAME};
use domain::base::iana::{Class, Opcode, OptRcode, Rcode, Rtype};
use domain::base::message::Message;
use domain::base::message_builder::{AnswerBuilder, MessageBuilder, PushError, StaticCompressor};
use domain::base::name::ParsedName;
use domain::base::record::Ttl;
use domain::base::Serial;
use domain::rdata::{Aaaa, Ptr, Soa, A};
use std::net::IpAddr;

/// The UDP payload size every resolver may send without EDNS (RFC 1035).
pub const PLAIN_UDP: usize = 512;
/// The largest DNS message (TCP's two-byte length).
pub const MAX_MESSAGE: usize = 65_535;
/// Wire size of an OPT record without options.
const OPT_LEN: usize = 11;

/// Why a packet was not answered at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// Shorter than a DNS header.
    Short,
    /// A response, not a query: answering it could start a loop.
    Response,
}

/// A query whose question parsed, with what the answer depends on.
pub struct Query<'a> {
    pub msg: &'a Message<[u8]>,
    pub id: u16,
    pub qname: ParsedName<&'a [u8]>,
    pub qtype: Rtype,
    pub qclass: Class,
    /// The client's EDNS UDP size, if it sent an OPT record.
    pub edns: Option<u16>,
    /// The EDNS version it asked for (only 0 is defined).
    pub edns_version: u8,
    /// What besides the question decides which answers suit it.
    pub flags: Flags,
    /// Recursion desired.
    pub rd: bool,
    key: [u8; MAX_NAME],
    key_len: usize,
}

impl Query<'_> {
    /// The question's name in lower-case wire form.
    pub fn key(&self) -> &[u8] {
        &self.key[..self.key_len]
    }

    /// The largest answer the client takes over UDP, `ours` being the most this
    /// server sends in one datagram.
    pub fn udp_limit(&self, ours: usize) -> usize {
        match self.edns {
            Some(size) => usize::from(size).clamp(PLAIN_UDP, ours.max(PLAIN_UDP)),
            None => PLAIN_UDP,
        }
    }
}

/// What became of a packet that is not a well-formed query.
#[derive(Debug, PartialEq, Eq)]
pub enum Unusable {
    /// Not answered.
    Ignored(Ignored),
    /// Answered with this code, the reply in the caller's buffer.
    Refused(Rcode),
    /// Answered BADVERS: an EDNS version other than 0.
    BadVersion,
}

/// Reads a query. A packet that is a query but not one this server can read gets an
/// error reply in `out` (FORMERR, NOTIMP, BADVERS; offering `advertise` when the
/// query spoke EDNS); one that is not a query at all is ignored.
pub fn parse<'a>(packet: &'a [u8], advertise: u16, out: &mut Vec<u8>) -> Result<Query<'a>, Unusable> {
    let Ok(msg) = Message::from_slice(packet) else {
        return Err(Unusable::Ignored(Ignored::Short));
    };
    let header = msg.header();
    if header.qr() {
        return Err(Unusable::Ignored(Ignored::Response));
    }
    if header.opcode() != Opcode::QUERY {
        error_reply(msg, Rcode::NOTIMP, advertise, out);
        return Err(Unusable::Refused(Rcode::NOTIMP));
    }
    let Ok(question) = msg.sole_question() else {
        error_reply(msg, Rcode::FORMERR, advertise, out);
        return Err(Unusable::Refused(Rcode::FORMERR));
    };
    if !msg::opt_ok(packet) {
        error_reply(msg, Rcode::FORMERR, advertise, out);
        return Err(Unusable::Refused(Rcode::FORMERR));
    }
    let (edns, edns_version, dnssec_ok) = match msg.opt() {
        Some(opt) => (Some(opt.udp_payload_size()), opt.version(), opt.dnssec_ok()),
        None => (None, 0, false),
    };
    let mut q = Query {
        msg,
        id: header.id(),
        qname: *question.qname(),
        qtype: question.qtype(),
        qclass: question.qclass(),
        edns,
        edns_version,
        flags: Flags {
            edns: edns.is_some(),
            dnssec_ok,
            checking_disabled: header.cd(),
        },
        rd: header.rd(),
        key: [0; MAX_NAME],
        key_len: 0,
    };
    let Some(len) = wire_key(&q.qname, &mut q.key).map(<[u8]>::len) else {
        error_reply(msg, Rcode::FORMERR, advertise, out);
        return Err(Unusable::Refused(Rcode::FORMERR));
    };
    q.key_len = len;
    if edns_version > 0 {
        badvers_reply(&q, out);
        return Err(Unusable::BadVersion);
    }
    Ok(q)
}

/// A local answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answered {
    pub rcode: Rcode,
    /// The answer did not fit the client's limit: TC set, answers left out.
    pub truncated: bool,
}

type Builder<'o> = AnswerBuilder<StaticCompressor<&'o mut Vec<u8>>>;

/// Answers `q` from `zone` into `out` if the name is the zone's (`None`: forward
/// it), in at most `limit` bytes, offering `advertise` as this server's EDNS size.
/// Several addresses of one name are all answered, starting at `rotate`.
pub fn answer_local(
    zone: &Zone,
    q: &Query<'_>,
    limit: usize,
    advertise: u16,
    rotate: usize,
    out: &mut Vec<u8>,
) -> Option<Answered> {
    let found = zone.lookup(q.key());
    if found == Lookup::Elsewhere {
        return None;
    }
    if q.qclass != Class::IN && q.qclass != Class::ANY {
        error_reply(q.msg, Rcode::REFUSED, advertise, out);
        return Some(Answered {
            rcode: Rcode::REFUSED,
            truncated: false,
        });
    }
    let rcode = if found == Lookup::NoName {
        Rcode::NXDOMAIN
    } else {
        Rcode::NOERROR
    };
    let limit = limit.min(MAX_MESSAGE);
    let mut b = MessageBuilder::from_target(StaticCompressor::new(&mut *out)).expect("a Vec grows");
    // The builder refuses a push that reaches its limit: one more is the most.
    b.set_push_limit(limit.saturating_sub(if q.edns.is_some() { OPT_LEN } else { 0 }) + 1);
    let Ok(mut ans) = b.start_answer(q.msg, rcode) else {
        // Only a question longer than the limit: not a real client.
        error_reply(q.msg, Rcode::FORMERR, advertise, out);
        return Some(Answered {
            rcode: Rcode::FORMERR,
            truncated: false,
        });
    };
    ans.header_mut().set_aa(true);
    ans.header_mut().set_ra(true);
    ans.header_mut().set_cd(q.msg.header().cd());
    let ttl = Ttl::from_secs(zone.ttl());
    let (qname, qtype) = (&q.qname, q.qtype);
    let any = qtype == Rtype::ANY;
    let pushed: Result<usize, PushError> = (|| {
        let mut n = 0;
        match found {
            Lookup::Found(ips) => {
                for i in 0..ips.len() {
                    match ips[(i + rotate) % ips.len()] {
                        IpAddr::V4(a) if any || qtype == Rtype::A => ans.push((qname, Class::IN, ttl, A::new(a)))?,
                        IpAddr::V6(a) if any || qtype == Rtype::AAAA => {
                            ans.push((qname, Class::IN, ttl, Aaaa::new(a)))?
                        }
                        _ => continue,
                    }
                    n += 1;
                }
            }
            Lookup::Reverse(names) if any || qtype == Rtype::PTR => {
                for name in names {
                    ans.push((qname, Class::IN, ttl, Ptr::new(name)))?;
                    n += 1;
                }
            }
            _ => {}
        }
        if zone.is_apex(q.key()) && (any || qtype == Rtype::SOA) {
            ans.push((qname, Class::IN, ttl, soa(zone)))?;
            n += 1;
        }
        Ok(n)
    })();
    let truncated = pushed.is_err();
    let ans = if truncated { ans.tc_rewind_into() } else { ans };
    let mut auth = ans.authority();
    if matches!(pushed, Ok(0)) && !matches!(found, Lookup::Reverse(_)) {
        // A negative answer names the zone's SOA, so resolvers cache it no longer
        // than the TTL (RFC 2308); the answer stands without it if it does not fit.
        // (Not for a reverse name: that is not in the zone.)
        let _ = auth.push((zone.domain(), Class::IN, Ttl::from_secs(zone.ttl()), soa(zone)));
    }
    finish(auth.additional(), q.edns.is_some(), advertise);
    Some(Answered { rcode, truncated })
}

/// The zone's SOA: its serial changes with the records; negative answers are
/// cached no longer than the TTL.
fn soa(zone: &Zone) -> Soa<&domain::base::Name<Vec<u8>>> {
    Soa::new(
        zone.domain(),
        zone.hostmaster(),
        Serial(zone.serial()),
        Ttl::from_secs(3600),
        Ttl::from_secs(600),
        Ttl::from_secs(86_400),
        Ttl::from_secs(zone.ttl()),
    )
}

/// Ends a reply: an OPT record offering `advertise` when the query had one.
fn finish(
    mut add: domain::base::message_builder::AdditionalBuilder<StaticCompressor<&mut Vec<u8>>>,
    edns: bool,
    advertise: u16,
) {
    if edns {
        add.clear_push_limit();
        let _ = add.opt(|o| {
            o.set_udp_payload_size(advertise);
            Ok(())
        });
    }
    let _ = add.finish();
}

/// An answer with no records and `rcode`, echoing the question when it parses, with
/// an OPT record offering `advertise` when the query had one (RFC 6891 §7).
pub fn error_reply(msg: &Message<[u8]>, rcode: Rcode, advertise: u16, out: &mut Vec<u8>) {
    let b = MessageBuilder::from_target(StaticCompressor::new(&mut *out)).expect("a Vec grows");
    let mut ans: Builder<'_> = if msg.sole_question().is_ok() {
        b.start_error(msg, rcode)
    } else {
        let mut b = b;
        let h = b.header_mut();
        h.set_id(msg.header().id());
        h.set_qr(true);
        h.set_opcode(msg.header().opcode());
        h.set_rd(msg.header().rd());
        h.set_rcode(rcode);
        b.answer()
    };
    ans.header_mut().set_ra(true);
    finish(ans.additional(), msg.opt().is_some(), advertise);
}

/// The answer to a query for an EDNS version this server does not speak.
fn badvers_reply(q: &Query<'_>, out: &mut Vec<u8>) {
    let b = MessageBuilder::from_target(StaticCompressor::new(&mut *out)).expect("a Vec grows");
    let mut ans = b.start_error(q.msg, Rcode::NOERROR);
    ans.header_mut().set_ra(true);
    let mut add = ans.additional();
    let _ = add.opt(|o| {
        o.set_udp_payload_size(PLAIN_UDP as u16);
        o.set_rcode(OptRcode::BADVERS);
        Ok(())
    });
    let _ = add.finish();
}

/// A copy of `reply` cut to fit `limit` for a UDP client: when it is longer, only
/// its header and question, with TC set (and an OPT record offering `advertise` if
/// it had one), so that the client asks again over TCP.
pub fn fit_udp(reply: &[u8], limit: usize, advertise: u16, out: &mut Vec<u8>) -> bool {
    out.clear();
    if reply.len() <= limit {
        out.extend_from_slice(reply);
        return false;
    }
    let Ok(msg) = Message::from_slice(reply) else {
        return false;
    };
    let b = MessageBuilder::from_target(StaticCompressor::new(&mut *out)).expect("a Vec grows");
    let mut ans = b.start_error(msg, msg.header().rcode());
    let h = ans.header_mut();
    *h = msg.header();
    h.set_tc(true);
    let _ = ans.finish();
    if msg::opt(reply).is_some() {
        msg::push_opt(out, advertise);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::super::zone::Entry;
    use super::*;
    use domain::rdata::AllRecordData;

    pub(crate) struct R(pub &'static str, pub &'static str);
    impl Entry for R {
        fn fqdn(&self) -> &str {
            self.0
        }
        fn ip(&self) -> IpAddr {
            self.1.parse().unwrap()
        }
    }

    use crate::testkit::dns_query as query;

    fn zone() -> Zone {
        let mut recs = vec![
            R("web.weave.local.", "198.19.1.5"),
            R("web.weave.local.", "198.19.1.6"),
            R("web.weave.local.", "198.19.1.7"),
            R("v6.weave.local.", "fd00::7"),
        ];
        let many: &'static [&'static str] = Box::leak(
            (1..=40)
                .map(|i| &*Box::leak(format!("198.19.2.{i}").into_boxed_str()))
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        );
        recs.extend(many.iter().map(|a| R("many.weave.local.", a)));
        Zone::build("weave.local.", 1, 3, &recs)
    }

    fn ask(z: &Zone, name: &str, qtype: Rtype, edns: Option<u16>, rotate: usize) -> (Option<Answered>, Vec<u8>) {
        let pkt = query(name, qtype, edns);
        let mut out = Vec::new();
        let q = parse(&pkt, 1400, &mut out).ok().unwrap();
        let limit = q.udp_limit(1400);
        (answer_local(z, &q, limit, 1400, rotate, &mut out), out)
    }

    fn answers(reply: &[u8]) -> Vec<String> {
        let msg = Message::from_slice(reply).unwrap();
        msg.answer()
            .unwrap()
            .limit_to::<AllRecordData<_, ParsedName<_>>>()
            .map(|r| r.unwrap().data().to_string())
            .collect()
    }

    #[test]
    fn names_are_answered_with_every_address_rotated() {
        let z = zone();
        let (a, out) = ask(&z, "Web.Weave.Local.", Rtype::A, None, 0);
        assert_eq!(
            a,
            Some(Answered {
                rcode: Rcode::NOERROR,
                truncated: false
            })
        );
        let msg = Message::from_slice(&out).unwrap();
        assert!(msg.header().qr() && msg.header().aa() && msg.header().ra() && msg.header().rd());
        assert_eq!(msg.header().id(), 0x1234);
        assert_eq!(answers(&out), ["198.19.1.5", "198.19.1.6", "198.19.1.7"]);
        let (_, out) = ask(&z, "web.weave.local.", Rtype::A, None, 1);
        assert_eq!(answers(&out), ["198.19.1.6", "198.19.1.7", "198.19.1.5"]);
        // Compression: the owner of every answer points at the question.
        assert!(out.len() < 12 + 21 + 3 * (2 + 10 + 4) + 1);
    }

    #[test]
    fn negative_answers_tell_a_missing_name_from_a_missing_type() {
        let z = zone();
        let (a, out) = ask(&z, "nope.weave.local.", Rtype::A, None, 0);
        assert_eq!(a.unwrap().rcode, Rcode::NXDOMAIN);
        let msg = Message::from_slice(&out).unwrap();
        assert_eq!(msg.header_counts().ancount(), 0);
        assert_eq!(msg.header_counts().nscount(), 1, "the SOA");
        let (a, out) = ask(&z, "web.weave.local.", Rtype::AAAA, None, 0);
        assert_eq!(a.unwrap().rcode, Rcode::NOERROR, "NODATA, not NXDOMAIN");
        assert!(answers(&out).is_empty());
        let (_, out) = ask(&z, "v6.weave.local.", Rtype::AAAA, None, 0);
        assert_eq!(answers(&out), ["fd00::7"]);
        assert_eq!(ask(&z, "example.com.", Rtype::A, None, 0).0, None, "forwarded");
    }

    #[test]
    fn reverse_names_answer_ptr() {
        let z = zone();
        let (a, out) = ask(&z, "6.1.19.198.in-addr.arpa.", Rtype::PTR, None, 0);
        assert_eq!(a.unwrap().rcode, Rcode::NOERROR);
        assert_eq!(answers(&out), ["web.weave.local."]);
    }

    #[test]
    fn large_answers_are_truncated_for_plain_udp_and_whole_with_edns() {
        let z = zone();
        let (a, out) = ask(&z, "many.weave.local.", Rtype::A, None, 0);
        assert!(a.unwrap().truncated);
        let msg = Message::from_slice(&out).unwrap();
        assert!(msg.header().tc());
        assert!(out.len() <= PLAIN_UDP);
        let (a, out) = ask(&z, "many.weave.local.", Rtype::A, Some(1232), 0);
        assert!(!a.unwrap().truncated);
        assert_eq!(answers(&out).len(), 40);
        assert!(Message::from_slice(&out).unwrap().opt().is_some());
    }

    #[test]
    fn bad_queries_get_error_codes_or_are_ignored() {
        let mut out = Vec::new();
        assert_eq!(
            parse(&[1, 2, 3], 1400, &mut out).err(),
            Some(Unusable::Ignored(Ignored::Short))
        );
        let mut resp = query("a.b.", Rtype::A, None);
        resp[2] |= 0x80;
        assert_eq!(
            parse(&resp, 1400, &mut out).err(),
            Some(Unusable::Ignored(Ignored::Response))
        );
        let mut none = query("a.b.", Rtype::A, None);
        none[5] = 0;
        assert_eq!(
            parse(&none, 1400, &mut out).err(),
            Some(Unusable::Refused(Rcode::FORMERR))
        );
        assert_eq!(Message::from_slice(&out).unwrap().header().rcode(), Rcode::FORMERR);
        let mut notify = query("a.b.", Rtype::A, None);
        notify[2] |= 4 << 3;
        assert_eq!(
            parse(&notify, 1400, &mut out).err(),
            Some(Unusable::Refused(Rcode::NOTIMP))
        );
        let mut cut = query("web.weave.local.", Rtype::A, None);
        cut.truncate(20);
        assert_eq!(
            parse(&cut, 1400, &mut out).err(),
            Some(Unusable::Refused(Rcode::FORMERR))
        );
        let mut v1 = query("a.b.", Rtype::A, Some(1232));
        let n = v1.len();
        v1[n - 11 + 6] = 1; // OPT: the version byte of the TTL field
        assert_eq!(parse(&v1, 1400, &mut out).err(), Some(Unusable::BadVersion));
        assert_eq!(Message::from_slice(&out).unwrap().opt_rcode(), OptRcode::BADVERS);
    }

    #[test]
    fn a_long_reply_fits_plain_udp_as_a_truncated_header() {
        let z = zone();
        let (_, whole) = ask(&z, "many.weave.local.", Rtype::A, Some(4096), 0);
        let mut out = Vec::new();
        assert!(fit_udp(&whole, 512, 1232, &mut out));
        let msg = Message::from_slice(&out).unwrap();
        assert!(msg.header().tc() && msg.header_counts().ancount() == 0 && msg.sole_question().is_ok());
        assert!(!fit_udp(&whole, 65535, 1232, &mut out));
        assert_eq!(out, whole);
    }
}
