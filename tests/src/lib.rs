//! Whole-system tests for ferrolb: the test API server and the helper every end-to-end test
//! takes its cluster from.

pub mod agent;
pub mod apiserver;
pub mod e2e;
pub mod kube;
pub mod kubeproxy;
pub mod lab;
pub mod nodenet;
pub mod podexec;
pub mod procfs;

pub use apiserver::{Contents, ServerOptions, TestApiServer};
pub use e2e::{E2E_KUBECONFIG_ENV, TestCluster};

/// The path from directory `from` to `to`, as kustomize wants it (relative,
/// through `..`): both must exist.
pub fn relative_path(from: &std::path::Path, to: &std::path::Path) -> std::path::PathBuf {
    let from = from.canonicalize().expect("an existing directory");
    let to = to.canonicalize().expect("an existing path");
    let common = from
        .components()
        .zip(to.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut out = std::path::PathBuf::new();
    for _ in from.components().skip(common) {
        out.push("..");
    }
    for c in to.components().skip(common) {
        out.push(c);
    }
    out
}
