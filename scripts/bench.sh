#!/usr/bin/env bash
# Runs every benchmark and rewrites BENCHMARKS.md from their output, headed by
# a description of this machine. Needs root (network namespaces) and about
# 2.5 hours; the allocator's largest case needs about 15 GB of memory, the
# 5,000-node membership simulation about 13 GB.
#
# FERROLB_TRIALS=N changes the 20 failover trials per case (a quick look:
# FERROLB_TRIALS=3). Each section is also kept in target/bench-sections/.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "bench.sh: run as root (the failover and lab benchmarks create network namespaces)" >&2
  exit 1
fi
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ "$commit" != unknown ] && ! git diff --quiet HEAD -- . ':!BENCHMARKS.md' 2>/dev/null; then
  commit="$commit with uncommitted changes"
fi
scripts/install-deps.sh
# The real Kubernetes components (cached after the first build): the controller
# benchmark also runs on a real kube-apiserver.
FERROLB_KUBE_BIN="$(scripts/build-kube.sh | tail -n 1)"
export FERROLB_KUBE_BIN
# The peers measured beside ferrolb (MetalLB; kube-vip's refusal is recorded).
FERROLB_PEERS_BIN="$(scripts/build-peers.sh | tail -n 1)"
export FERROLB_PEERS_BIN
cargo build --release --locked --bins

sections=target/bench-sections
rm -rf "$sections"
mkdir -p "$sections"
run() {
  local name=$1
  shift
  echo "bench.sh: $name: $*" >&2
  "$@" >"$sections/$name.md"
}
run 1-allocator cargo bench --locked -p ferrolb-core --bench allocator
run 2-apiserver cargo bench --locked -p ferrolb-tests --bench apiserver_roundtrip
run 3-controller cargo bench --locked -p ferrolb-controller --bench create_to_status
run 4-layer2 cargo bench --locked -p ferrolb-speaker --bench layer2
run 5-lab cargo bench --locked -p ferrolb-tests --bench lab
run 7-endpoints cargo bench --locked -p ferrolb-endpoints --bench next
run 6-config-rss cargo bench --locked -p ferrolb-core --bench config_rss
run 8-membership cargo bench --locked -p ferrolb-core --bench membership -- --nodes 1000,5000 --loss 0,1,5,10 --quiet-secs 10 --kills 5 --no-partitions
run 8a-membership-partitions cargo bench --locked -p ferrolb-core --bench membership -- --nodes 1000 --loss "" --partitions 0.1,10,30,45,50 --heal-secs 10
run 8b-membership-lab cargo bench --locked -p ferrolb-tests --bench membership_lab -- --nodes 3,10,25,50 --secs 10 --mesh-max 25 --failover-trials 20
run 8c-mass-failover cargo bench --locked -p ferrolb-speaker --bench mass_failover
run 9-kube-native cargo bench --locked -p ferrolb-tests --bench kube_native
run 9b-peers cargo bench --locked -p ferrolb-tests --bench peers

cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
cpu=${cpu:-$(uname -m)}
mem=$(awk '/^MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)
os=$(. /etc/os-release && echo "$PRETTY_NAME")
{
  echo "# Benchmarks"
  echo
  echo "Every figure here comes from one run of \`bash scripts/bench.sh\` (root), which"
  echo "ran every benchmark below and wrote this file; each section also names the"
  echo "command that reproduces it alone. Timings are wall-clock and vary by a few"
  echo "percent between runs."
  echo
  echo "Machine: $(nproc) cores ($cpu), $mem of memory, $os, kernel $(uname -r);"
  echo "$(rustc --version | cut -d' ' -f1-2), release builds. Commit $commit, $(date -u +%Y-%m-%d)."
  for f in "$sections"/*.md; do
    echo
    cat "$f"
  done
} | cat -s >BENCHMARKS.md
echo "bench.sh: wrote BENCHMARKS.md" >&2
