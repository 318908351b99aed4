//! Where the config comes from (docs/architecture.md, section 3): the
//! ConfigMap in MetalLB v0.12's format (the default), MetalLB's
//! `metallb.io/v1beta1` IPAddressPool and L2Advertisement objects, or both.
//!
//! [`read`] turns what the watches hold into one [`Config`], or says why it
//! cannot: the [`crate::config_gate::ConfigGate`] then decides whether it goes
//! into force. With both sources, a pool name or an address that appears in
//! both is refused: each pool lives in one place.

use std::fmt;
use std::str::FromStr;

use crate::config::{self, Config, PoolOrder};
use crate::crd::{self, ObjectRef, Problem, Severity};

/// The config source a controller or speaker reads (`--config-source`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Source {
    /// The ConfigMap's `config` key.
    #[default]
    ConfigMap,
    /// IPAddressPool and L2Advertisement objects in one namespace
    /// (`--crds-namespace`).
    Crds,
    /// Both, merged; a pool or address in both is refused.
    Both,
}

impl Source {
    pub fn reads_configmap(self) -> bool {
        matches!(self, Source::ConfigMap | Source::Both)
    }
    pub fn reads_crds(self) -> bool {
        matches!(self, Source::Crds | Source::Both)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::ConfigMap => "configmap",
            Source::Crds => "crds",
            Source::Both => "both",
        })
    }
}

impl FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> Result<Source, String> {
        match s {
            "configmap" => Ok(Source::ConfigMap),
            "crds" => Ok(Source::Crds),
            "both" => Ok(Source::Both),
            other => Err(format!(
                "{other:?} is not a config source: configmap, crds or both"
            )),
        }
    }
}

/// What the watches hold, as [`read`] takes it. Compared as a whole by the
/// gate: the same content again (a resync) is no change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    /// The ConfigMap's `config` text, or why there is none; `None` when the
    /// source does not include the ConfigMap.
    pub configmap: Option<Result<String, String>>,
    /// The MetalLB objects as YAML (several documents, or a `List`), or why
    /// they cannot be read (their CRDs are not installed); `None` when the
    /// source does not include them.
    pub crds: Option<Result<String, String>>,
}

impl Input {
    /// The ConfigMap alone.
    pub fn configmap(text: Result<String, String>) -> Input {
        Input {
            configmap: Some(text),
            crds: None,
        }
    }
    /// The MetalLB objects alone.
    pub fn crds(text: Result<String, String>) -> Input {
        Input {
            configmap: None,
            crds: Some(text),
        }
    }
}

/// A config read from the sources, with the warnings and notices about the
/// MetalLB objects (each names its object).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    pub config: Config,
    pub notices: Vec<Problem>,
}

/// Why no config could be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unread {
    /// No source has anything (reason `ConfigMissing`).
    Missing(String),
    /// Something does not parse or validate, or the two sources clash
    /// (reason `InvalidConfig`). `problems`: every problem and notice about
    /// the MetalLB objects, each naming its object, for Events on them.
    Invalid {
        message: String,
        problems: Vec<Problem>,
    },
}

/// One source's result.
enum Part {
    Missing(String),
    Invalid(String, Vec<Problem>),
    Good(Config, Vec<Problem>),
}

fn configmap_part(text: &Result<String, String>) -> Part {
    match text {
        Err(why) => Part::Missing(why.clone()),
        Ok(text) => match config::parse(text) {
            Ok(c) => Part::Good(c, vec![]),
            Err(errors) => Part::Invalid(
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
                vec![],
            ),
        },
    }
}

fn crds_part(text: &Result<String, String>) -> Part {
    match text {
        Err(why) => Part::Missing(why.clone()),
        Ok(text) => {
            let parsed = crd::parse(text);
            match parsed.config {
                Some(c) => Part::Good(c, parsed.problems),
                None => Part::Invalid(
                    parsed
                        .errors()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                    parsed.problems,
                ),
            }
        }
    }
}

/// Reads the config from the sources in `input`.
pub fn read(input: &Input) -> Result<Read, Unread> {
    let cm = input.configmap.as_ref().map(configmap_part);
    let crds = input.crds.as_ref().map(crds_part);
    match (cm, crds) {
        (None, None) => Err(Unread::Missing("no config source is read".to_owned())),
        (Some(one), None) | (None, Some(one)) => match one {
            Part::Missing(why) => Err(Unread::Missing(why)),
            Part::Invalid(message, problems) => Err(Unread::Invalid { message, problems }),
            Part::Good(config, notices) => Ok(Read { config, notices }),
        },
        (Some(cm), Some(crds)) => both(cm, crds),
    }
}

fn both(cm: Part, crds: Part) -> Result<Read, Unread> {
    match (cm, crds) {
        (Part::Missing(a), Part::Missing(b)) => Err(Unread::Missing(format!("{a}; {b}"))),
        (Part::Invalid(message, _), other) => Err(Unread::Invalid {
            message: format!("the ConfigMap: {message}"),
            problems: match other {
                Part::Invalid(_, p) | Part::Good(_, p) => p,
                Part::Missing(_) => vec![],
            },
        }),
        (_, Part::Invalid(message, problems)) => Err(Unread::Invalid { message, problems }),
        (Part::Missing(_), Part::Good(config, notices))
        | (Part::Good(config, notices), Part::Missing(_)) => Ok(Read { config, notices }),
        (Part::Good(cm, _), Part::Good(objects, notices)) => merge(cm, objects, notices),
    }
}

