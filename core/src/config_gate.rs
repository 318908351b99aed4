//! The one gate every config passes before it is used, by the controller and
//! the speakers alike: the sources' content (the ConfigMap's text, MetalLB's
//! objects, or both: [`crate::sources`]) is read; a config that does not
//! parse, a missing ConfigMap, or a valid config that would take an address
//! from a Service that holds it, leaves the last good config in force; every
//! change of the content is heard once (good to bad, bad to good, the same
//! bad text again after a fix), a resync of the same text is silent.
//!
//! Pure: the caller says which addresses are held (the controller's
//! allocator, or the addresses in the Services' status for a speaker) and
//! turns the [`Outcome`] into its log lines, Events and metrics.
//! See docs/architecture.md, section 3.

use crate::allocator::Orphan;
use crate::config::Config;
use crate::config_change;
use crate::crd::Problem;
use crate::sources::{self, Input, Unread};

/// What the gate decided about an offered text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing new (the same text as before, or a retry that changed nothing).
    Unchanged,
    /// The ConfigMap or its `config` key is missing (reason `ConfigMissing`).
    Missing { message: String },
    /// The text does not parse (reason `InvalidConfig`). `problems`: what is
    /// wrong with each MetalLB object (and its warnings), for Events on them.
    Invalid {
        message: String,
        problems: Vec<Problem>,
    },
    /// Valid, but it would take addresses from Services (reason
    /// `StaleConfig`). `repeated`: the same refusal was reported before, so
    /// only the log may mention it again.
    Refused { message: String, repeated: bool },
    /// Now in force (reason `ConfigLoaded`); `message` says what changed.
    /// `changed` is false when the new text parses to the config already in
    /// force (a stale spell ended: heard, but nothing to apply).
    Loaded {
        message: String,
        changed: bool,
        pools: usize,
        /// Warnings and notices about the MetalLB objects read.
        notices: Vec<Problem>,
    },
}

impl Outcome {
    /// The Event reason, if the outcome is heard.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Outcome::Unchanged => None,
            Outcome::Missing { .. } => Some("ConfigMissing"),
            Outcome::Invalid { .. } => Some("InvalidConfig"),
            Outcome::Refused { repeated: true, .. } => None,
            Outcome::Refused { .. } => Some("StaleConfig"),
            Outcome::Loaded { .. } => Some("ConfigLoaded"),
        }
    }
}

/// The config in force and what the gate remembers of the texts offered.
pub struct ConfigGate {
    /// How "nothing happens until a config is loaded" reads for this user,
    /// e.g. "nothing is assigned until a valid config is loaded".
    until_loaded: &'static str,
    in_force: Option<Config>,
    /// The last content offered.
    last_input: Option<Input>,
    /// A valid config refused because of held addresses, offered again by
    /// [`ConfigGate::retry`] whenever addresses are freed.
    refused: Option<Config>,
    last_refusal: Option<String>,
    stale: bool,
}

impl ConfigGate {
    pub fn new(until_loaded: &'static str) -> ConfigGate {
        ConfigGate {
            until_loaded,
            in_force: None,
            last_input: None,
            refused: None,
            last_refusal: None,
            stale: false,
        }
    }

    pub fn in_force(&self) -> Option<&Config> {
        self.in_force.as_ref()
    }
    /// A config has been loaded at least once.
    pub fn loaded(&self) -> bool {
        self.in_force.is_some()
    }
    /// The ConfigMap's current content is not in force.
    pub fn stale(&self) -> bool {
        self.stale
    }
    /// A refused config waits for addresses to be freed.
    pub fn has_refused(&self) -> bool {
        self.refused.is_some()
    }

