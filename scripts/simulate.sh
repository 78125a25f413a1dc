#!/usr/bin/env bash
# The federation simulation's matrix (docs/scale.md): chain, random and tiered topologies of
# 10 to 1,000 gateways, each phase (start, a gateway's failure, a link's flap) with updates at
# most every 100 ms (the default) and, for comparison, at once. One JSON line per phase in
# $OUT (default target/simulate.jsonl); a progress line per run on stderr.
#
#   scripts/simulate.sh                 # the whole matrix: about an hour on one core (the
#                                       # 1,000-gateway failures are most of it)
#   GATEWAYS="10 100" scripts/simulate.sh
set -euo pipefail
cd "$(dirname "$0")/.."

out=${OUT:-target/simulate.jsonl}
gateways=${GATEWAYS:-"10 100 1000"}
agents=${AGENTS:-10}
cargo build --release --locked -p agw-controlplane --bin agw-simulate >&2
: >"$out"
for n in $gateways; do
    for topology in chain random tiered; do
        for interval in default 0; do
            # At once, path exploration after a failure grows with the paths: past 40
            # gateways it does not finish in the limit (docs/scale.md); run it small only.
            if [[ $interval == 0 && $n -gt 40 ]]; then
                continue
            fi
            # 1,000 gateways hold one agent each: about 2 KB a route, 4 GB in all.
            each=$agents
            if [[ $n -ge 1000 ]]; then
                each=1
            fi
            args=(--gateways "$n" --agents "$each" --topology "$topology" --json --limit-s 300)
            [[ $interval == default ]] || args+=(--advertisement-interval-ms "$interval")
            echo "simulate: $n gateways, $topology, interval $interval" >&2
            timeout 900 target/release/agw-simulate "${args[@]}" >>"$out" ||
                echo "simulate: $n $topology $interval did not converge in its limit" >&2
        done
    done
done
echo "simulate: results in $out" >&2
