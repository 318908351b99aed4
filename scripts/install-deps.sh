#!/usr/bin/env bash
# Installs the system packages ferrolb's tests and lab need (Debian/Ubuntu).
# Needs root (or sudo); safe to run again.
set -euo pipefail

packages=(
  iproute2        # ip netns, veth, bridge: the network-namespace tests and the lab
  nftables        # kube-proxy (nftables mode), loss/delay injection, the light lab's DNAT
  iptables        # kube-proxy in iptables mode (ferrolb-lab --proxy-mode iptables)
  iputils-arping  # ARP probes from the test client
  ndisc6          # NDP probes from the test client
  procps          # process checks in tests
  curl            # speaker tests read metrics inside network namespaces
  python3-venv    # scripts/validate-manifests.sh installs kubernetes-validate in a venv
  keepalived      # scripts/bench.sh: the VRRP failover it is compared with
  iperf3          # scripts/bench.sh: bulk traffic through a node
  openssl         # the test control plane's ServiceAccount signing key
)

if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    exec sudo --preserve-env=PATH "$0" "$@"
  fi
  echo "install-deps: run as root (apt-get needs it)" >&2
  exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-deps: no apt-get here; install by hand: ${packages[*]} kubectl" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null

# kubectl: the tests drive the test API server with it. Debian's own package
# (kubernetes-client) is old but enough; a newer kubectl already on PATH wins.
if ! command -v kubectl >/dev/null 2>&1; then
  apt-get install -y -qq --no-install-recommends kubernetes-client >/dev/null
fi
# Go builds the real Kubernetes components (scripts/build-kube.sh); Debian's
# own golang is too old, so the machine's Go 1.26 or later is required.
if ! command -v go >/dev/null 2>&1; then
  echo "install-deps: Go 1.26 or later is needed on PATH to build the Kubernetes components (scripts/build-kube.sh)" >&2
  exit 1
fi
echo "install-deps: ok ($(kubectl version --client 2>/dev/null | head -n1))"
