#!/usr/bin/env bash
# The project's test command (README): installs what the tests need on a fresh machine, then
# runs every test of the workspace. Needs only a Rust toolchain; no system protoc.
set -euo pipefail
cd "$(dirname "$0")/.."

# System tools the tests call, as Debian packages. Empty until a test needs one (openssl for
# the certificate authority's interop tests, mosquitto clients for the MQTT adapter, ...).
packages=()
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

cargo test --workspace --locked
