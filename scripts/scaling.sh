#!/usr/bin/env bash
# How the relay scales across cores (issue 20, target 5): one gateway with 1, 2, 4 and 8
# shards (as many as leave half the CPUs to the load), shard i pinned to CPU i and the load on
# the CPUs after them; 16 pairs per shard streaming 256 B closed loop, each pair on one shard
# (`--scenario spread`: nothing crosses shards), then half the pairs crossing to the next
# shard (`--scenario half-cross`). Prints messages/s per shard count, the efficiency against
# linear (messages/s with k shards over k times one shard's), and what crossing shards costs.
# Meant for a machine with 8 cores or more (the `device` machine); on 2 cores it runs one
# shard only, as a smoke test. Raw results: target/scaling/*.json.
#
#   scripts/scaling.sh              # 3 runs each, 4 s
#   QUICK=1 scripts/scaling.sh      # 1 run each, 2 s
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p agw-loadtest
load=target/release/agw-loadtest
out=target/scaling
rm -rf "$out"
mkdir -p "$out"
if [[ "${QUICK:-}" == 1 ]]; then reps=1; seconds=2; else reps=3; seconds=4; fi
cpus=$(nproc)
shard_counts=()
for k in 1 2 4 8; do
    if ((k == 1 || 2 * k <= cpus)); then shard_counts+=("$k"); fi
done
echo "== $cpus CPUs: shards ${shard_counts[*]} (each count leaves the load at least as many CPUs)"
started=$(date +%s)
for r in $(seq 1 "$reps"); do
    for k in "${shard_counts[@]}"; do
        scenarios=(spread)
        if ((k > 1)); then scenarios+=(half-cross); fi
        for s in "${scenarios[@]}"; do
            name="$s-$k-$r"
            printf '[%3ds] %-24s ' "$(($(date +%s) - started))" "$name"
            "$load" --pin --agent-plaintext --shards "$k" --scenario "$s" --pairs $((16 * k)) \
                --size 256 --seconds "$seconds" --json "$out/$name.json" 2>"$out/$name.log" |
                grep -E '^delivered' | tr -s ' ' || echo "FAILED (see $out/$name.log)"
        done
    done
done
/usr/bin/python3 - "$out" <<'PY'
import glob, json, os, statistics, sys
runs = {}
for path in glob.glob(os.path.join(sys.argv[1], "*.json")):
    scenario, k, _ = os.path.basename(path)[:-5].rsplit("-", 2)
    runs.setdefault((scenario, int(k)), []).append(json.load(open(path)))
def med(scenario, k, key):
    values = [r[key] for r in runs.get((scenario, k), []) if r.get(key) is not None]
    return statistics.median(values) if values else None
one = med("spread", 1, "delivered_per_second")
print("\n| shards | messages/s, none crossing | vs linear (target >= 0.8) | half crossing | its cost (target <= 20%) | limit |")
print("| --- | --- | --- | --- | --- | --- |")
for k in sorted({k for _, k in runs}):
    spread = med("spread", k, "delivered_per_second")
    half = med("half-cross", k, "delivered_per_second")
    bounds = ",".join(r["bound"] for r in runs.get(("spread", k), []))
    linear = f"{spread / (k * one):.2f}" if spread and one else "-"
    cost = f"{1 - half / spread:.0%}" if half and spread else "-"
    print(f"| {k} | {spread:,.0f} | {linear} | {f'{half:,.0f}' if half else '-'} | {cost} | {bounds} |")
PY
