#!/usr/bin/env bash
# The project's test command (README): installs what the tests need on a fresh machine, then
# runs every test of the workspace, the gateway built with its etcd support. Needs only a Rust
# toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

# System tools the tests call, as Debian packages: openssl verifies what the certificate
# authority issues, curl fetches its CRL over HTTP, mosquitto_pub and mosquitto_sub are MQTT
# agents of the gateway, and the load tool's own tests drive the benchmark peers nats-server
# and nginx's stream proxy and the mosquitto broker (started by the tool on free ports).
# Apertium's APy service with its English <-> Spanish pair is the translation engine of the
# natural-language translation tests (started by them on free ports).
# etcd-server and etcd-client (etcdctl) are the real 3-member clusters that the gateways of one
# domain share in the etcd tests; protobuf-compiler is protoc, which the etcd client crate's
# build needs (the gateway's own protocol compiles without it).
scripts/install-packages.sh openssl curl mosquitto-clients mosquitto nats-server nginx \
    libnginx-mod-stream apertium-apy apertium-eng-spa etcd-server etcd-client protobuf-compiler
# Python clients from PyPI: Eclipse paho-mqtt is an MQTT 5 agent in the MQTT adapter's tests,
# a2a-sdk's client an A2A agent in the A2A adapter's (JSON-RPC, HTTP+JSON, and gRPC with
# grpcio), and its server (Starlette on uvicorn) an A2A server agent the gateway calls.
python3 -c 'import paho.mqtt' 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check 'paho-mqtt==2.1.0'
# pyca/cryptography reads the certificates the authority issues (strict DER) in its tests.
python3 -c 'import cryptography.x509' 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check 'cryptography==48.0.0'
python3 -c 'import a2a.client, a2a.server.routes, httpx, starlette, sse_starlette, uvicorn, grpc' \
    2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check 'a2a-sdk[http-server,grpc]==1.3.0' \
        'uvicorn==0.55.0' 'grpcio==1.85.3'

# cargo test prints one result line per test binary, the last often for a crate with no
# doctests; the total at the end is the line that says how the whole run went.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked --features agw-controlplane/etcd 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
