#!/usr/bin/env bash
# Runs the end-to-end suites that work against any cluster on a real
# Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler built by scripts/build-kube.sh), started on loopback for the
# run and stopped after it. Extra arguments go to `cargo test`.
#
#   scripts/e2e-real.sh                 # every real-cluster suite
#   scripts/e2e-real.sh -- some_test    # a filter, as with cargo test
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${FERROLB_KUBE_BIN:-}" ]; then
  FERROLB_KUBE_BIN="$(scripts/build-kube.sh | tail -n1)"
fi
export FERROLB_KUBE_BIN

cargo build --locked -p ferrolb-tests --bin ferrolb-control-plane
work="$(mktemp -d -t ferrolb-e2e-real.XXXXXX)"
kubeconfig="$work/admin.kubeconfig"
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
"$target_dir/debug/ferrolb-control-plane" --dir "$work" --kubeconfig-out "$kubeconfig" &
cp_pid=$!
cleanup() {
  kill -TERM "$cp_pid" 2>/dev/null || true
  wait "$cp_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Wait for the kubeconfig (written once the control plane is ready).
for _ in $(seq 1 600); do
  [ -f "$kubeconfig" ] && break
  if ! kill -0 "$cp_pid" 2>/dev/null; then
    echo "e2e-real: the control plane failed to start" >&2
    exit 1
  fi
  sleep 0.5
done
[ -f "$kubeconfig" ] || { echo "e2e-real: the control plane was not ready in 300 s" >&2; exit 1; }

# The suites below take their cluster from FERROLB_E2E_KUBECONFIG; tests that
# need the test API server's fault injection say so and return early.
FERROLB_E2E_KUBECONFIG="$kubeconfig" cargo test --locked -p ferrolb-controller \
  --test e2e_rules --test e2e_resilience --test e2e_races --test e2e_rbac --test e2e_native "$@"
FERROLB_E2E_KUBECONFIG="$kubeconfig" cargo test --locked -p ferrolb-endpoints --test api "$@"
