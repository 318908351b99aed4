//! `ferrolb-controller check-config`: validate a config offline, a ConfigMap
//! or a file of MetalLB `metallb.io/v1beta1` objects (told apart by content),
//! and `--to-crds`, which writes a ConfigMap's pools as MetalLB objects.

use std::fmt::Write as _;

use ferrolb_core::config::{self, ConfigError};
use ferrolb_core::crd::{self, Problem, Severity};
use ferrolb_core::{AddressPool, Config};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// One pool as `--output json` prints it.
#[derive(Serialize)]
struct PoolView {
    name: String,
    protocol: &'static str,
    auto_assign: bool,
    avoid_buggy_ips: bool,
    /// Empty: every namespace may use the pool (unless namespace selectors restrict it).
    namespaces: Vec<String>,
    ranges: Vec<String>,
    cidrs: Vec<String>,
    /// MetalLB's `serviceAllocation.priority` (lower first), when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<i32>,
    /// How many `serviceAllocation.namespaceSelectors`, when any.
    #[serde(skip_serializing_if = "is_zero")]
    namespace_selectors: usize,
    /// How many `serviceAllocation.serviceSelectors`, when any.
    #[serde(skip_serializing_if = "is_zero")]
    service_selectors: usize,
    /// False when no L2Advertisement selects the pool (assigned, not announced).
    #[serde(skip_serializing_if = "is_true")]
    announced: bool,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn is_true(b: &bool) -> bool {
    *b
}

impl PoolView {
    fn of(p: &AddressPool) -> PoolView {
        PoolView {
            name: p.name.clone(),
            protocol: "layer2",
            auto_assign: p.auto_assign,
            avoid_buggy_ips: p.avoid_buggy_ips,
            namespaces: p.namespaces().into_iter().flatten().cloned().collect(),
            ranges: p.ranges.iter().map(ToString::to_string).collect(),
            cidrs: p
                .ranges
                .iter()
                .flat_map(|r| r.cidrs())
                .map(|n| n.to_string())
                .collect(),
            priority: p.service_allocation.as_ref().and_then(|a| a.priority),
            namespace_selectors: p
                .service_allocation
                .as_ref()
                .map_or(0, |a| a.namespace_selectors.len()),
            service_selectors: p
                .service_allocation
                .as_ref()
                .map_or(0, |a| a.service_selectors.len()),
            announced: !p.advertisements.is_empty(),
        }
    }
}

/// Checks `input` (a ConfigMap manifest, the bare `config` document, or
/// MetalLB objects) and returns what to print and whether the config is valid.
pub fn check(input: &str, output: Output) -> (String, bool) {
    if crd::looks_like_crds(input) {
        return check_crds(input, output);
    }
    let result = config::extract_config_document(input)
        .map_err(|e| vec![e])
        .and_then(|doc| {
            config::parse(&doc).map_err(|errors| {
                // Positions in the file given, not inside its `config` string.
                match config::embedded_position(input, &doc) {
                    Some((line, indent)) => errors
                        .into_iter()
                        .map(|mut e| {
                            e.message = shift_position(&e.message, line, indent);
                            e
                        })
                        .collect(),
                    None => errors,
                }
            })
        });
    let valid = result.is_ok();
    let text = match (output, result) {
        (Output::Json, Ok(c)) => json(&serde_json::json!({
            "pools": c.pools.iter().map(PoolView::of).collect::<Vec<_>>()
        })),
        (Output::Json, Err(errors)) => json(&serde_json::json!({ "errors": errors })),
        (Output::Text, Ok(c)) => describe(&c),
        (Output::Text, Err(errors)) => describe_errors(&errors),
    };
    (text, valid)
}

/// Rewrites the first "line L column C" of a message by the offsets of the
/// embedded document in the file.
fn shift_position(message: &str, line_off: usize, col_off: usize) -> String {
    let Some(at) = message.find("line ") else {
        return message.to_owned();
    };
    let rest = &message[at + 5..];
    let digits = |s: &str| s.chars().take_while(char::is_ascii_digit).count();
    let n = digits(rest);
    let Ok(line) = rest[..n].parse::<usize>() else {
        return message.to_owned();
    };
    let after = &rest[n..];
    let Some(col_text) = after.strip_prefix(" column ") else {
        return message.to_owned();
    };
    let m = digits(col_text);
    let Ok(col) = col_text[..m].parse::<usize>() else {
        return message.to_owned();
    };
    format!(
        "{}line {} column {}{}",
        &message[..at],
        line + line_off,
        col + col_off,
        &col_text[m..]
    )
}

fn json(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).expect("a JSON value always serialises") + "\n"
}

