//! Membership among speakers (docs/architecture.md, section 5): which speakers are alive,
//! from authenticated heartbeats over UDP. This module is the sans-I/O part:
//! the wire format, its HMAC authentication and replay protection, and the
//! failure detector. The speaker owns the socket and the clock and feeds
//! packets and instants in.
//!
//! The design is all-to-all heartbeats rather than SWIM. Every speaker sends
//! a small authenticated heartbeat to every peer each interval (default
//! 20 ms) and declares a peer dead when nothing arrived from it for the
//! timeout (default 150 ms, seven missed heartbeats). With 5 % independent
//! loss, seven consecutive losses have probability 0.05^7 ≈ 8e-10 per
//! window, so false alarms are negligible, while detection stays near the
//! timeout. SWIM's indirect probes and suspicion exist to keep per-node
//! traffic constant in clusters of thousands; a load-balancer segment has a
//! few to a few hundred speakers, where per-node traffic linear in the
//! number of peers is small (N-1 packets of about 90 bytes per interval)
//! and detection time does not depend on gossip rounds.
//!
//! A speaker stopping gracefully sends `Leave`; peers drop it at once and,
//! once they have taken over its addresses, answer `LeaveAck`, so the
//! leaving speaker can stop answering only after its successors announce.
//!
//! Packet layout (all integers big-endian):
//!
//! ```text
//! 0   4  magic "FLBM"
//! 4   1  version (1)
//! 5   1  kind: 1 heartbeat, 2 leave, 3 leave-ack
//! 6   8  incarnation of the sender (a new one per process start)
//! 14  8  sequence number, strictly increasing per incarnation
//! 22  1  length n of the sender's node name (1..=253)
//! 23  n  the sender's node name, UTF-8
//!     8  leave-ack only: the incarnation being acknowledged
//!     32 HMAC-SHA256 over every byte before it, keyed by the shared secret
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

const MAGIC: &[u8; 4] = b"FLBM";
const VERSION: u8 = 1;
const HEADER: usize = 23;
const TAG: usize = 32;
/// The longest node name a packet carries, in bytes: Kubernetes node names
/// are at most 253. [`encode`] and [`decode`] both hold to it, so whatever
/// one accepts the other does too.
pub const MAX_NAME: usize = 253;
/// The largest packet [`encode`] writes.
pub const MAX_PACKET: usize = HEADER + MAX_NAME + 8 + TAG;

type HmacSha256 = Hmac<Sha256>;

/// What a membership packet says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Heartbeat,
    /// The sender stops; it should no longer be a candidate.
    Leave,
    /// The sender has applied the leave of the incarnation given.
    LeaveAck {
        incarnation: u64,
    },
}

/// One membership packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub kind: Kind,
    pub node: String,
    pub incarnation: u64,
    pub seq: u64,
}

/// Why a packet was dropped; each is counted by the speaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Reject {
    #[error("malformed membership packet")]
    Malformed,
    #[error("membership packet failed authentication")]
    Unauthenticated,
    #[error("replayed or stale membership packet")]
    Replayed,
    #[error("membership packet from this node's own name")]
    FromSelf,
}

impl Reject {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Reject::Malformed => "malformed",
            Reject::Unauthenticated => "unauthenticated",
            Reject::Replayed => "replayed",
            Reject::FromSelf => "from_self",
        }
    }
}

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length.
    HmacSha256::new_from_slice(key).expect("HMAC takes any key length")
}

/// Writes `packet`, authenticated with `key`, into `buf`; returns its length.
/// Names longer than [`MAX_NAME`] (253) bytes are refused (`None`):
/// Kubernetes node names are at most 253.
pub fn encode(packet: &Packet, key: &[u8], buf: &mut [u8; MAX_PACKET]) -> Option<usize> {
    let name = packet.node.as_bytes();
    if name.is_empty() || name.len() > MAX_NAME {
        return None;
    }
    buf[..4].copy_from_slice(MAGIC);
    buf[4] = VERSION;
    buf[5] = match packet.kind {
        Kind::Heartbeat => 1,
        Kind::Leave => 2,
        Kind::LeaveAck { .. } => 3,
    };
    buf[6..14].copy_from_slice(&packet.incarnation.to_be_bytes());
    buf[14..22].copy_from_slice(&packet.seq.to_be_bytes());
    buf[22] = name.len() as u8;
    let mut at = HEADER + name.len();
    buf[HEADER..at].copy_from_slice(name);
    if let Kind::LeaveAck { incarnation } = packet.kind {
        buf[at..at + 8].copy_from_slice(&incarnation.to_be_bytes());
        at += 8;
    }
    let mut m = mac(key);
    m.update(&buf[..at]);
    buf[at..at + TAG].copy_from_slice(&m.finalize().into_bytes());
    Some(at + TAG)
}

