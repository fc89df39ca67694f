#!/usr/bin/env bash
# Installs the Debian packages the tests and the demo use, when they are missing:
# prometheus (prometheus + promtool, for the alert rule tests and the live metrics).
set -euo pipefail
missing=()
command -v prometheus >/dev/null && command -v promtool >/dev/null || missing+=(prometheus)
[[ ${#missing[@]} -eq 0 ]] && exit 0
if [[ $(id -u) -ne 0 ]]; then
	echo "missing Debian packages: ${missing[*]} (run: sudo apt-get install ${missing[*]})" >&2
	exit 1
fi
echo "installing Debian packages: ${missing[*]} ..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