/// The ConfigMap's pools, then the objects' ones. With pools from both, the
/// objects' rule orders them (MetalLB's priority rule); with the objects
/// empty, the ConfigMap's own order stays.
fn merge(cm: Config, objects: Config, mut notices: Vec<Problem>) -> Result<Read, Unread> {
    let mut clashes: Vec<Problem> = Vec::new();
    for p in &objects.pools {
        let target = ObjectRef {
            api_version: crd::API_VERSION.to_owned(),
            kind: "IPAddressPool".to_owned(),
            namespace: None,
            name: p.name.clone(),
        };
        let clash = |field: &str, message: String| Problem {
            severity: Severity::Error,
            object: format!("IPAddressPool {}", p.name),
            field: Some(field.to_owned()),
            message,
            targets: vec![target.clone()],
        };
        if cm.pools.iter().any(|c| c.name == p.name) {
            clashes.push(clash(
                "metadata.name",
                format!(
                    "the ConfigMap also has a pool {:?}: with both config sources each pool must be defined in one of them",
                    p.name
                ),
            ));
        }
        for (i, r) in p.ranges.iter().enumerate() {
            for c in &cm.pools {
                if let Some(o) = c.ranges.iter().find(|o| o.overlaps(r)) {
                    clashes.push(clash(
                        &format!("spec.addresses[{i}]"),
                        format!(
                            "{} overlaps with {} of the ConfigMap's pool {:?}: with both config sources an address may be in one of them only",
                            crd::entry_text(r),
                            crd::entry_text(o),
                            c.name
                        ),
                    ));
                }
            }
        }
    }
    if !clashes.is_empty() {
        let message = clashes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        clashes.append(&mut notices);
        return Err(Unread::Invalid {
            message,
            problems: clashes,
        });
    }
    let order = if objects.pools.is_empty() {
        cm.order
    } else {
        PoolOrder::Priority
    };
    let mut pools = cm.pools;
    pools.extend(objects.pools);
    Ok(Read {
        config: Config { pools, order },
        notices,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CM: &str = "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0/28]\n";
    fn objects(name: &str, range: &str) -> String {
        format!(
            "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {{name: {name}, namespace: ferrolb-system}}\nspec:\n  addresses: [{range}]\n---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {{name: all, namespace: ferrolb-system}}\n"
        )
    }

    #[test]
    fn source_names_round_trip() {
        for s in [Source::ConfigMap, Source::Crds, Source::Both] {
            assert_eq!(s.to_string().parse::<Source>(), Ok(s));
        }
        assert!(
            "crd"
                .parse::<Source>()
                .unwrap_err()
                .contains("configmap, crds or both")
        );
    }

    #[test]
    fn one_source_reads_as_its_parser() {
        let r = read(&Input::configmap(Ok(CM.into()))).unwrap();
        assert_eq!(r.config, config::parse(CM).unwrap());
        let text = objects("b", "198.51.100.0/28");
        let r = read(&Input::crds(Ok(text.clone()))).unwrap();
        assert_eq!(Some(r.config), crd::parse(&text).config);
        assert_eq!(
            read(&Input::crds(Err("not installed".into()))),
            Err(Unread::Missing("not installed".into()))
        );
    }

    #[test]
    fn invalid_objects_name_their_object_for_events() {
        let text = objects("b", "198.51.100.0/33");
        let Err(Unread::Invalid { message, problems }) = read(&Input::crds(Ok(text))) else {
            panic!("refused")
        };
        assert!(message.contains("spec.addresses[0]"), "{message}");
        let p = &problems[0];
        assert_eq!(p.severity, Severity::Error);
        assert_eq!(p.targets.len(), 1);
        assert_eq!(p.targets[0].kind, "IPAddressPool");
        assert_eq!(p.targets[0].name, "b");
        assert_eq!(p.targets[0].namespace.as_deref(), Some("ferrolb-system"));
    }

    #[test]
    fn both_sources_merge_and_refuse_clashes() {
        let input = |objs: String| Input {
            configmap: Some(Ok(CM.into())),
            crds: Some(Ok(objs)),
        };
        let r = read(&input(objects("b", "198.51.100.0/28"))).unwrap();
        let names: Vec<&str> = r.config.pools.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);

        let Err(Unread::Invalid { message, problems }) =
            read(&input(objects("a", "198.51.100.0/28")))
        else {
            panic!("a pool in both is refused")
        };
        assert!(message.contains("also has a pool \"a\""), "{message}");
        assert_eq!(problems[0].targets[0].name, "a");

        let Err(Unread::Invalid { message, .. }) = read(&input(objects("b", "192.0.2.8/29")))
        else {
            panic!("an address in both is refused")
        };
        assert!(
            message.contains("192.0.2.8/29 overlaps with 192.0.2.0/28"),
            "{message}"
        );
    }

    #[test]
    fn both_sources_use_what_exists() {
        let r = read(&Input {
            configmap: Some(Err("the ConfigMap does not exist".into())),
            crds: Some(Ok(objects("b", "198.51.100.0/28"))),
        })
        .unwrap();
        assert_eq!(r.config.pools.len(), 1);
        let r = read(&Input {
            configmap: Some(Ok(CM.into())),
            crds: Some(Err("not installed".into())),
        })
        .unwrap();
        assert_eq!(r.config, config::parse(CM).unwrap());
        assert!(matches!(
            read(&Input {
                configmap: Some(Err("no ConfigMap".into())),
                crds: Some(Err("no CRDs".into())),
            }),
            Err(Unread::Missing(m)) if m == "no ConfigMap; no CRDs"
        ));
        // A ConfigMap that does not parse refuses the whole config.
        assert!(matches!(
            read(&Input {
                configmap: Some(Ok("address-pools: [\n".into())),
                crds: Some(Ok(objects("b", "198.51.100.0/28"))),
            }),
            Err(Unread::Invalid { .. })
        ));
    }
}
