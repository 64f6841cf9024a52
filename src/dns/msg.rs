//! Record-level views of raw DNS messages, for the few things done to a message's
//! bytes in place rather than through a builder: finding each record's TTL, finding
//! and cutting the OPT record, lowering the EDNS size of a query passed on. Names
//! are skipped with `domain`'s parser (compression included); nothing is copied.

use domain::base::name::ParsedName;
use domain::dep::octseq::Parser;

pub const HEADER: usize = 12;
pub const RTYPE_A: u16 = 1;
pub const RTYPE_SOA: u16 = 6;
pub const RTYPE_AAAA: u16 = 28;
pub const RTYPE_OPT: u16 = 41;

/// One resource record of a message, as [`walk`] sees it.
pub struct Rr<'a> {
    /// 1 = answer, 2 = authority, 3 = additional.
    pub section: usize,
    /// Where the record starts (its owner name) and ends.
    pub start: usize,
    pub end: usize,
    pub rtype: u16,
    /// The class field (for OPT: the UDP payload size).
    pub class_at: usize,
    pub ttl: u32,
    pub ttl_at: usize,
    pub rdata: &'a [u8],
}

/// The labels of a name in uncompressed wire form, root excluded, each with where
/// it starts.
pub fn labels(wire: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let len = usize::from(*wire.get(at)?);
        if len == 0 {
            return None;
        }
        let label = wire.get(at + 1..at + 1 + len)?;
        let start = at;
        at += 1 + len;
        Some((start, label))
    })
}

fn count(msg: &[u8], at: usize) -> Option<usize> {
    msg.get(at..at + 2)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
}

/// Where the question section of `msg` ends, if it parses.
pub fn question_end(msg: &[u8]) -> Option<usize> {
    let mut p = Parser::from_ref(msg);
    p.advance(HEADER).ok()?;
    for _ in 0..count(msg, 4)? {
        ParsedName::skip(&mut p).ok()?;
        p.advance(4).ok()?;
    }
    Some(p.pos())
}

/// Visits every record of `msg` after its question; returns where the question
/// ends. `None` when the message does not parse to its last record.
pub fn walk<'a>(msg: &'a [u8], mut visit: impl FnMut(Rr<'a>)) -> Option<usize> {
    let counts = [count(msg, 6)?, count(msg, 8)?, count(msg, 10)?];
    let question_end = question_end(msg)?;
    let mut p = Parser::from_ref(msg);
    p.seek(question_end).ok()?;
    for (i, &n) in counts.iter().enumerate() {
        for _ in 0..n {
            let start = p.pos();
            ParsedName::skip(&mut p).ok()?;
            let rtype = p.parse_u16_be().ok()?;
            let class_at = p.pos();
            p.advance(2).ok()?;
            let ttl_at = p.pos();
            let ttl = p.parse_u32_be().ok()?;
            let len = usize::from(p.parse_u16_be().ok()?);
            let data = p.pos();
            p.advance(len).ok()?;
            visit(Rr {
                section: i + 1,
                start,
                end: p.pos(),
                rtype,
                class_at,
                ttl,
                ttl_at,
                rdata: &msg[data..data + len],
            });
        }
    }
    Some(question_end)
}

