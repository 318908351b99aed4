#!/usr/bin/env bash
# The local lab demo: ferrolb on simulated nodes in network namespaces.
# Installs what it needs, builds the release binaries, brings up a control
# plane, 3 nodes and a client, creates a LoadBalancer Service, shows the client
# reaching it, cuts the owner node's link, prints the failover time, and tears
# everything down. Needs root. Extra arguments go to ferrolb-lab
# (--nodes N, --keep, --kubeconfig FILE, --config FILE; see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --locked -p ferrolb-controller -p ferrolb-speaker -p ferrolb-tests --bins
exec target/release/ferrolb-lab "$@"