/// Checks a file of MetalLB objects: the same summary and JSON as for a
/// ConfigMap, with the warnings and notices after it (`notices` in JSON), and
/// on failure the problems, each naming its object and field.
fn check_crds(input: &str, output: Output) -> (String, bool) {
    let parsed = crd::parse(input);
    let notices: Vec<&Problem> = parsed.notices().collect();
    let text = match (output, &parsed.config) {
        (Output::Json, Some(c)) => {
            let mut v = serde_json::json!({
                "pools": c.pools.iter().map(PoolView::of).collect::<Vec<_>>()
            });
            if !notices.is_empty() {
                v["notices"] = serde_json::json!(notices);
            }
            json(&v)
        }
        (Output::Json, None) => {
            let errors: Vec<&Problem> = parsed.errors().collect();
            let mut v = serde_json::json!({ "errors": errors });
            if !notices.is_empty() {
                v["notices"] = serde_json::json!(notices);
            }
            json(&v)
        }
        (Output::Text, Some(c)) => {
            let mut out = describe(c);
            if !notices.is_empty() {
                out.push('\n');
            }
            for p in notices {
                let _ = writeln!(out, "{}: {p}", severity_word(p.severity));
            }
            out
        }
        (Output::Text, None) => {
            let mut out = String::new();
            for p in &parsed.problems {
                let _ = writeln!(out, "{}: {p}", severity_word(p.severity));
            }
            let n = parsed.errors().count();
            let _ = writeln!(
                out,
                "config is invalid: {n} problem{} found",
                if n == 1 { "" } else { "s" }
            );
            out
        }
    };
    (text, parsed.config.is_some())
}

fn severity_word(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Notice => "notice",
    }
}

/// `check-config --to-crds`: the ConfigMap's pools as MetalLB objects in
/// `namespace`. Returns standard output, standard error and success; an
/// invalid config prints its problems as `check` does, and nothing else.
pub fn to_crds(input: &str, namespace: &str) -> (String, String, bool) {
    if crd::looks_like_crds(input) {
        return (
            String::new(),
            "error: the file already holds MetalLB objects; --to-crds converts a ConfigMap (or its `config` document)\n".to_owned(),
            false,
        );
    }
    let parsed = config::extract_config_document(input)
        .map_err(|e| vec![e])
        .and_then(|doc| config::parse(&doc));
    let config = match parsed {
        Ok(c) => c,
        Err(errors) => return (String::new(), describe_errors(&errors), false),
    };
    match crd::to_crds(&config, namespace) {
        Ok(conv) => {
            let mut err = String::new();
            for w in &conv.warnings {
                let _ = writeln!(err, "warning: {w}");
            }
            (conv.yaml, err, true)
        }
        Err(problems) => {
            let mut err = String::new();
            for p in &problems {
                let _ = writeln!(err, "error: {p}");
            }
            (String::new(), err, false)
        }
    }
}

