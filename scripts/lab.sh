#!/usr/bin/env bash
# The local lab demo: ferrolb on simulated nodes in network namespaces.
# Installs what it needs, builds the Kubernetes components (once, cached) and
# ferrolb's release binaries, brings up a real control plane, 3 nodes (the
# lab's node agent in place of kubelet, and kube-proxy) and a client, deploys
# ferrolb from manifests/, creates a Deployment and a LoadBalancer Service,
# shows the client reaching every replica, cuts the owner node's link, prints
# the failover time, and tears everything down. Needs root. Extra arguments go
# to ferrolb-lab (--nodes N, --keep, --config FILE, --proxy-mode iptables,
# --control-plane test; see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# Real Kubernetes v1.36.3 binaries from Go modules (docs/kube-binaries.md):
# built once into a cache (about 15 minutes and 4 GiB the first time), then a no-op.
FERROLB_KUBE_BIN="$(scripts/build-kube.sh | tail -n 1)"
export FERROLB_KUBE_BIN
cargo build --release --locked -p ferrolb-controller -p ferrolb-speaker -p ferrolb-tests --bins
exec target/release/ferrolb-lab "$@"
