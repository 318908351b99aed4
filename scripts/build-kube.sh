#!/usr/bin/env bash
# Builds the real Kubernetes binaries for the lab and the tests from the Go
# module in tests/kube (pinned to one Kubernetes release; see
# docs/kube-binaries.md): kube-apiserver, kube-controller-manager,
# kube-scheduler, kube-proxy, kubectl and etcd (a small main embedding etcd's
# server). Only Go is needed; sources come from the Go module proxy.
#
# The binaries go to a cache directory keyed by the Kubernetes version and a
# hash of go.mod, go.sum, etcd/main.go, the build flags and the Go version:
#   ${FERROLB_KUBE_CACHE:-$HOME/.cache/ferrolb/kube}/v1.36.3-<hash>/bin
# A second run with the same inputs builds nothing. The last line printed on
# stdout is always that bin directory (progress goes to stderr), so callers do
#   KUBE_BIN=$(scripts/build-kube.sh | tail -n 1)
# Builds run one at a time under `nice -n 19`, so they yield to other work.
# Options (environment): FERROLB_KUBE_CACHE (cache root), FERROLB_KUBE_KEEP_OLD=1
# (keep directories of earlier keys; by default they are removed after a build).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
mod="$repo/tests/kube"
KUBE_VERSION=v1.36.3 # k8s.io/kubernetes in tests/kube/go.mod; staging modules at v0.36.3
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl etcd)

log() { printf 'build-kube: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v go >/dev/null 2>&1 || die "go not found in PATH (Go 1.26 or later is needed)"
[[ -f "$mod/go.mod" && -f "$mod/go.sum" && -f "$mod/etcd/main.go" ]] || die "$mod is incomplete"
grep -q "^[[:space:]]*k8s.io/kubernetes $KUBE_VERSION\b" "$mod/go.mod" ||
	die "tests/kube/go.mod does not require k8s.io/kubernetes $KUBE_VERSION; update KUBE_VERSION in $0"

# Module builds only: never a toolchain other than the one named by GOTOOLCHAIN
# (if the environment sets it), no cgo (static binaries, no C compiler needed),
# no VCS stamping of the etcd main (the work tree may be dirty or not a repo).
export CGO_ENABLED=0
export GOFLAGS="-mod=readonly -buildvcs=false"
go_version=$(cd "$mod" && go env GOVERSION) || die "go env failed (does go.mod need a newer Go? see docs/kube-binaries.md)"

minor=${KUBE_VERSION#v1.}
minor=${minor%%.*}
# Version stamps, as Kubernetes' own build sets them (hack/lib/version.sh), so
# `kubectl version --client` and the API server's /version say v1.36.3.
ver_flags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ver_flags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
	ver_flags+=" -X $pkg.gitTreeState=clean -X $pkg.gitCommit="
done
ldflags="-s -w$ver_flags"
build_flags=(-trimpath "-ldflags=$ldflags")

key=$(
	{
		cat "$mod/go.mod" "$mod/go.sum" "$mod/etcd/main.go"
		printf '%s\n' "$go_version" "CGO_ENABLED=$CGO_ENABLED" "${build_flags[@]}" "${BINARIES[@]}"
	} | sha256sum | cut -c1-12
)
cache_root=${FERROLB_KUBE_CACHE:-${HOME:-/root}/.cache/ferrolb/kube}
dir="$cache_root/$KUBE_VERSION-$key"
bin="$dir/bin"
stamp="$dir/.complete"

complete() {
	[[ -f "$stamp" ]] || return 1
	local b
	for b in "${BINARIES[@]}"; do [[ -x "$bin/$b" ]] || return 1; done
}

if complete; then
	log "up to date: $bin"
	printf '%s\n' "$bin"
	exit 0
fi

mkdir -p "$bin"
# One build at a time, also across concurrent runs of this script.
if command -v flock >/dev/null 2>&1; then
	exec 9>"$cache_root/.lock"
	flock 9
	if complete; then
		log "up to date (built by a concurrent run): $bin"
		printf '%s\n' "$bin"
		exit 0
	fi
fi

pkg_of() {
	case "$1" in
	etcd) echo ./etcd ;;
	*) echo "k8s.io/kubernetes/cmd/$1" ;;
	esac
}

log "Kubernetes $KUBE_VERSION with $go_version into $bin (first build: tens of minutes)"
start=$SECONDS
cd "$mod"
for b in "${BINARIES[@]}"; do
	if [[ -x "$bin/$b" ]]; then
		log "$b: already built"
		continue
	fi
	t=$SECONDS
	log "$b: building $(pkg_of "$b")"
	nice -n 19 go build "${build_flags[@]}" -o "$bin/.$b.tmp" "$(pkg_of "$b")" >&2 ||
		die "$b: go build failed"
	mv -f "$bin/.$b.tmp" "$bin/$b"
	log "$b: done in $((SECONDS - t)) s ($(du -h "$bin/$b" | cut -f1))"
done
{
	echo "kubernetes $KUBE_VERSION"
	echo "go $go_version"
	echo "key $key"
	echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) in $((SECONDS - start)) s"
} >"$stamp"
log "all built in $((SECONDS - start)) s; $(du -sh "$bin" | cut -f1) in $bin"

if [[ "${FERROLB_KUBE_KEEP_OLD:-0}" != 1 ]]; then
	for old in "$cache_root"/v*-*/; do
		old=${old%/}
		[[ "$old" != "$dir" && -f "$old/.complete" ]] || continue
		log "removing the earlier build $old"
		rm -rf -- "$old"
	done
fi
printf '%s\n' "$bin"
