#!/usr/bin/env bash
# Builds the real control plane cellguard is tested against, from Go modules only:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok and helm, the
# kubelet, kube-proxy and the tiny programs of its local images (cellguard-pause,
# cellguard-threads, cellguard-peers) for the optional real node (cellguard.devcluster.realnode),
# and helm-docs, which generates helm/cellguard/README.md from values.yaml's comments.
# Each component is a wrapper module beside this script (go.mod + go.sum committed).
# Binaries land in a cache outside the repo, keyed by a hash of what decides their bytes (the
# wrapper module, the Go version, the flags and packages), so a warm run rebuilds nothing.
# Progress goes to stderr: a numbered step per binary, a time estimate when something must be
# built, and a heartbeat every CELLGUARD_BUILD_HEARTBEAT seconds (20) while `go build` runs.
# Prints the bin directory on stdout's last line (cellguard.devcluster.toolchain reads it).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${CELLGUARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cellguard}
bin_dir="$cache_root/bin"
stamp_dir="$cache_root/stamps"
heartbeat=${CELLGUARD_BUILD_HEARTBEAT:-20}
mkdir -p "$bin_dir" "$stamp_dir"

export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:-} -mod=readonly -trimpath"
export GOTOOLCHAIN=local

# The versions live in the wrapper modules' go.mod; read them back for -ldflags stamping.
module_version() { awk -v m="$2" '$1 == "require" && $2 == m {print $3} $1 == m && NF == 2 {print $2}' "$here/$1/go.mod" | head -n1; }

go_version=$(go env GOVERSION)

# component_key COMPONENT LDFLAGS SPEC...: what decides the binaries' bytes, not this script's
# wording, so editing the progress output does not rebuild anything.
component_key() {
	local component=$1
	shift
	{
		cat "$here/$component/go.mod" "$here/$component/go.sum"
		printf '%s\n' "$go_version" "$CGO_ENABLED" "$GOFLAGS" "$@"
	} | sha256sum | cut -c1-16
}

