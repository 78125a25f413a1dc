#!/usr/bin/env bash
# The project's test command (README): installs what the tests need on a fresh machine, then
# runs every test of the workspace. Needs only a Rust toolchain; no system protoc.
set -euo pipefail
cd "$(dirname "$0")/.."

# System tools the tests call, as Debian packages: openssl verifies what the certificate
# authority issues, curl fetches its CRL over HTTP, and the load tool's own tests drive the
# benchmark peers nats-server and nginx's stream proxy (started by the tool on free ports).
packages=(openssl curl nats-server nginx libnginx-mod-stream)
missing=()
for p in "${packages[@]}"; do
    # Installed, not merely known (a removed package keeps a status with its config files).
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
        missing+=("$p")
done
if ((${#missing[@]})); then
    echo "installing ${missing[*]}"
    apt-get update -qq
    # Services are not started on install (Debian's nginx would take port 80, and fails its
    # install where it cannot): the tools start their own, on free ports.
    policy=/usr/sbin/policy-rc.d
    made_policy=
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
    fi
    installed=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" || installed=$?
    if [[ -n $made_policy ]]; then rm -f "$policy"; fi
    if ((installed != 0)); then exit "$installed"; fi
fi

# cargo test prints one result line per test binary, the last often for a crate with no
# doctests; the total at the end is the line that says how the whole run went.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
