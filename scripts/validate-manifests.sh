#!/usr/bin/env bash
# Validates every manifest and config example against the Kubernetes schemas,
# renders the kustomization, and checks every config example with check-config.
# Needs python3 with pip, kubectl, and a built ferrolb-controller (cargo build).
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

controller=target/debug/ferrolb-controller
[ -x "$controller" ] || cargo build --locked -p ferrolb-controller
for f in config-examples/*.yaml manifests/config.yaml; do
  "$controller" check-config "$f" > /dev/null || { echo "check-config failed for $f" >&2; "$controller" check-config "$f"; exit 1; }
done
echo "validate-manifests: ok"
