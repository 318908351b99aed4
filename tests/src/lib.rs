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