/// Reads and authenticates a packet. Never panics; the tag is checked in
/// constant time before anything else is trusted.
pub fn decode(bytes: &[u8], key: &[u8]) -> Result<Packet, Reject> {
    if bytes.len() < HEADER + 1 + TAG || &bytes[..4] != MAGIC || bytes[4] != VERSION {
        return Err(Reject::Malformed);
    }
    let (body, tag) = bytes.split_at(bytes.len() - TAG);
    let mut m = mac(key);
    m.update(body);
    m.verify_slice(tag).map_err(|_| Reject::Unauthenticated)?;
    let n = usize::from(body[22]);
    let rest = body.get(HEADER..).ok_or(Reject::Malformed)?;
    // The same bound as `encode`: a name it would refuse is malformed here.
    if n == 0 || n > MAX_NAME || rest.len() < n {
        return Err(Reject::Malformed);
    }
    let (name, tail) = rest.split_at(n);
    let node = std::str::from_utf8(name)
        .map_err(|_| Reject::Malformed)?
        .to_owned();
    let u64_at = |b: &[u8], i: usize| -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[i..i + 8]);
        u64::from_be_bytes(a)
    };
    let kind = match (body[5], tail.len()) {
        (1, 0) => Kind::Heartbeat,
        (2, 0) => Kind::Leave,
        (3, 8) => Kind::LeaveAck {
            incarnation: u64_at(tail, 0),
        },
        _ => return Err(Reject::Malformed),
    };
    Ok(Packet {
        kind,
        node,
        incarnation: u64_at(body, 6),
        seq: u64_at(body, 14),
    })
}

/// What the detector knows of one peer.
#[derive(Clone, Debug)]
struct Peer {
    incarnation: u64,
    last_seq: u64,
    last_heard: Instant,
    /// This incarnation said it leaves: it is not alive, whatever it sends.
    left: bool,
}

/// The failure detector: who is alive, from the packets accepted so far.
#[derive(Clone, Debug)]
pub struct Detector {
    me: String,
    timeout: Duration,
    peers: BTreeMap<String, Peer>,
}

impl Detector {
    /// A detector for node `me` that declares a peer dead after `timeout`
    /// without an accepted packet from it.
    pub fn new(me: impl Into<String>, timeout: Duration) -> Detector {
        Detector {
            me: me.into(),
            timeout,
            peers: BTreeMap::new(),
        }
    }

    /// Accepts a decoded packet received at `now`, or says why not: from
    /// this node's own name, or not newer than the last one accepted from
    /// that sender (a replay). A newer incarnation replaces an older one
    /// (the peer restarted). A `Leave` makes the sender not alive at once.
    pub fn accept(&mut self, packet: &Packet, now: Instant) -> Result<(), Reject> {
        if packet.node == self.me {
            return Err(Reject::FromSelf);
        }
        match self.peers.get_mut(&packet.node) {
            Some(p)
                if packet.incarnation < p.incarnation
                    || (packet.incarnation == p.incarnation && packet.seq <= p.last_seq) =>
            {
                return Err(Reject::Replayed);
            }
            Some(p) if packet.incarnation == p.incarnation => {
                p.last_seq = packet.seq;
                p.last_heard = now;
                p.left |= packet.kind == Kind::Leave;
            }
            _ => {
                self.peers.insert(
                    packet.node.clone(),
                    Peer {
                        incarnation: packet.incarnation,
                        last_seq: packet.seq,
                        last_heard: now,
                        left: packet.kind == Kind::Leave,
                    },
                );
            }
        }
        Ok(())
    }

