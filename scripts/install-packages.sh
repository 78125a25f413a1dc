#!/usr/bin/env bash
# Installs the Debian packages named as arguments that are not installed yet, starting no
# service (Debian's nginx would take port 80, and fails its install where it cannot): the
# tests and the benchmark harness start their own, on free ports.
set -euo pipefail
missing=()
for p in "$@"; do
    # Installed, not merely known (a removed package keeps a status with its config files).
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
        missing+=("$p")
done
((${#missing[@]})) || exit 0
echo "installing ${missing[*]}"
apt-get update -qq
policy=/usr/sbin/policy-rc.d
made_policy=
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
fi
installed=0
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" || installed=$?
if [[ -n $made_policy ]]; then rm -f "$policy"; fi
exit "$installed"
