//! Pacing of gratuitous announcements (docs/architecture.md, "Gratuitous
//! announcements"): when a node takes over many addresses at once (the
//! owner of 1,000 addresses died), it must tell the segment about every one
//! of them quickly without flooding the switch with one burst of thousands
//! of broadcast frames.
//!
//! One [`Pacer`] per interface. Each claimed address gets `bursts` bursts,
//! `interval` apart; the frames of all addresses share a token bucket of
//! `rate` frames per second holding at most `capacity`. A first burst (a
//! takeover the segment does not know of yet) always goes before any
//! repeat that is due, so a mass takeover tells every address once before
//! it repeats any. Sans I/O: the caller asks [`Pacer::poll`] what to send
//! now and when to ask again.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// The bursts per claim, their spacing, and the frame budget.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PaceSettings {
    /// Bursts per claim.
    pub bursts: u32,
    /// From one burst of an address to its next.
    pub interval: Duration,
    /// Frames per second on one interface, all addresses together.
    pub rate: u32,
    /// Frames that may leave at once after a quiet period.
    pub capacity: u32,
}

impl Default for PaceSettings {
    fn default() -> Self {
        PaceSettings {
            bursts: 3,
            interval: Duration::from_millis(600),
            rate: 50_000,
            capacity: 512,
        }
    }
}

/// One burst to send now: the address and which burst of its claim (0 is
/// the first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due<A> {
    pub address: A,
    pub burst: u32,
}

#[derive(Clone, Debug)]
struct Pending<A> {
    at: Instant,
    address: A,
    claim: u64,
}

/// The pending bursts of one interface and its token bucket.
#[derive(Clone, Debug)]
pub struct Pacer<A> {
    settings: PaceSettings,
    /// Per burst number, in the order they fell due (bursts of one number
    /// are queued in time order, so each queue is sorted).
    queues: Vec<VecDeque<Pending<A>>>,
    /// The live claim of each address and the frames one burst of it costs;
    /// queue entries of an older claim are dropped when reached.
    claims: HashMap<A, (u64, u32)>,
    next_claim: u64,
    tokens: f64,
    refilled: Option<Instant>,
}

impl<A: Clone + Eq + Hash> Pacer<A> {
    pub fn new(settings: PaceSettings) -> Pacer<A> {
        let settings = PaceSettings {
            bursts: settings.bursts,
            interval: settings.interval,
            rate: settings.rate.max(1),
            capacity: settings.capacity.max(1),
        };
        Pacer {
            queues: (0..settings.bursts).map(|_| VecDeque::new()).collect(),
            settings,
            claims: HashMap::new(),
            next_claim: 0,
            tokens: f64::from(settings.capacity),
            refilled: None,
        }
    }

    /// Announces `address` anew: its bursts start over, the first due now.
    /// `frames` is what one burst of it costs (2 for ARP: a request and a
    /// reply; 1 for an unsolicited NA).
    pub fn claim(&mut self, address: A, frames: u32, now: Instant) {
        if self.settings.bursts == 0 {
            return;
        }
        let claim = self.next_claim;
        self.next_claim += 1;
        self.claims.insert(address.clone(), (claim, frames.max(1)));
        self.queues[0].push_back(Pending {
            at: now,
            address,
            claim,
        });
    }

    /// Stops announcing `address`: none of its pending bursts is sent.
    pub fn release(&mut self, address: &A) {
        self.claims.remove(address);
    }

    /// Bursts still to send.
    pub fn pending(&self) -> usize {
        self.queues
            .iter()
            .flatten()
            .filter(|p| self.live(p))
            .count()
    }

    fn live(&self, p: &Pending<A>) -> bool {
        self.claims
            .get(&p.address)
            .is_some_and(|(c, _)| *c == p.claim)
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.refilled {
            let gained =
                now.saturating_duration_since(last).as_secs_f64() * f64::from(self.settings.rate);
            self.tokens = (self.tokens + gained).min(f64::from(self.settings.capacity));
        }
        self.refilled = Some(now);
    }

