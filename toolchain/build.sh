#!/usr/bin/env bash
# Builds the real control plane cellguard is tested against, from Go modules only:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok and helm.
# Each component is a wrapper module beside this script (go.mod + go.sum committed).
# Binaries land in a cache outside the repo, keyed by a hash of the wrapper module and
# this script, so a warm run rebuilds nothing. Prints the bin directory on stdout's last line.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${CELLGUARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cellguard}
bin_dir="$cache_root/bin"
stamp_dir="$cache_root/stamps"
mkdir -p "$bin_dir" "$stamp_dir"

export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:-} -mod=readonly -trimpath"
export GOTOOLCHAIN=local

# The versions live in the wrapper modules' go.mod; read them back for -ldflags stamping.
module_version() { awk -v m="$2" '$1 == "require" && $2 == m {print $3} $1 == m && NF == 2 {print $2}' "$here/$1/go.mod" | head -n1; }

component_key() {
	cat "$here/$1/go.mod" "$here/$1/go.sum" "$here/build.sh" | sha256sum | cut -c1-16
}

log() { printf '[toolchain %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# build COMPONENT LDFLAGS BINARY=PACKAGE...
build() {
	local component=$1 ldflags=$2
	shift 2
	local key stamp
	key=$(component_key "$component")
	stamp="$stamp_dir/$component.$key"
	local missing=0 spec
	for spec in "$@"; do
		[[ -x "$bin_dir/${spec%%=*}" ]] || missing=1
	done
	if [[ -f "$stamp" && $missing == 0 ]]; then
		log "$component: up to date ($key)"
		return
	fi
	local started=$SECONDS
	for spec in "$@"; do
		local name=${spec%%=*} pkg=${spec#*=}
		log "$component: building $name from $pkg (a cold build takes minutes) ..."
		(cd "$here/$component" && go build -ldflags "$ldflags" -o "$bin_dir/$name.tmp" "$pkg")
		mv -f "$bin_dir/$name.tmp" "$bin_dir/$name"
		log "$component: $name done after $((SECONDS - started)) s"
	done
	rm -f "$stamp_dir/$component".*
	touch "$stamp"
}

k8s_version=$(module_version kubernetes k8s.io/kubernetes)
k8s_minor=$(echo "$k8s_version" | cut -d. -f2)
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	k8s_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
	k8s_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

kwok_version=$(module_version kwok sigs.k8s.io/kwok)
helm_version=$(module_version helm helm.sh/helm/v3)

build etcd "-s -w" etcd=go.etcd.io/etcd/server/v3
build kwok "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$kwok_version" kwok=sigs.k8s.io/kwok/cmd/kwok
build helm "-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version" helm=helm.sh/helm/v3/cmd/helm
build kubernetes "$k8s_ldflags" \
	kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver \
	kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager \
	kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler \
	kubectl=k8s.io/kubernetes/cmd/kubectl

echo "$bin_dir"