    /// The live members at `now`: this node and every peer heard from
    /// within the timeout that has not left.
    pub fn alive(&self, now: Instant) -> BTreeSet<String> {
        let mut alive: BTreeSet<String> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.left && now.saturating_duration_since(p.last_heard) < self.timeout)
            .map(|(n, _)| n.clone())
            .collect();
        alive.insert(self.me.clone());
        alive
    }

    /// When the next live peer times out if nothing more arrives from it.
    pub fn next_expiry(&self, now: Instant) -> Option<Instant> {
        self.peers
            .values()
            .filter(|p| !p.left)
            .map(|p| p.last_heard + self.timeout)
            .filter(|t| *t > now)
            .min()
    }

    /// The incarnation last accepted from `node`.
    pub fn incarnation(&self, node: &str) -> Option<u64> {
        self.peers.get(node).map(|p| p.incarnation)
    }

    /// Forgets peers not heard from for a long while (a deleted node), so
    /// that the table does not grow.
    pub fn forget_older_than(&mut self, age: Duration, now: Instant) {
        self.peers
            .retain(|_, p| now.saturating_duration_since(p.last_heard) < age);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn packet(kind: Kind, node: &str, incarnation: u64, seq: u64) -> Packet {
        Packet {
            kind,
            node: node.into(),
            incarnation,
            seq,
        }
    }

    fn bytes(p: &Packet, key: &[u8]) -> Vec<u8> {
        let mut buf = [0u8; MAX_PACKET];
        let n = encode(p, key, &mut buf).unwrap();
        buf[..n].to_vec()
    }

    #[test]
    fn every_kind_round_trips() {
        for kind in [
            Kind::Heartbeat,
            Kind::Leave,
            Kind::LeaveAck { incarnation: 77 },
        ] {
            let p = packet(kind, "node-a", 5, 9);
            assert_eq!(decode(&bytes(&p, KEY), KEY), Ok(p));
        }
    }

    #[test]
    fn wrong_key_and_any_flipped_bit_are_unauthenticated_or_malformed() {
        let b = bytes(&packet(Kind::Heartbeat, "node-a", 5, 9), KEY);
        assert_eq!(decode(&b, b"another key"), Err(Reject::Unauthenticated));
        for i in 0..b.len() {
            for bit in 0..8 {
                let mut c = b.clone();
                c[i] ^= 1 << bit;
                let r = decode(&c, KEY);
                assert!(
                    matches!(r, Err(Reject::Unauthenticated | Reject::Malformed)),
                    "byte {i} bit {bit}: {r:?}"
                );
            }
        }
    }

    #[test]
    fn short_or_garbage_input_is_malformed_never_a_panic() {
        let b = bytes(&packet(Kind::Heartbeat, "node-a", 5, 9), KEY);
        for n in 0..b.len() {
            assert!(decode(&b[..n], KEY).is_err());
        }
        assert_eq!(decode(&[0xff; 100], KEY), Err(Reject::Malformed));
        // A valid tag over a body whose name length overruns it.
        let mut body = b[..b.len() - TAG].to_vec();
        body[22] = 200;
        let mut m = mac(KEY);
        m.update(&body);
        body.extend_from_slice(&m.finalize().into_bytes());
        assert_eq!(decode(&body, KEY), Err(Reject::Malformed));
    }

    /// A validly tagged packet whose name is `n` bytes of `a`.
    fn tagged_with_name_len(n: usize) -> Vec<u8> {
        let mut body = b"FLBM\x01\x01".to_vec();
        body.extend_from_slice(&5u64.to_be_bytes());
        body.extend_from_slice(&9u64.to_be_bytes());
        body.push(n as u8);
        body.extend(std::iter::repeat_n(b'a', n));
        let mut m = mac(KEY);
        m.update(&body);
        body.extend_from_slice(&m.finalize().into_bytes());
        body
    }

    #[test]
    fn decode_refuses_the_names_encode_refuses() {
        // Found by the fuzz target (issue #17): 254- and 255-byte names were
        // decoded although `encode` refuses them, so a decoded packet could
        // not be re-encoded.
        let ok = decode(&tagged_with_name_len(MAX_NAME), KEY).expect("253 bytes is a valid name");
        let mut buf = [0u8; MAX_PACKET];
        let n = encode(&ok, KEY, &mut buf).expect("what decode accepts, encode writes");
        assert_eq!(decode(&buf[..n], KEY), Ok(ok));
        for len in [254, 255] {
            assert_eq!(
                decode(&tagged_with_name_len(len), KEY),
                Err(Reject::Malformed),
                "{len}-byte name"
            );
            let p = packet(Kind::Heartbeat, &"a".repeat(len), 5, 9);
            assert_eq!(encode(&p, KEY, &mut buf), None, "{len}-byte name");
        }
    }

    #[test]
    fn detector_times_out_silent_peers_and_rejects_replays() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = Detector::new("me", ms(150));
        assert_eq!(d.alive(t0), BTreeSet::from(["me".to_owned()]));
        d.accept(&packet(Kind::Heartbeat, "b", 1, 1), t0).unwrap();
        assert!(d.alive(t0 + ms(149)).contains("b"));
        assert!(!d.alive(t0 + ms(150)).contains("b"));
        assert_eq!(d.next_expiry(t0), Some(t0 + ms(150)));
        // The same or an older sequence number is a replay and does not
        // keep the peer alive.
        let replay = packet(Kind::Heartbeat, "b", 1, 1);
        assert_eq!(d.accept(&replay, t0 + ms(100)), Err(Reject::Replayed));
        assert!(!d.alive(t0 + ms(150)).contains("b"));
        assert_eq!(
            d.accept(&packet(Kind::Heartbeat, "me", 1, 1), t0),
            Err(Reject::FromSelf)
        );
        // A restart (new incarnation) starts its sequence again.
        d.accept(&packet(Kind::Heartbeat, "b", 2, 1), t0 + ms(100))
            .unwrap();
        assert!(d.alive(t0 + ms(200)).contains("b"));
        assert_eq!(
            d.accept(&packet(Kind::Heartbeat, "b", 1, 99), t0 + ms(100)),
            Err(Reject::Replayed)
        );
    }

    #[test]
    fn a_leave_is_final_for_that_incarnation() {
        let t0 = Instant::now();
        let mut d = Detector::new("me", Duration::from_millis(150));
        d.accept(&packet(Kind::Heartbeat, "b", 1, 1), t0).unwrap();
        d.accept(&packet(Kind::Leave, "b", 1, 2), t0).unwrap();
        assert!(!d.alive(t0).contains("b"));
        d.accept(&packet(Kind::Heartbeat, "b", 1, 3), t0).unwrap();
        assert!(!d.alive(t0).contains("b"));
        assert_eq!(d.next_expiry(t0), None);
        // Its next incarnation is alive again.
        d.accept(&packet(Kind::Heartbeat, "b", 2, 1), t0).unwrap();
        assert!(d.alive(t0).contains("b"));
    }
}