    fn kept(&self) -> &'static str {
        if self.in_force.is_some() {
            "the last good config stays in force"
        } else {
            self.until_loaded
        }
    }

    /// The ConfigMap's text alone: `Err` says why there is none. `orphans`
    /// lists the held addresses a candidate config would take away.
    pub fn offer(
        &mut self,
        text: Result<String, String>,
        orphans: impl Fn(&Config) -> Vec<Orphan>,
    ) -> Outcome {
        self.offer_input(Input::configmap(text), orphans)
    }

    /// The content of every source read (see [`sources::read`]).
    pub fn offer_input(
        &mut self,
        input: Input,
        orphans: impl Fn(&Config) -> Vec<Orphan>,
    ) -> Outcome {
        let fresh = self.last_input.as_ref() != Some(&input);
        if !fresh && self.refused.is_none() {
            return Outcome::Unchanged;
        }
        self.refused = None;
        if fresh {
            // Every new content is a transition the user hears about.
            self.last_refusal = None;
        }
        let read = sources::read(&input);
        self.last_input = Some(input);
        match read {
            Err(Unread::Missing(why)) => {
                self.stale = true;
                Outcome::Missing {
                    message: format!("{why}; {}", self.kept()),
                }
            }
            Err(Unread::Invalid { message, problems }) => {
                self.stale = true;
                Outcome::Invalid {
                    message: format!("config refused, {}: {message}", self.kept()),
                    problems,
                }
            }
            Ok(read) => {
                let notices = if fresh { read.notices } else { vec![] };
                self.consider(read.config, notices, orphans)
            }
        }
    }

    /// Offers the refused config again (call it when addresses were freed).
    pub fn retry(&mut self, orphans: impl Fn(&Config) -> Vec<Orphan>) -> Outcome {
        match self.refused.take() {
            Some(c) => self.consider(c, vec![], orphans),
            None => Outcome::Unchanged,
        }
    }

    fn consider(
        &mut self,
        new: Config,
        notices: Vec<Problem>,
        orphans: impl Fn(&Config) -> Vec<Orphan>,
    ) -> Outcome {
        if self.in_force.as_ref() == Some(&new) {
            // Parses to the config in force: silent, unless it ends a stale
            // spell (bad to good must be heard) or brings new warnings about
            // the objects (an advertisement naming no pool changes nothing).
            if !self.stale && notices.is_empty() {
                return Outcome::Unchanged;
            }
            self.stale = false;
            return Outcome::Loaded {
                message: config_change::describe(Some(&new), &new),
                changed: false,
                pools: new.pools.len(),
                notices,
            };
        }
        // With nothing in force yet, nothing is held that a config could take.
        let orphans = if self.in_force.is_some() {
            orphans(&new)
        } else {
            vec![]
        };
        if !orphans.is_empty() {
            self.stale = true;
            self.refused = Some(new);
            let list: Vec<String> = orphans.iter().map(ToString::to_string).collect();
            let message = format!(
                "config refused: it would take addresses from Services, so the last good config stays in force; delete those Services or keep their addresses in a pool: {}",
                list.join("; ")
            );
            let repeated = self.last_refusal.as_ref() == Some(&message);
            self.last_refusal = Some(message.clone());
            return Outcome::Refused { message, repeated };
        }
        self.refused = None;
        self.last_refusal = None;
        self.stale = false;
        let message = config_change::describe(self.in_force.as_ref(), &new);
        let pools = new.pools.len();
        self.in_force = Some(new);
        Outcome::Loaded {
            message,
            changed: true,
            pools,
            notices,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ServiceKey;
    use crate::allocator::orphaned_addresses;
    use std::net::IpAddr;

    const A: &str =
        "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.1-192.0.2.9]\n";
    const B: &str =
        "address-pools:\n- name: b\n  protocol: layer2\n  addresses: [198.51.100.1-198.51.100.9]\n";

    fn none(_: &Config) -> Vec<Orphan> {
        vec![]
    }

    fn holding(ip: &str) -> impl Fn(&Config) -> Vec<Orphan> {
        let ip: IpAddr = ip.parse().unwrap();
        move |c| orphaned_addresses(c, [(ip, vec![ServiceKey::new("ns", "svc")])])
    }

    fn gate() -> ConfigGate {
        ConfigGate::new("nothing is assigned until a valid config is loaded")
    }

    #[test]
    fn every_transition_is_heard_once() {
        let mut g = gate();
        let r = |o: Outcome| o.reason();
        assert_eq!(
            r(g.offer(Err("the ConfigMap does not exist".into()), none)),
            Some("ConfigMissing")
        );
        assert!(g.stale() && !g.loaded());
        assert_eq!(r(g.offer(Ok(A.into()), none)), Some("ConfigLoaded"));
        assert_eq!(g.offer(Ok(A.into()), none), Outcome::Unchanged, "a resync");
        assert_eq!(
            r(g.offer(Ok("address-pools: [\n".into()), none)),
            Some("InvalidConfig")
        );
        assert_eq!(
            g.in_force().unwrap().pools[0].name,
            "a",
            "the last good config stays"
        );
        // Bad to good, back to the config in force: heard, nothing to apply.
        match g.offer(Ok(format!("{A}\n")), none) {
            Outcome::Loaded { changed: false, .. } => {}
            o => panic!("{o:?}"),
        }
        assert!(!g.stale());
        // A new text that parses to the config in force, while not stale: silent.
        assert_eq!(g.offer(Ok(format!("{A}\n\n")), none), Outcome::Unchanged);
    }

    #[test]
    fn the_first_invalid_config_says_nothing_is_done_until_a_valid_one() {
        let mut g = gate();
        match g.offer(Ok("address-pools: [\n".into()), none) {
            Outcome::Invalid { message, .. } => assert!(
                message.starts_with(
                    "config refused, nothing is assigned until a valid config is loaded: "
                ),
                "{message}"
            ),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn a_config_that_would_orphan_a_held_address_waits_and_is_retried() {
        let mut g = gate();
        g.offer(Ok(A.into()), holding("192.0.2.1"));
        let first = g.offer(Ok(B.into()), holding("192.0.2.1"));
        assert!(
            matches!(
                first,
                Outcome::Refused {
                    repeated: false,
                    ..
                }
            ),
            "{first:?}"
        );
        assert_eq!(first.reason(), Some("StaleConfig"));
        assert!(g.stale() && g.has_refused());
        assert_eq!(g.in_force().unwrap().pools[0].name, "a");
        // Retried while the address is still held: the same refusal, not heard again.
        let again = g.retry(holding("192.0.2.1"));
        assert!(
            matches!(again, Outcome::Refused { repeated: true, .. }),
            "{again:?}"
        );
        assert_eq!(again.reason(), None);
        // The Service let go of it: the waiting config loads.
        match g.retry(none) {
            Outcome::Loaded {
                changed: true,
                pools: 1,
                ..
            } => {}
            o => panic!("{o:?}"),
        }
        assert_eq!(g.in_force().unwrap().pools[0].name, "b");
        assert!(!g.stale() && !g.has_refused());
    }

    #[test]
    fn the_same_refused_text_after_a_fix_is_heard_again() {
        let mut g = gate();
        g.offer(Ok(A.into()), none);
        assert!(
            g.offer(Ok(B.into()), holding("192.0.2.1"))
                .reason()
                .is_some()
        );
        assert!(
            g.offer(Ok(A.into()), none).reason().is_some(),
            "back to A: heard"
        );
        let o = g.offer(Ok(B.into()), holding("192.0.2.1"));
        assert_eq!(o.reason(), Some("StaleConfig"), "{o:?}");
    }
}