    /// What to send now, in order, and when to call again (`None`: nothing
    /// is pending). Sending is the caller's; a burst returned here counts
    /// as sent.
    pub fn poll(&mut self, now: Instant) -> (Vec<Due<A>>, Option<Instant>) {
        self.refill(now);
        let mut out = Vec::new();
        // The lowest burst number with a due head goes first.
        while let Some(level) =
            (0..self.queues.len()).find(|&l| self.queues[l].front().is_some_and(|p| p.at <= now))
        {
            let head = &self.queues[level][0];
            let Some(&(claim, frames)) = self.claims.get(&head.address) else {
                self.queues[level].pop_front();
                continue;
            };
            if claim != head.claim {
                self.queues[level].pop_front();
                continue;
            }
            if self.tokens < f64::from(frames) {
                break;
            }
            self.tokens -= f64::from(frames);
            let Some(p) = self.queues[level].pop_front() else {
                break;
            };
            let burst = level as u32;
            if burst + 1 < self.settings.bursts {
                self.queues[level + 1].push_back(Pending {
                    at: now + self.settings.interval,
                    address: p.address.clone(),
                    claim,
                });
            } else {
                self.claims.remove(&p.address);
            }
            out.push(Due {
                address: p.address,
                burst,
            });
        }
        // Drop dead heads so the wake time is not spent on them.
        for l in 0..self.queues.len() {
            while let Some(p) = self.queues[l].front() {
                if self.live(p) {
                    break;
                }
                self.queues[l].pop_front();
            }
        }
        let next_due = self
            .queues
            .iter()
            .filter_map(|q| q.front().map(|p| p.at))
            .min();
        let wake = next_due.map(|at| {
            if at > now {
                return at;
            }
            // Due already: wait for the tokens of the cheapest head.
            let need = self
                .queues
                .iter()
                .filter_map(|q| q.front())
                .filter(|p| p.at <= now)
                .filter_map(|p| self.claims.get(&p.address).map(|c| c.1))
                .min()
                .unwrap_or(1);
            let missing = (f64::from(need) - self.tokens).max(0.0);
            now + Duration::from_secs_f64(missing / f64::from(self.settings.rate))
                .max(Duration::from_micros(50))
        });
        (out, wake)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pacer(rate: u32, capacity: u32) -> Pacer<u32> {
        Pacer::new(PaceSettings {
            bursts: 3,
            interval: Duration::from_millis(600),
            rate,
            capacity,
        })
    }

    /// Runs the pacer, calling poll whenever it asks, until nothing is
    /// pending; returns (time since start, address, burst) of every send.
    fn drain(p: &mut Pacer<u32>, t0: Instant) -> Vec<(Duration, u32, u32)> {
        let mut now = t0;
        let mut sent = Vec::new();
        for _ in 0..1_000_000 {
            let (due, wake) = p.poll(now);
            sent.extend(due.into_iter().map(|d| (now - t0, d.address, d.burst)));
            match wake {
                Some(w) => now = w.max(now),
                None => break,
            }
        }
        sent
    }

    #[test]
    fn a_small_takeover_goes_out_at_once_and_repeats_on_the_interval() {
        let t0 = Instant::now();
        let mut p = pacer(20_000, 256);
        for a in 0..3 {
            p.claim(a, 2, t0);
        }
        let sent = drain(&mut p, t0);
        assert_eq!(sent.len(), 9);
        for (at, _, burst) in &sent {
            assert_eq!(*at, Duration::from_millis(600) * *burst);
        }
    }

    #[test]
    fn a_mass_takeover_is_paced_at_the_rate_and_every_first_burst_goes_before_any_repeat() {
        let t0 = Instant::now();
        let mut p = pacer(20_000, 256);
        for a in 0..1000 {
            p.claim(a, 2, t0);
        }
        let sent = drain(&mut p, t0);
        assert_eq!(sent.len(), 3000);
        // 2,000 frames of first bursts: 256 at once, the rest at 20,000/s.
        let last_first = sent.iter().filter(|s| s.2 == 0).map(|s| s.0).max().unwrap();
        let expect = Duration::from_secs_f64((2000.0 - 256.0) / 20_000.0);
        assert!(
            last_first <= expect + Duration::from_millis(1),
            "{last_first:?}"
        );
        assert!(
            last_first >= expect - Duration::from_millis(1),
            "{last_first:?}"
        );
        // Never more frames in any window than the bucket allows.
        for (i, s) in sent.iter().enumerate() {
            let window = Duration::from_millis(10);
            let frames = 2 * sent[i..].iter().take_while(|x| x.0 < s.0 + window).count();
            assert!(frames as f64 <= 256.0 + 20_000.0 * window.as_secs_f64() + 2.0);
        }
        // Claims are served in order; a repeat never before the interval.
        let firsts: Vec<u32> = sent.iter().filter(|s| s.2 == 0).map(|s| s.1).collect();
        assert_eq!(firsts, (0..1000).collect::<Vec<_>>());
        for a in 0..1000 {
            let times: Vec<Duration> = sent.iter().filter(|s| s.1 == a).map(|s| s.0).collect();
            assert_eq!(times.len(), 3);
            assert!(
                times
                    .windows(2)
                    .all(|w| w[1] >= w[0] + Duration::from_millis(600))
            );
        }
    }

    #[test]
    fn first_bursts_overtake_due_repeats() {
        let t0 = Instant::now();
        let mut p = pacer(1_000, 10);
        p.claim(1, 1, t0);
        let (due, _) = p.poll(t0);
        assert_eq!(
            due,
            vec![Due {
                address: 1,
                burst: 0
            }]
        );
        // At 600 ms address 1's repeat is due; 20 new claims arrive too.
        let t1 = t0 + Duration::from_millis(600);
        for a in 100..120 {
            p.claim(a, 1, t1);
        }
        let (due, _) = p.poll(t1);
        assert_eq!(due.len(), 10);
        assert!(due.iter().all(|d| d.burst == 0));
        let sent = drain(&mut p, t1);
        let repeat = sent.iter().position(|s| s.1 == 1).unwrap();
        assert!(sent[..repeat].iter().filter(|s| s.2 == 0).count() == 10);
    }

    #[test]
    fn a_released_or_reclaimed_address_keeps_one_schedule() {
        let t0 = Instant::now();
        let mut p = pacer(20_000, 256);
        p.claim(1, 2, t0);
        p.claim(2, 2, t0);
        p.release(&2);
        assert_eq!(p.pending(), 1);
        let (due, _) = p.poll(t0);
        assert_eq!(
            due,
            vec![Due {
                address: 1,
                burst: 0
            }]
        );
        // Claimed again before its repeat: starts over, one schedule only.
        let t1 = t0 + Duration::from_millis(100);
        p.claim(1, 2, t1);
        let sent = drain(&mut p, t1);
        assert_eq!(
            sent,
            vec![
                (Duration::ZERO, 1, 0),
                (Duration::from_millis(600), 1, 1),
                (Duration::from_millis(1200), 1, 2)
            ]
        );
        assert_eq!(p.pending(), 0);
        assert_eq!(p.poll(t1 + Duration::from_secs(5)).1, None);
    }

    #[test]
    fn zero_bursts_sends_nothing() {
        let t0 = Instant::now();
        let mut p: Pacer<u32> = Pacer::new(PaceSettings {
            bursts: 0,
            ..PaceSettings::default()
        });
        p.claim(1, 2, t0);
        assert_eq!(p.poll(t0), (vec![], None));
    }
}
