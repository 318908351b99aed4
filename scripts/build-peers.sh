#!/usr/bin/env bash
# Builds the peers ferrolb is benchmarked against, from the Go module in
# tests/peers (pinned releases; docs/peers.md): MetalLB's controller and
# speaker (layer-2 mode, memberlist on), as bin/controller and bin/speaker
# (the file names of their images' entrypoints), beside MetalLB's own
# metallb-native.yaml. kube-vip is tried too: its module is fetched at the
# pinned release and, if refused, at the previous one; what the Go module
# proxy refused is recorded, and the other peers are built anyway.
#
# The binaries go to a cache directory keyed by a hash of go.mod, go.sum, the
# build flags and the Go version:
#   ${FERROLB_PEERS_CACHE:-$HOME/.cache/ferrolb/peers}/<hash>/bin
# with `status` beside bin/: one line per peer, `built NAME VERSION` or
# `refused NAME VERSION: the proxy's answer`. A second run builds nothing. The
# last line printed on stdout is that bin directory (progress goes to stderr):
#   PEERS_BIN=$(scripts/build-peers.sh | tail -n 1)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
mod="$repo/tests/peers"
METALLB_VERSION=v0.15.2 # latest v0.15.x served; also in tests/peers/go.mod
KUBE_VIP_VERSION=v1.0.3 # latest kube-vip release
KUBE_VIP_PREVIOUS=v1.0.2

log() { printf 'build-peers: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v go >/dev/null 2>&1 || die "go not found in PATH (Go 1.26 or later is needed)"
[[ -f "$mod/go.mod" && -f "$mod/go.sum" ]] || die "$mod is incomplete"
grep -q "^[[:space:]]*go.universe.tf/metallb $METALLB_VERSION\b" "$mod/go.mod" ||
	die "tests/peers/go.mod does not require go.universe.tf/metallb $METALLB_VERSION"

export CGO_ENABLED=0
export GOFLAGS="-mod=readonly -buildvcs=false"
go_version=$(cd "$mod" && go env GOVERSION) || die "go env failed"
build_flags=(-trimpath "-ldflags=-s -w")
key=$(
	{
		cat "$mod/go.mod" "$mod/go.sum"
		printf '%s\n' "$go_version" "CGO_ENABLED=$CGO_ENABLED" "${build_flags[@]}" "$KUBE_VIP_VERSION"
	} | sha256sum | cut -c1-12
)
cache_root=${FERROLB_PEERS_CACHE:-${HOME:-/root}/.cache/ferrolb/peers}
dir="$cache_root/$key"
bin="$dir/bin"
stamp="$dir/status"

if [[ -f "$stamp" ]]; then
	log "up to date: $bin"
	sed 's/^/build-peers: /' "$stamp" >&2
	printf '%s\n' "$bin"
	exit 0
fi
mkdir -p "$bin"
exec 9>"$cache_root/.lock"
flock 9
status=$(mktemp)

start=$SECONDS
cd "$mod"
for tool in controller speaker; do
	t=$SECONDS
	log "MetalLB $METALLB_VERSION $tool: building"
	nice -n 19 go build "${build_flags[@]}" -o "$bin/.$tool.tmp" "go.universe.tf/metallb/$tool" >&2 ||
		die "MetalLB $tool: go build failed"
	mv -f "$bin/.$tool.tmp" "$bin/$tool"
	log "MetalLB $tool: done in $((SECONDS - t)) s"
done
echo "built metallb $METALLB_VERSION" >>"$status"
# MetalLB's manifest for this release, from the module (the lab deploys it).
manifest=$(go list -m -f '{{.Dir}}' go.universe.tf/metallb)/config/manifests/metallb-native.yaml
cp "$manifest" "$bin/metallb-native.yaml"
chmod u+w "$bin/metallb-native.yaml"

# kube-vip: not in go.mod (the proxy refused it when this was written). Ask
# once for the pinned release and once for the previous one.
probe=$(mktemp -d)
(cd "$probe" && go mod init probe >/dev/null 2>&1)
vip=""
for v in "$KUBE_VIP_VERSION" "$KUBE_VIP_PREVIOUS"; do
	if out=$(cd "$probe" && GOFLAGS=-mod=mod go mod download -json "github.com/kube-vip/kube-vip@$v" 2>&1); then
		vip=$v
		break
	fi
	why=$(printf '%s\n' "$out" | sed -n 's/.*"Error": "\(.*\)".*/\1/p' | sed 's/\\n/ /g; s/\\t//g' | head -n 1)
	echo "refused kube-vip $v: ${why:-$out}" >>"$status"
done
rm -rf "$probe"
if [[ -n "$vip" ]]; then
	echo "served kube-vip $vip: not built (add it to tests/peers/go.mod as a tool)" >>"$status"
fi
mv "$status" "$stamp"
log "done in $((SECONDS - start)) s"
sed 's/^/build-peers: /' "$stamp" >&2
for old in "$cache_root"/*/; do
	old=${old%/}
	[[ "$old" != "$dir" && -f "$old/status" ]] || continue
	rm -rf -- "$old"
done
printf '%s\n' "$bin"
