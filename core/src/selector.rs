//! Kubernetes label selectors (`matchLabels` / `matchExpressions`), used by a
//! pool's `node-selectors` and by MetalLB's selectors of nodes, namespaces,
//! Services and pools.

use std::collections::BTreeMap;

use serde::Serialize;

/// An object's labels (`metadata.labels`).
pub type Labels = BTreeMap<String, String>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

/// A validated label selector. An empty selector matches every node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<Requirement>,
}

impl LabelSelector {
    /// Builds a selector, checking keys, values and operators as the API server does.
    pub fn new(
        match_labels: BTreeMap<String, String>,
        expressions: Vec<(String, String, Vec<String>)>,
    ) -> Result<LabelSelector, String> {
        for (k, v) in &match_labels {
            validate_key(k)?;
            validate_value(v).map_err(|e| format!("matchLabels {k:?}: {e}"))?;
        }
        let mut match_expressions = Vec::with_capacity(expressions.len());
        for (key, op, values) in expressions {
            validate_key(&key)?;
            let operator = match op.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err(format!(
                        "matchExpressions {key:?}: unknown operator {other:?} (expected In, NotIn, Exists or DoesNotExist)"
                    ));
                }
            };
            match operator {
                Operator::In | Operator::NotIn if values.is_empty() => {
                    return Err(format!(
                        "matchExpressions {key:?}: operator {op} needs at least one value"
                    ));
                }
                Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                    return Err(format!(
                        "matchExpressions {key:?}: operator {op} takes no values"
                    ));
                }
                _ => {}
            }
            for v in &values {
                validate_value(v).map_err(|e| format!("matchExpressions {key:?}: {e}"))?;
            }
            match_expressions.push(Requirement {
                key,
                operator,
                values,
            });
        }
        Ok(LabelSelector {
            match_labels,
            match_expressions,
        })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let got = labels.get(&r.key);
                match r.operator {
                    Operator::In => got.is_some_and(|v| r.values.contains(v)),
                    Operator::NotIn => !got.is_some_and(|v| r.values.contains(v)),
                    Operator::Exists => got.is_some(),
                    Operator::DoesNotExist => got.is_none(),
                }
            })
    }
}

/// A qualified name: optional DNS-subdomain prefix and `/`, then a name of at
/// most 63 characters of `[A-Za-z0-9_.-]`, starting and ending alphanumeric.
fn validate_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && (p.is_empty() || p.len() > 253 || !is_dns_subdomain(p))
    {
        return Err(format!("invalid label key {key:?}: bad prefix {p:?}"));
    }
    if name.is_empty() || name.len() > 63 || !is_label_token(name) {
        return Err(format!(
            "invalid label key {key:?}: the name must be 1-63 characters of [A-Za-z0-9_.-], starting and ending alphanumeric"
        ));
    }
    Ok(())
}

fn validate_value(v: &str) -> Result<(), String> {
    if v.is_empty() || (v.len() <= 63 && is_label_token(v)) {
        Ok(())
    } else {
        Err(format!(
            "invalid label value {v:?}: at most 63 characters of [A-Za-z0-9_.-], starting and ending alphanumeric"
        ))
    }
}

fn is_label_token(s: &str) -> bool {
    let b = s.as_bytes();
    b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// RFC 1123 subdomain: dot-separated lower-case labels.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// RFC 1123 label: 1-63 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.first()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && b.last()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selector_matches_labels_and_expressions() {
        let sel = LabelSelector::new(
            labels(&[("ferrolb.io/edge", "true")]),
            vec![
                ("zone".into(), "In".into(), vec!["a".into(), "b".into()]),
                ("drain".into(), "DoesNotExist".into(), vec![]),
            ],
        )
        .unwrap();
        assert!(sel.matches(&labels(&[("ferrolb.io/edge", "true"), ("zone", "a")])));
        assert!(!sel.matches(&labels(&[("ferrolb.io/edge", "true"), ("zone", "c")])));
        assert!(!sel.matches(&labels(&[
            ("ferrolb.io/edge", "true"),
            ("zone", "a"),
            ("drain", "")
        ])));
        assert!(!sel.matches(&labels(&[("zone", "a")])));
        assert!(LabelSelector::default().matches(&labels(&[])));
    }

    #[test]
    fn selector_rules_are_enforced() {
        let bad = [
            (labels(&[("-bad", "x")]), vec![]),
            (labels(&[("ok", "bad value")]), vec![]),
            (labels(&[("Bad.Prefix/ok", "x")]), vec![]),
            (
                labels(&[]),
                vec![("k".to_string(), "Equals".to_string(), vec![])],
            ),
            (
                labels(&[]),
                vec![("k".to_string(), "In".to_string(), vec![])],
            ),
            (
                labels(&[]),
                vec![("k".to_string(), "Exists".to_string(), vec!["v".to_string()])],
            ),
        ];
        for (ml, ex) in bad {
            assert!(
                LabelSelector::new(ml.clone(), ex.clone()).is_err(),
                "{ml:?} {ex:?}"
            );
        }
    }
}