log() { printf '[toolchain %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
duration() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

# Seconds a cold build (empty Go cache) takes on 2 cores, per binary, in build order;
# later binaries of one module reuse the packages the first compiled. Rough figures from
# the development machine (the kubelet alone, cold: 3-4 min); scaled by the core count.
declare -A cold_seconds=(
	[etcd]=70 [kwok]=90 [helm]=100 [helm-docs]=40
	[kube-apiserver]=240 [kube-controller-manager]=60 [kube-scheduler]=20 [kubectl]=30
	[kubelet]=90 [kube-proxy]=30 [cellguard-pause]=5 [cellguard-threads]=5 [cellguard-peers]=10
)

# Every binary in build order, as COMPONENT|LDFLAGS|NAME=PACKAGE (filled below).
steps=()
step_total=0

# go_build COMPONENT LDFLAGS NAME PACKAGE: `go build` with a heartbeat on stderr.
go_build() {
	local component=$1 ldflags=$2 name=$3 pkg=$4 started=$SECONDS pid status
	(cd "$here/$component" && exec go build -ldflags "$ldflags" -o "$bin_dir/$name.tmp.$$" "$pkg") &
	pid=$!
	# Interrupted (Ctrl-C, a closed pipe): take the compiler down too.
	trap 'kill "$pid" 2>/dev/null; rm -f "$bin_dir/$name.tmp.$$"; exit 130' INT TERM HUP PIPE
	local next=$heartbeat
	while kill -0 "$pid" 2>/dev/null; do
		sleep 1
		if ((SECONDS - started >= next)) && kill -0 "$pid" 2>/dev/null; then
			log "      still building $name, $(duration $((SECONDS - started))) elapsed"
			next=$((next + heartbeat))
		fi
	done
	status=0
	wait "$pid" || status=$?
	trap - INT TERM HUP PIPE
	if ((status != 0)); then
		log "      go build of $name ($pkg) failed with exit code $status"
		rm -f "$bin_dir/$name.tmp.$$"
		exit "$status"
	fi
	mv -f "$bin_dir/$name.tmp.$$" "$bin_dir/$name"
	log "      $name built in $(duration $((SECONDS - started)))"
}

# plan COMPONENT LDFLAGS NAME=PACKAGE...: queue a component's binaries.
plan() {
	local component=$1 ldflags=$2 spec
	shift 2
	for spec in "$@"; do
		steps+=("$component|$ldflags|$spec")
		step_total=$((step_total + 1))
	done
}

# stale COMPONENT LDFLAGS: true when the component's stamp is missing or a binary is absent.
stale() {
	local component=$1 ldflags=$2 entry c flags spec specs=()
	for entry in "${steps[@]}"; do
		IFS='|' read -r c flags spec <<<"$entry"
		[[ $c == "$component" ]] && specs+=("$spec")
	done
	[[ -f "$stamp_dir/$component.$(component_key "$component" "$ldflags" "${specs[@]}")" ]] || return 0
	for spec in "${specs[@]}"; do
		[[ -x "$bin_dir/${spec%%=*}" ]] || return 0
	done
	return 1
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
helm_docs_version=$(module_version helm-docs github.com/norwoodj/helm-docs)

plan etcd "-s -w" etcd=go.etcd.io/etcd/server/v3
plan kwok "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$kwok_version" kwok=sigs.k8s.io/kwok/cmd/kwok
plan helm "-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version" helm=helm.sh/helm/v3/cmd/helm
plan helm-docs "-s -w -X main.version=${helm_docs_version#v}" helm-docs=github.com/norwoodj/helm-docs/cmd/helm-docs
plan kubernetes "$k8s_ldflags" \
	kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver \
	kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager \
	kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler \
	kubectl=k8s.io/kubernetes/cmd/kubectl \
	kubelet=k8s.io/kubernetes/cmd/kubelet \
	kube-proxy=k8s.io/kubernetes/cmd/kube-proxy
plan images "-s -w" cellguard-pause=./pause cellguard-threads=./threads cellguard-peers=./peers

# Which components need building, and how long that may take from a cold Go cache.
declare -A to_build=()
estimate=0
to_build_count=0
for entry in "${steps[@]}"; do
	IFS='|' read -r component ldflags spec <<<"$entry"
	if [[ -z ${to_build[$component]+set} ]]; then
		if stale "$component" "$ldflags"; then to_build[$component]=1; else to_build[$component]=0; fi
	fi
	if [[ ${to_build[$component]} == 1 ]]; then
		estimate=$((estimate + ${cold_seconds[${spec%%=*}]:-60}))
		to_build_count=$((to_build_count + 1))
	fi
done
if ((estimate > 0)); then
	cores=$(nproc 2>/dev/null || echo 2)
	estimate=$((estimate * 2 / (cores < 2 ? 2 : cores)))
	log "$to_build_count binaries to build with $go_version on $cores cores into $bin_dir"
	if [[ -d "$(go env GOCACHE)/00" ]]; then
		log "the Go build cache is warm: seconds to a minute per binary (from cold: about $(duration "$estimate"))"
	else
		log "the Go build cache is empty: a cold build, about $(duration "$estimate") - a heartbeat every ${heartbeat}s follows"
	fi
fi

step=0
declare -A built=()
for entry in "${steps[@]}"; do
	IFS='|' read -r component ldflags spec <<<"$entry"
	step=$((step + 1))
	name=${spec%%=*}
	if [[ ${to_build[$component]} == 0 ]]; then
		log "[$step/$step_total] $name: up to date"
		continue
	fi
	log "[$step/$step_total] $name: go build ${spec#*=} ..."
	go_build "$component" "$ldflags" "$name" "${spec#*=}"
	built[$component]=1
done

# Stamp each rebuilt component once all its binaries are in place.
for component in "${!built[@]}"; do
	specs=()
	for entry in "${steps[@]}"; do
		IFS='|' read -r c ldflags spec <<<"$entry"
		[[ $c == "$component" ]] && specs+=("$spec") && component_ldflags=$ldflags
	done
	rm -f "$stamp_dir/$component".*
	touch "$stamp_dir/$component.$(component_key "$component" "$component_ldflags" "${specs[@]}")"
done

echo "$bin_dir"
