//! The ring membership's packets (docs/membership.md, "Messages") and their
//! HMAC-SHA256 authentication.
//!
//! Layout (integers big-endian):
//!
//! ```text
//! 0   4  magic "FLBM"
//! 4   1  version (2)
//! 5   1  kind (see `Body`)
//! 6   8  the sender's incarnation (a new, larger one per start or re-join)
//! 14  8  sequence number, strictly increasing per sender incarnation
//! 22  8  the receiver's incarnation as the sender knows it (0: unknown)
//! 30  8  the sender's view id
//! 38  1  length n of the sender's node name (1..=253)
//! 39  n  the sender's node name, UTF-8
//!     .. the body of the kind
//!     32 HMAC-SHA256 over every byte before it
//! ```
//!
//! Bodies: `Alerts` is a count (1 byte) of entries `[down 1][incarnation 8]
//! [name length 1][name]`; `Sync` is a flag byte (1: last chunk), a count
//! (2 bytes) and entries `[alive 1][incarnation 8][name length 1][name]`;
//! `Removed` is the removed incarnation (8). The other kinds have none.
//!
//! Carrying the receiver's incarnation makes every packet but `Join` useful
//! to one incarnation of its receiver only: a recording replayed after the
//! receiver restarted is refused, whatever it says.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::membership::{MAX_NAME, Reject};

const MAGIC: &[u8; 4] = b"FLBM";
/// The wire version; version 1 is the all-to-all heartbeat of
/// `crate::membership`.
pub const VERSION: u8 = 2;
const HEADER: usize = 39;
const TAG: usize = 32;
/// The largest datagram written: under any Ethernet MTU with IPv6 and UDP
/// headers. `Alerts` and `Sync` are split to fit.
pub const MAX_DATAGRAM: usize = 1400;

type HmacSha256 = Hmac<Sha256>;

/// One packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub from: String,
    pub from_inc: u64,
    pub seq: u64,
    pub to_inc: u64,
    pub view_id: u64,
    pub body: Body,
}

/// What a packet says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// "I am alive", from a node to each of its observers.
    Heartbeat,
    /// "Let me in": to every candidate, with `to_inc` possibly unknown.
    Join,
    /// The answer to a `Join`, addressed to the joiner's incarnation: the
    /// joiner now knows the sender is alive, and its incarnation.
    /// `held`: the sender removed the joiner as failed (or holds it down),
    /// so it will hold it down from re-admitting it; the joiner holds
    /// itself down as well (kind 11; a plain welcome keeps kind 3).
    Welcome { held: bool },
    /// The joiner's answer to a `Welcome`: the sender is alive now, so the
    /// receiver admits it.
    Hello,
    /// The sender's edge reports about its subjects.
    Alerts(Vec<Alert>),
    /// The sender stops: remove it at once.
    Leave,
    /// The leave of the receiver's incarnation has been applied.
    LeaveAck,
    /// "You were removed at this incarnation": re-join.
    Removed { incarnation: u64 },
    /// "Our views differ: send me yours."
    SyncRequest,
    /// One chunk of the sender's member table.
    Sync { entries: Vec<SyncEntry>, last: bool },
}

/// An observer's report on one subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    pub subject: String,
    pub incarnation: u64,
    /// True: nothing heard for the edge timeout. False: heard again.
    pub down: bool,
}

/// One row of a member table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncEntry {
    pub name: String,
    pub incarnation: u64,
    /// False: removed at this incarnation.
    pub alive: bool,
}

impl Body {
    /// The kind byte on the wire (1..=11).
    pub fn kind(&self) -> u8 {
        match self {
            Body::Heartbeat => 1,
            Body::Join => 2,
            Body::Welcome { held: false } => 3,
            Body::Hello => 4,
            Body::Alerts(_) => 5,
            Body::Leave => 6,
            Body::LeaveAck => 7,
            Body::Removed { .. } => 8,
            Body::SyncRequest => 9,
            Body::Sync { .. } => 10,
            Body::Welcome { held: true } => 11,
        }
    }

