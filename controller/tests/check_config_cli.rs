//! The `check-config` command as a user runs it: exit codes, stdin, and every
//! file in config-examples/.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrolb-controller"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the controller binary runs");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

#[test]
fn every_example_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config-examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = run(
                &["check-config", path.to_str().unwrap(), "--output", "json"],
                None,
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{}: {stdout}", path.display());
            let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
            assert!(
                !v["pools"].as_array().unwrap().is_empty(),
                "{}",
                path.display()
            );
            checked += 1;
        }
    }
    // Five ConfigMaps and four files of MetalLB objects.
    assert!(checked >= 9, "expected the nine examples, found {checked}");
}

#[test]
fn reads_stdin_and_reports_every_error_with_exit_code_1() {
    let out = run(
        &["check-config", "-"],
        Some(
            "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0/24]\n- name: b\n  protocol: layer2\n  addresses: [192.0.2.128/25]\n",
        ),
    );
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("pool \"b\", entry \"192.0.2.128/25\": overlaps with entry \"192.0.2.0/24\" of pool \"a\""), "{stdout}");
}

#[test]
fn json_errors_on_failure() {
    let out = run(
        &["check-config", "-", "--output", "json"],
        Some("address-pools:\n- name: a\n  protocol: bgp\n  addresses: [192.0.2.0/24]\n"),
    );
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("BGP mode is not supported")
    );
}

#[test]
fn unreadable_file_exits_2() {
    let out = run(&["check-config", "/nonexistent/ferrolb.yaml"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading /nonexistent/ferrolb.yaml"));
}

#[test]
fn reports_the_size_pool_name_and_yaml_limits_as_the_controller_does() {
    let pool = "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0/24]\n";
    // A config over 256 KiB, bare and inside a ConfigMap manifest.
    let big = format!("{pool}#{}\n", "x".repeat(300 * 1024));
    let indented: String = big.lines().map(|l| format!("    {l}\n")).collect();
    let manifest = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config\ndata:\n  config: |\n{indented}"
    );
    for input in [&big, &manifest] {
        let out = run(&["check-config", "-"], Some(input));
        assert_eq!(out.status.code(), Some(1));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(
                "more than the 262144 bytes (256 KiB) ferrolb accepts; it was not parsed"
            ),
            "{stdout}"
        );
    }
    let long_name = pool.replace("name: a", &format!("name: {}", "a".repeat(64)));
    let out = run(&["check-config", "-"], Some(&long_name));
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("is 64 characters long; at most 63 are allowed"),
        "{stdout}"
    );
    let mut bomb =
        String::from("bgp-communities:\n  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for (prev, cur) in ('a'..='h').zip('b'..='i') {
        let refs = vec![format!("*{prev}"); 9].join(", ");
        bomb.push_str(&format!("  {cur}: &{cur} [{refs}]\n"));
    }
    let out = run(&["check-config", "-"], Some(&bomb));
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("the YAML is over ferrolb's limits"),
        "{stdout}"
    );
}

const CRD_POOL: &str = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: default\n  namespace: metallb-system\nspec:\n  addresses: [192.0.2.240-192.0.2.250]\n";
const CRD_L2: &str = "---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata:\n  name: l2\n  namespace: metallb-system\n";

#[test]
fn metallb_objects_print_the_same_summary_and_json_as_a_configmap() {
    let objects = format!("{CRD_POOL}{CRD_L2}");
    let configmap = "address-pools:\n- name: default\n  protocol: layer2\n  addresses: [192.0.2.240-192.0.2.250]\n";
    let text = run(&["check-config", "-"], Some(&objects));
    assert!(text.status.success());
    assert_eq!(
        String::from_utf8_lossy(&text.stdout),
        String::from_utf8_lossy(&run(&["check-config", "-"], Some(configmap)).stdout)
    );
    let json = run(&["check-config", "-", "--output", "json"], Some(&objects));
    assert!(json.status.success());
    assert_eq!(
        json.stdout,
        run(&["check-config", "-", "--output", "json"], Some(configmap)).stdout
    );
}