fn describe(c: &Config) -> String {
    let mut out = format!(
        "config is valid: {} address pool{}\n",
        c.pools.len(),
        if c.pools.len() == 1 { "" } else { "s" }
    );
    if c.pools.is_empty() {
        out.push_str(
            "note: with no address pool, nothing will be assigned (is this the right file?)\n",
        );
    }
    for p in &c.pools {
        let usable = p.usable_addresses();
        let _ = writeln!(out, "\npool {:?} (layer2)", p.name);
        let _ = writeln!(out, "  auto-assign:     {}", p.auto_assign);
        let _ = writeln!(out, "  avoid-buggy-ips: {}", p.avoid_buggy_ips);
        let alloc = p.service_allocation.as_ref();
        let ns_selectors = alloc.map_or(0, |a| a.namespace_selectors.len());
        let _ = writeln!(
            out,
            "  namespaces:      {}",
            match (p.namespaces(), ns_selectors) {
                (None, 0) => "(all)".to_owned(),
                (Some(n), 0) => n.iter().cloned().collect::<Vec<_>>().join(", "),
                (n, k) => format!(
                    "{}{k} namespace selector{}",
                    n.map(|n| n.iter().cloned().collect::<Vec<_>>().join(", ") + " + ")
                        .unwrap_or_default(),
                    if k == 1 { "" } else { "s" }
                ),
            }
        );
        if let Some(prio) = alloc.and_then(|a| a.priority) {
            let _ = writeln!(out, "  priority:        {prio}");
        }
        if let Some(n) = alloc.map(|a| a.service_selectors.len()).filter(|n| *n > 0) {
            let _ = writeln!(out, "  service-selectors: {n}");
        }
        let node_selectors: usize = p
            .advertisements
            .iter()
            .map(|a| a.node_selectors.len())
            .sum();
        if node_selectors != 0 {
            let _ = writeln!(out, "  node-selectors:  {node_selectors}");
        }
        let interfaces = p.interfaces_on(None);
        if !interfaces.is_empty() {
            let _ = writeln!(out, "  interfaces:      {}", interfaces.join(", "));
        }
        match p.advertisements.len() {
            0 => {
                let _ = writeln!(out, "  announced:       no (no L2Advertisement selects it)");
            }
            1 => {}
            n => {
                let _ = writeln!(out, "  L2 advertisements: {n}");
            }
        }
        let _ = writeln!(out, "  usable addresses: {usable}");
        for r in &p.ranges {
            let cidrs: Vec<String> = r.cidrs().iter().map(ToString::to_string).collect();
            let _ = writeln!(out, "  - {r}  ({})", cidrs.join(" "));
        }
    }
    out
}

fn describe_errors(errors: &[ConfigError]) -> String {
    let mut out = String::new();
    for e in errors {
        let _ = writeln!(out, "error: {e}");
    }
    let _ = writeln!(
        out,
        "config is invalid: {} problem{} found",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lists_pools_with_ranges_and_covering_cidrs() {
        let (out, ok) = check(
            "address-pools:\n- name: default\n  protocol: layer2\n  addresses: [192.0.2.240-192.0.2.250, \"2001:db8::/127\"]\n  namespaces: [web]\n",
            Output::Json,
        );
        assert!(ok);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"pools": [{
                "name": "default",
                "protocol": "layer2",
                "auto_assign": true,
                "avoid_buggy_ips": false,
                "namespaces": ["web"],
                "ranges": ["192.0.2.240-192.0.2.250", "2001:db8::-2001:db8::1"],
                "cidrs": ["192.0.2.240/29", "192.0.2.248/31", "192.0.2.250/32", "2001:db8::/127"]
            }]})
        );
    }

    #[test]
    fn json_errors_name_pool_and_entry() {
        let (out, ok) = check(
            "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0/33]\n",
            Output::Json,
        );
        assert!(!ok);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["errors"][0]["pool"], "a");
        assert_eq!(v["errors"][0]["entry"], "192.0.2.0/33");
        assert!(
            v["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("larger than 32")
        );
    }

    /// A YAML error inside a ConfigMap's `config: |` is reported at its line
    /// and column in the file given, not inside the embedded string.
    #[test]
    fn yaml_errors_are_located_in_the_file() {
        let manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config\ndata:\n  config: |\n    address-pools:\n    - name: a\n      protocol: layer2\n      adresses: [192.0.2.0/28]\n";
        let (out, ok) = check(manifest, Output::Text);
        assert!(!ok);
        // `adresses` is on line 10, column 7 of the file (line 4, column 3 of the document).
        assert!(out.contains("line 10 column 7"), "{out}");
        let (out, _) = check(
            "address-pools:\n- name: a\n  protocol: layer2\n  adresses: [192.0.2.0/28]\n",
            Output::Text,
        );
        assert!(out.contains("line 4 column 3"), "{out}");
    }

    #[test]
    fn text_lists_every_problem() {
        let (out, ok) = check(
            "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0/33]\n- name: b\n  protocol: bgp\n  addresses: [198.51.100.0/24]\n",
            Output::Text,
        );
        assert!(!ok);
        assert!(out.contains("BGP mode is not supported"), "{out}");
        assert!(out.contains("pool \"a\", entry \"192.0.2.0/33\""), "{out}");
        assert!(
            out.ends_with("config is invalid: 2 problems found\n"),
            "{out}"
        );
    }
}