    /// A short name for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Body::Heartbeat => "heartbeat",
            Body::Join => "join",
            Body::Welcome { held: false } => "welcome",
            Body::Welcome { held: true } => "welcome-held",
            Body::Hello => "hello",
            Body::Alerts(_) => "alerts",
            Body::Leave => "leave",
            Body::LeaveAck => "leave_ack",
            Body::Removed { .. } => "removed",
            Body::SyncRequest => "sync_request",
            Body::Sync { .. } => "sync",
        }
    }
}

/// The bytes one `Alerts` or `Sync` entry for `name` takes.
pub fn entry_len(name: &str) -> usize {
    10 + name.len()
}

/// The bytes a message from `from` takes before its body's entries:
/// header, name, body preamble and tag.
pub fn overhead(from: &str) -> usize {
    HEADER + from.len() + 3 + TAG
}

/// The encoded length of `m`.
pub fn wire_len(m: &Message) -> usize {
    HEADER
        + m.from.len()
        + TAG
        + match &m.body {
            Body::Alerts(a) => 1 + a.iter().map(|e| entry_len(&e.subject)).sum::<usize>(),
            Body::Sync { entries, .. } => {
                3 + entries.iter().map(|e| entry_len(&e.name)).sum::<usize>()
            }
            Body::Removed { .. } => 8,
            _ => 0,
        }
}

fn name_ok(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME
}

/// The packet for `m`, authenticated with `key`; `None` if a name is empty
/// or longer than 253 bytes, an entry list is too long for its count, or
/// the packet would exceed [`MAX_DATAGRAM`].
pub fn encode(m: &Message, key: &[u8]) -> Option<Vec<u8>> {
    if !name_ok(&m.from) || wire_len(m) > MAX_DATAGRAM {
        return None;
    }
    let mut b = Vec::with_capacity(wire_len(m));
    b.extend_from_slice(MAGIC);
    b.push(VERSION);
    b.push(m.body.kind());
    for v in [m.from_inc, m.seq, m.to_inc, m.view_id] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b.push(m.from.len() as u8);
    b.extend_from_slice(m.from.as_bytes());
    match &m.body {
        Body::Alerts(alerts) => {
            b.push(u8::try_from(alerts.len()).ok()?);
            for a in alerts {
                if !name_ok(&a.subject) {
                    return None;
                }
                b.push(u8::from(a.down));
                b.extend_from_slice(&a.incarnation.to_be_bytes());
                b.push(a.subject.len() as u8);
                b.extend_from_slice(a.subject.as_bytes());
            }
        }
        Body::Sync { entries, last } => {
            b.push(u8::from(*last));
            b.extend_from_slice(&u16::try_from(entries.len()).ok()?.to_be_bytes());
            for e in entries {
                if !name_ok(&e.name) {
                    return None;
                }
                b.push(u8::from(e.alive));
                b.extend_from_slice(&e.incarnation.to_be_bytes());
                b.push(e.name.len() as u8);
                b.extend_from_slice(e.name.as_bytes());
            }
        }
        Body::Removed { incarnation } => b.extend_from_slice(&incarnation.to_be_bytes()),
        _ => {}
    }
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(&b);
    b.extend_from_slice(&mac.finalize().into_bytes());
    Some(b)
}

/// A cursor over an authenticated body; every read is length-checked.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Reject> {
        if self.b.len() < n {
            return Err(Reject::Malformed);
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, Reject> {
        Ok(self.take(1)?[0])
    }
    fn bool(&mut self) -> Result<bool, Reject> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Reject::Malformed),
        }
    }
    fn u64(&mut self) -> Result<u64, Reject> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn name(&mut self) -> Result<String, Reject> {
        let n = usize::from(self.u8()?);
        if n == 0 || n > MAX_NAME {
            return Err(Reject::Malformed);
        }
        let s = std::str::from_utf8(self.take(n)?).map_err(|_| Reject::Malformed)?;
        Ok(s.to_owned())
    }
}