/// Whether every record of `msg` parses, its names included (compression pointers
/// that point backwards only, names within 255 bytes), and the counts match what is
/// there: an upstream answer that fails this is not passed on or cached.
pub fn well_formed(msg: &[u8]) -> bool {
    use domain::base::Message;
    use domain::rdata::AllRecordData;
    let Ok(m) = Message::from_slice(msg) else {
        return false;
    };
    let Ok(mut section) = m.answer() else {
        return false;
    };
    loop {
        for rec in &mut section {
            let Ok(rec) = rec else { return false };
            if rec.to_any_record::<AllRecordData<_, ParsedName<_>>>().is_err() {
                return false;
            }
        }
        match section.next_section() {
            Ok(Some(next)) => section = next,
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

/// Whether the OPT records of a query are as RFC 6891 §6.1.1 allows: at most one,
/// owned by the root.
pub fn opt_ok(msg: &[u8]) -> bool {
    let mut n = 0;
    let mut root = true;
    walk(msg, |rr| {
        if rr.rtype == RTYPE_OPT {
            n += 1;
            root &= msg.get(rr.start) == Some(&0);
        }
    });
    n <= 1 && root
}

/// The OPT record of `msg`: where it starts and ends, and where its size field is.
pub fn opt(msg: &[u8]) -> Option<(usize, usize, usize)> {
    let mut found = None;
    walk(msg, |rr| {
        if rr.section == 3 && rr.rtype == RTYPE_OPT && found.is_none() {
            found = Some((rr.start, rr.end, rr.class_at));
        }
    })?;
    found
}

/// Lowers the EDNS UDP size `msg` offers to at most `max` (a query passed upstream
/// asks for no more than this server can pass on in one datagram).
pub fn clamp_edns(msg: &mut [u8], max: u16) {
    if let Some((_, _, at)) = opt(msg) {
        let size = u16::from_be_bytes([msg[at], msg[at + 1]]);
        if size > max {
            msg[at..at + 2].copy_from_slice(&max.to_be_bytes());
        }
    }
}

/// `msg` without its OPT record into `out`, if the OPT record is its last record
/// (anything after it could point into what moves); `msg` as it is when it has none.
/// False when it cannot be cut.
pub fn without_opt(msg: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    match opt(msg) {
        None => out.extend_from_slice(msg),
        Some((start, end, _)) if end == msg.len() => {
            out.extend_from_slice(&msg[..start]);
            let ar = u16::from_be_bytes([out[10], out[11]]) - 1;
            out[10..12].copy_from_slice(&ar.to_be_bytes());
        }
        Some(_) => return false,
    }
    true
}

/// Appends an OPT record offering `size` with no options to `msg` (a message whose
/// last section is the additional one).
pub fn push_opt(msg: &mut Vec<u8>, size: u16) {
    if msg.len() < HEADER {
        return;
    }
    let ar = u16::from_be_bytes([msg[10], msg[11]]).saturating_add(1);
    msg[10..12].copy_from_slice(&ar.to_be_bytes());
    msg.push(0);
    msg.extend_from_slice(&RTYPE_OPT.to_be_bytes());
    msg.extend_from_slice(&size.to_be_bytes());
    msg.extend_from_slice(&[0; 6]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::base::iana::Rtype;
    use domain::base::{MessageBuilder, Name};
    use std::str::FromStr;

    fn query(edns: Option<u16>) -> Vec<u8> {
        crate::testkit::dns_query("a.example.", Rtype::A, edns)
    }

    #[test]
    fn answers_with_looping_names_or_short_records_are_not_well_formed() {
        let mut b = MessageBuilder::new_vec();
        b.header_mut().set_qr(true);
        let mut q = b.question();
        q.push((Name::<Vec<u8>>::from_str("a.example.").unwrap(), Rtype::A))
            .unwrap();
        let mut a = q.answer();
        a.push((
            Name::<Vec<u8>>::from_str("a.example.").unwrap(),
            60,
            domain::rdata::A::new([192, 0, 2, 1].into()),
        ))
        .unwrap();
        let good = a.finish();
        assert!(well_formed(&good));
        // The answer's owner, made a pointer to itself.
        let mut looping = good.clone();
        let at = HEADER + 11 + 4;
        looping[at..at + 2].copy_from_slice(&(0xc000u16 | at as u16).to_be_bytes());
        looping.drain(at + 2..at + 11);
        assert!(!well_formed(&looping));
        assert!(!well_formed(&good[..good.len() - 1]), "a record cut short");
        let mut two = query(Some(1232));
        let opt = two[two.len() - 11..].to_vec();
        two.extend_from_slice(&opt);
        two[11] = 2;
        assert!(!opt_ok(&two) && opt_ok(&query(Some(1232))) && opt_ok(&query(None)));
    }

    #[test]
    fn opt_records_are_found_clamped_cut_and_added() {
        let mut q = query(Some(4096));
        let (start, end, _) = opt(&q).unwrap();
        assert_eq!((end - start, end), (11, q.len()));
        clamp_edns(&mut q, 1400);
        let m = domain::base::Message::from_slice(&q).unwrap();
        assert_eq!(m.opt().unwrap().udp_payload_size(), 1400);
        let mut out = Vec::new();
        assert!(without_opt(&q, &mut out));
        assert_eq!(out, query(None));
        push_opt(&mut out, 1232);
        let m = domain::base::Message::from_slice(&out).unwrap();
        assert_eq!(m.opt().unwrap().udp_payload_size(), 1232);
        assert_eq!(opt(&query(None)), None);
        assert_eq!(question_end(&q), Some(HEADER + 11 + 4));
        assert!(walk(&q[..q.len() - 1], |_| {}).is_none(), "a cut record does not parse");
    }
}
