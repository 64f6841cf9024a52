//! This node's state as control messages: one or more pages of a hello (or one bye),
//! each within `MAX_MESSAGE_LEN` bytes and signed with the cluster secret when there
//! is one. Pure: the caller picks the sequence number and owns the buffers.

use super::{Announce, Identity};
use crate::wire::control::{self, Kind, Prefixes};

/// Encodes `kind` in control protocol `version` with sequence number `seq`, carrying
/// state version `state` (and, for a hello, its `announced` prefixes) and
/// acknowledging `ack` of the recipient's state, as pages into `out` (cleared first).
/// Pages are cut for [`control::VERSION`], whose entries are the larger, so they fit
/// in any version.
#[allow(clippy::too_many_arguments)]
pub fn encode(
    id: &Identity,
    version: u8,
    kind: Kind,
    seq: u64,
    state: u64,
    ack: u64,
    announced: &[Announce],
    out: &mut Vec<Vec<u8>>,
) {
    out.clear();
    let signed = id.secret.is_some();
    let base = control::Repr {
        kind,
        seq,
        state,
        ack,
        page: 0,
        pages: 1,
        data_port: id.data_port,
        underlay: id.underlay,
        name: &id.name,
        nickname: &id.nickname,
        prefixes: Prefixes::Slice(&[]),
    };
    let all: &[Announce] = if kind == Kind::Hello { announced } else { &[] };
    let per = base.prefixes_per_page(signed).max(1);
    let chunks: Vec<&[Announce]> = if all.is_empty() {
        vec![&[][..]]
    } else {
        all.chunks(per).collect()
    };
    let pages = chunks.len().min(usize::from(u16::MAX)) as u16;
    for (i, chunk) in chunks.into_iter().enumerate().take(usize::from(pages)) {
        let r = control::Repr {
            page: i as u16,
            pages,
            prefixes: Prefixes::Slice(chunk),
            ..base
        };
        let mut buf = vec![0u8; r.buffer_len_as(version, signed)];
        match r.emit_as(version, &mut buf, id.secret.as_deref()) {
            Ok(n) => {
                buf.truncate(n);
                out.push(buf);
            }
            Err(e) => log::error!("cannot encode control message: {e}"),
        }
    }
}
