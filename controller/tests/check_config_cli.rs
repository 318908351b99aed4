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
    assert!(checked >= 5, "expected the five examples, found {checked}");
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
