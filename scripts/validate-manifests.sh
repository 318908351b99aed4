#!/usr/bin/env bash
# Validates every manifest and config example against the Kubernetes schemas,
# renders the kustomization, and checks every config example with check-config.
# Needs python3 (venv), kubectl and cargo.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned: schemas change with each release.
KV_VERSION=1.37.0
KV_K8S=1.33
venv=target/validate-venv
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "kubernetes-validate==${KV_VERSION}"
fi

rendered=$(mktemp)
trap 'rm -f "$rendered"' EXIT
kubectl kustomize manifests/ > "$rendered"
echo "validate-manifests: kustomize rendered $(grep -c '^kind:' "$rendered") objects"

"$venv/bin/kubernetes-validate" --strict --kubernetes-version "$KV_K8S" "$rendered" config-examples/*.yaml manifests/config.yaml

# Through cargo, so that CARGO_TARGET_DIR and an out-of-date build do not matter.
check_config() { cargo run --quiet --locked -p ferrolb-controller -- check-config "$@"; }
for f in config-examples/*.yaml manifests/config.yaml; do
  check_config "$f" > /dev/null || { echo "check-config failed for $f" >&2; check_config "$f"; exit 1; }
done
echo "validate-manifests: ok"
