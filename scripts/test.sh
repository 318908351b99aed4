#!/usr/bin/env bash
# Runs every ferrolb test on a fresh machine: installs what the tests need,
# then the whole workspace's suite. Run as root: the network tests create
# network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# A one-off build gains nothing from incremental state (gigabytes in target/).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# Real Kubernetes v1.36.3 binaries from Go modules (docs/kube-binaries.md):
# built once into a cache (about 15 minutes and 4 GiB the first time), then a no-op.
FERROLB_KUBE_BIN="$(scripts/build-kube.sh | tail -n 1)"
export FERROLB_KUBE_BIN
cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked
# The kubectl tests again with the built kubectl v1.36.3 (the run above used the one on PATH,
# Debian's 1.20 on a fresh Debian 12).
FERROLB_KUBECTL="$FERROLB_KUBE_BIN/kubectl" cargo test --locked -p ferrolb-tests --test apiserver_kubectl
# The end-to-end suites again, on a real control plane (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler) started for the run.
scripts/e2e-real.sh
# Manifests and config examples against the Kubernetes schemas, kustomize, check-config.
scripts/validate-manifests.sh
