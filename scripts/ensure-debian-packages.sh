#!/usr/bin/env bash
# Installs the Debian packages the tests and the demo use, when they are missing:
#   prometheus (prometheus + promtool): the alert rule tests and the live metrics;
#   containerd, runc, containernetworking-plugins: the optional real node
#     (cellguard.devcluster.realnode, `cellguard dev-cluster --real-nodes 1`);
#   buildah, debootstrap: the cellguard image built from the Dockerfile without a registry
#     or a daemon, on a local Debian base (cellguard.devcluster.images).
# Quick and silent when everything is present (a few `command -v` and file checks).
set -euo pipefail
missing=()
command -v prometheus >/dev/null && command -v promtool >/dev/null || missing+=(prometheus)
command -v containerd >/dev/null && command -v ctr >/dev/null || missing+=(containerd)
command -v runc >/dev/null || [[ -x /usr/sbin/runc ]] || missing+=(runc)
[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local ]] || missing+=(containernetworking-plugins)
command -v buildah >/dev/null || missing+=(buildah)
command -v debootstrap >/dev/null || [[ -x /usr/sbin/debootstrap ]] || missing+=(debootstrap)
[[ ${#missing[@]} -eq 0 ]] && exit 0
if [[ $(id -u) -ne 0 ]]; then
	echo "missing Debian packages: ${missing[*]} (run: sudo apt-get install ${missing[*]})" >&2
	exit 1
fi
echo "installing Debian packages: ${missing[*]} (about 10-30 s) ..." >&2
export DEBIAN_FRONTEND=noninteractive
echo "  apt-get update ..." >&2
apt-get update -qq
echo "  apt-get install ${missing[*]} ..." >&2
apt-get install -y -q --no-install-recommends "${missing[@]}" | grep -E '^(Get|Setting up)' >&2 || true
status=0
for package in "${missing[@]}"; do
	dpkg-query -W -f='${Status}\n' "$package" 2>/dev/null | grep -q '^install ok installed' ||
		{ echo "apt-get did not install $package" >&2; status=1; }
done
exit "$status"