/// Reads and authenticates a packet. Never panics; the tag is checked (in
/// constant time) before anything after the version byte is read.
pub fn decode(bytes: &[u8], key: &[u8]) -> Result<Message, Reject> {
    if bytes.len() < HEADER + 1 + TAG
        || bytes.len() > MAX_DATAGRAM
        || &bytes[..4] != MAGIC
        || bytes[4] != VERSION
    {
        return Err(Reject::Malformed);
    }
    let (signed, tag) = bytes.split_at(bytes.len() - TAG);
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(signed);
    mac.verify_slice(tag).map_err(|_| Reject::Unauthenticated)?;
    let mut r = Reader { b: &signed[5..] };
    let kind = r.u8()?;
    let (from_inc, seq, to_inc, view_id) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
    let from = r.name()?;
    let body = match kind {
        1 => Body::Heartbeat,
        2 => Body::Join,
        3 => Body::Welcome { held: false },
        4 => Body::Hello,
        5 => {
            let n = r.u8()?;
            let mut alerts = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                let down = r.bool()?;
                let incarnation = r.u64()?;
                let subject = r.name()?;
                alerts.push(Alert {
                    subject,
                    incarnation,
                    down,
                });
            }
            Body::Alerts(alerts)
        }
        6 => Body::Leave,
        7 => Body::LeaveAck,
        8 => Body::Removed {
            incarnation: r.u64()?,
        },
        9 => Body::SyncRequest,
        10 => {
            let last = r.bool()?;
            let n = u16::from_be_bytes([r.u8()?, r.u8()?]);
            let mut entries = Vec::with_capacity(usize::from(n).min(128));
            for _ in 0..n {
                let alive = r.bool()?;
                let incarnation = r.u64()?;
                let name = r.name()?;
                entries.push(SyncEntry {
                    name,
                    incarnation,
                    alive,
                });
            }
            Body::Sync { entries, last }
        }
        11 => Body::Welcome { held: true },
        _ => return Err(Reject::Malformed),
    };
    if !r.b.is_empty() {
        return Err(Reject::Malformed);
    }
    Ok(Message {
        from,
        from_inc,
        seq,
        to_inc,
        view_id,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn msg(body: Body) -> Message {
        Message {
            from: "node-a".into(),
            from_inc: 7,
            seq: 9,
            to_inc: 11,
            view_id: 0xdead_beef,
            body,
        }
    }

    fn bodies() -> Vec<Body> {
        vec![
            Body::Heartbeat,
            Body::Join,
            Body::Welcome { held: false },
            Body::Welcome { held: true },
            Body::Hello,
            Body::Alerts(vec![
                Alert {
                    subject: "b".into(),
                    incarnation: 3,
                    down: true,
                },
                Alert {
                    subject: "c".into(),
                    incarnation: 4,
                    down: false,
                },
            ]),
            Body::Leave,
            Body::LeaveAck,
            Body::Removed { incarnation: 5 },
            Body::SyncRequest,
            Body::Sync {
                entries: vec![SyncEntry {
                    name: "d".into(),
                    incarnation: 6,
                    alive: false,
                }],
                last: true,
            },
        ]
    }

    #[test]
    fn every_kind_round_trips_at_its_stated_length() {
        for body in bodies() {
            let m = msg(body);
            let b = encode(&m, KEY).unwrap();
            assert_eq!(b.len(), wire_len(&m), "{m:?}");
            assert_eq!(decode(&b, KEY), Ok(m));
        }
    }

    #[test]
    fn any_flipped_bit_or_truncation_is_refused() {
        for body in bodies() {
            let b = encode(&msg(body), KEY).unwrap();
            assert_eq!(decode(&b, b"other"), Err(Reject::Unauthenticated));
            for i in 0..b.len() {
                let mut c = b.clone();
                c[i] ^= 0x10;
                assert!(decode(&c, KEY).is_err(), "byte {i}");
                assert!(decode(&b[..i], KEY).is_err(), "first {i} bytes");
            }
        }
    }

    #[test]
    fn oversized_messages_are_not_encoded() {
        let alerts = (0..200)
            .map(|i| Alert {
                subject: format!("node-{i:04}"),
                incarnation: 1,
                down: true,
            })
            .collect();
        assert_eq!(encode(&msg(Body::Alerts(alerts)), KEY), None);
        let mut m = msg(Body::Heartbeat);
        m.from = "x".repeat(254);
        assert_eq!(encode(&m, KEY), None);
    }

    #[test]
    fn version_one_packets_are_not_read_as_version_two() {
        let mut b = encode(&msg(Body::Heartbeat), KEY).unwrap();
        b[4] = 1;
        assert_eq!(decode(&b, KEY), Err(Reject::Malformed));
    }
}
