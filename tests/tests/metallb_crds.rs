//! The kustomize component `manifests/components/metallb-crds` on a real
//! kube-apiserver: it installs MetalLB's layer-2 kinds (IPAddressPool,
//! L2Advertisement, ServiceL2Status, `metallb.io/v1beta1`), MetalLB users'
//! objects apply unchanged (the `config-examples/metallb-crds-*.yaml` files),
//! defaults and printer columns are MetalLB's, and the schema refuses what
//! MetalLB's refuses. Needs the Kubernetes binaries (`FERROLB_KUBE_BIN`).

use std::path::PathBuf;
use std::time::Duration;

use ferrolb_tests::kube::{ControlPlane, KUBE_BIN_ENV, KubeBinaries};
use ferrolb_tests::lab::eventually;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn metallb_objects_apply_unchanged_over_the_crd_component() {
    let Some(bins) = KubeBinaries::from_env() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "{KUBE_BIN_ENV} must be set in CI (scripts/test.sh sets it)"
        );
        eprintln!("metallb_crds skipped: {KUBE_BIN_ENV} is unset");
        return;
    };
    let work = std::env::temp_dir().join(format!("ferrolb-metallb-crds-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let cp = ControlPlane::start(bins.expect("the Kubernetes binaries"), &work)
        .expect("the control plane starts");

    // A user's kustomization that takes the component.
    let component = root().join("manifests/components/metallb-crds");
    let k = work.join("kustomization");
    std::fs::create_dir_all(&k).unwrap();
    let rel = ferrolb_tests::relative_path(&k, &component);
    std::fs::write(
        k.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\ncomponents:\n- {}\n",
            rel.display()
        ),
    )
    .unwrap();
    let applied = cp
        .kubectl(&["apply", "-k", &k.to_string_lossy()])
        .expect("the component applies");
    for crd in [
        "ipaddresspools.metallb.io",
        "l2advertisements.metallb.io",
        "servicel2statuses.metallb.io",
    ] {
        assert!(applied.contains(crd), "{applied}");
        cp.kubectl(&[
            "wait",
            "--for=condition=Established",
            &format!("crd/{crd}"),
            "--timeout=60s",
        ])
        .unwrap();
    }
    // Applying it again changes nothing.
    let again = cp.kubectl(&["apply", "-k", &k.to_string_lossy()]).unwrap();
    assert!(again.lines().all(|l| l.ends_with("unchanged")), "{again}");

    cp.kubectl(&["create", "namespace", "metallb-system"])
        .unwrap();
    let mut pools = 0;
    for entry in std::fs::read_dir(root().join("config-examples")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("metallb-crds-") {
            continue;
        }
        // Unchanged MetalLB objects: the schema takes every one of them.
        let out = eventually(&format!("{name} applied"), Duration::from_secs(60), || {
            cp.kubectl(&["apply", "-f", &path.to_string_lossy()]).ok()
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
        pools += out
            .lines()
            .filter(|l| l.starts_with("ipaddresspool"))
            .count();
    }
    assert!(pools >= 4, "{pools} pools applied");

    // MetalLB's defaults, as its CRD sets them.
    let list: Value = serde_json::from_str(
        &cp.kubectl(&["get", "ipaddresspools", "-A", "-o", "json"])
            .unwrap(),
    )
    .unwrap();
    for pool in list["items"].as_array().unwrap() {
        assert!(pool["spec"]["autoAssign"].is_boolean(), "{pool}");
        assert!(pool["spec"]["avoidBuggyIPs"].is_boolean(), "{pool}");
    }
    // MetalLB's columns.
    let table = cp.kubectl(&["get", "ipaddresspools", "-A"]).unwrap();
    let header = table.lines().next().unwrap_or_default().to_owned();
    for column in ["AUTO ASSIGN", "AVOID BUGGY IPS", "ADDRESSES"] {
        assert!(header.contains(column), "{table}");
    }
    let table = cp.kubectl(&["get", "l2advertisements", "-A"]).unwrap();
    assert!(
        table
            .lines()
            .next()
            .unwrap_or_default()
            .contains("IPADDRESSPOOLS"),
        "{table}"
    );

    // What MetalLB's schema refuses, this one refuses: a pool without addresses.
    let bad = work.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: bad, namespace: metallb-system}\nspec: {autoAssign: true}\n",
    )
    .unwrap();
    let refused = cp
        .kubectl(&["apply", "-f", &bad.to_string_lossy()])
        .expect_err("a pool without addresses is refused");
    assert!(format!("{refused:#}").contains("addresses"), "{refused:#}");
    drop(cp);
    let _ = std::fs::remove_dir_all(&work);
}
