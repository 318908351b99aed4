#!/usr/bin/env bash
# Runs every ferrolb test on a fresh machine: installs what the tests need,
# then the whole workspace's suite. Run as root: the network tests create
# network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked
# Manifests and config examples against the Kubernetes schemas, kustomize, check-config.
scripts/validate-manifests.sh