#[test]
fn metallb_object_errors_name_object_and_field_and_exit_1() {
    let bad = format!(
        "{}{CRD_L2}---\napiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata:\n  name: l2b\n  namespace: metallb-system\nspec:\n  interfaces: [\"eth 0\"]\n",
        CRD_POOL.replace("192.0.2.240-192.0.2.250", "192.0.2.0/33")
    );
    let out = run(&["check-config", "-"], Some(&bad));
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "error: IPAddressPool metallb-system/default, spec.addresses[0]: invalid CIDR"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("error: L2Advertisement metallb-system/l2b, spec.interfaces[0]: \"eth 0\" is not a valid interface name"),
        "{stdout}"
    );
    assert!(
        stdout.ends_with("config is invalid: 2 problems found\n"),
        "{stdout}"
    );
    let out = run(&["check-config", "-", "--output", "json"], Some(&bad));
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["errors"][0]["object"],
        "IPAddressPool metallb-system/default"
    );
    assert_eq!(v["errors"][0]["field"], "spec.addresses[0]");
    assert_eq!(v["errors"][1]["field"], "spec.interfaces[0]");
}

#[test]
fn metallb_warnings_and_bgp_notices_do_not_fail_the_check() {
    let objects = format!(
        "{CRD_POOL}---\napiVersion: metallb.io/v1beta2\nkind: BGPPeer\nmetadata:\n  name: router\n  namespace: metallb-system\nspec:\n  myASN: 64500\n  peerASN: 64501\n  peerAddress: 10.0.0.1\n"
    );
    let out = run(&["check-config", "-"], Some(&objects));
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("config is valid: 1 address pool\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("announced:       no (no L2Advertisement selects it)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("warning: IPAddressPool metallb-system/default: no L2Advertisement selects this pool: its addresses are assigned to Services but not announced"),
        "{stdout}"
    );
    assert!(
        stdout.contains("notice: BGPPeer metallb-system/router: BGP is not supported"),
        "{stdout}"
    );
    let out = run(&["check-config", "-", "--output", "json"], Some(&objects));
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["pools"][0]["announced"], false);
    assert_eq!(v["notices"][0]["severity"], "warning");
    assert_eq!(v["notices"][1]["severity"], "notice");
}

#[test]
fn to_crds_writes_objects_that_check_config_reads_back_as_the_same_pools() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config-examples");
    for name in [
        "per-namespace.yaml",
        "node-restricted.yaml",
        "metallb-v0.12.yaml",
    ] {
        let file = dir.join(name);
        let file = file.to_str().unwrap();
        let out = run(&["check-config", "--to-crds", file], None);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let objects = String::from_utf8(out.stdout).unwrap();
        assert!(objects.contains("namespace: metallb-system"), "{objects}");
        let back = run(&["check-config", "-", "--output", "json"], Some(&objects));
        assert!(
            back.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&back.stdout)
        );
        let original = run(&["check-config", file, "--output", "json"], None);
        assert_eq!(
            String::from_utf8_lossy(&back.stdout),
            String::from_utf8_lossy(&original.stdout),
            "{name}"
        );
    }
}

#[test]
fn to_crds_takes_a_namespace_and_refuses_what_it_cannot_convert() {
    let cm = "address-pools:\n- name: default\n  protocol: layer2\n  addresses: [192.0.2.0/28]\n";
    let out = run(
        &["check-config", "--to-crds", "--namespace", "lb", "-"],
        Some(cm),
    );
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("kind: IPAddressPool"), "{stdout}");
    assert!(stdout.contains("kind: L2Advertisement"), "{stdout}");
    assert!(stdout.contains("namespace: lb"), "{stdout}");
    // An invalid config: its problems, exit 1, no objects.
    let out = run(
        &["check-config", "--to-crds", "-"],
        Some(&cm.replace("/28", "/33")),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("larger than 32"));
    assert!(out.stdout.is_empty());
    // A name that cannot be an object's.
    let out = run(
        &["check-config", "--to-crds", "-"],
        Some(&cm.replace("default", "Team_A")),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid object name"));
    // Objects already.
    let out = run(&["check-config", "--to-crds", "-"], Some(CRD_POOL));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds MetalLB objects"));
    // A ConfigMap whose order the objects cannot keep: converted, with a warning.
    let mixed = "address-pools:\n- name: rest\n  protocol: layer2\n  addresses: [192.0.2.0/28]\n- name: team\n  protocol: layer2\n  namespaces: [web]\n  addresses: [192.0.2.16/28]\n";
    let out = run(&["check-config", "--to-crds", "-"], Some(mixed));
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("warning: pool \"rest\" (every namespace) comes before \"team\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
