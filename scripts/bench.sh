#!/usr/bin/env bash
# The benchmark matrix: installs the peers (nats-server, nginx's stream proxy) and the plotting
# library, builds, runs every figure of docs/benchmarks.md's harness section side by side
# (runs of different relays interleaved, the relay pinned to CPU 0 and the load to the other
# CPUs), then writes the tables and the plots (docs/bench/*.svg) into docs/benchmarks.md.
# About 9 minutes on 2 cores. Raw results: target/bench/runs/*.json.
#
#   scripts/bench.sh            # the whole matrix
#   QUICK=1 scripts/bench.sh    # one repetition, shorter runs (a smoke test of the script)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-packages.sh nats-server nginx libnginx-mod-stream python3-matplotlib

cargo build --release -p agw-loadtest -p agw-controlplane
load=target/release/agw-loadtest
out=target/bench/runs
rm -rf "$out"
mkdir -p "$out"
# What was measured (the report names it, whenever it is written).
git rev-parse --short HEAD >"$out/commit" 2>/dev/null || true

if [[ "${QUICK:-}" == 1 ]]; then reps=1; long=2; short=1; else reps=3; long=5; short=3; fi
started=$(date +%s)
run() { # run NAME ARGS...: one measurement, its JSON under $out/NAME.json
    local name=$1
    shift
    # nats-server and nginx carry plaintext: against them, agw's agents speak plain TCP too
    # (the TLS agent leg has its own comparison below).
    if [[ "$*" == *"--target agw"* ]]; then set -- "$@" --agent-plaintext; fi
    printf '[%3ds] %-40s ' "$(($(date +%s) - started))" "$name"
    if "$load" --pin --json "$out/$name.json" "$@" 2>"$out/$name.log" | grep -E '^delivered' | tr -s ' ' | tr -d '\n'; then
        echo
    else
        echo "FAILED (see $out/$name.log)"
    fi
}

echo "== headline: stream, 16 pairs, 256 B, one shard (x$reps, interleaved)"
for r in $(seq 1 "$reps"); do
    for t in agw nats nginx; do
        run "headline-$t-$r" --target "$t" --pairs 16 --size 256 --seconds "$long"
    done
done

echo "== sizes: stream, 16 pairs"
for s in 64 1024 16384 65536; do
    for t in agw nats nginx; do
        run "size-$s-$t" --target "$t" --pairs 16 --size "$s" --seconds "$short"
    done
done

echo "== patterns: 16 pairs (or senders, or receivers), 256 B"
for p in ping-pong fan-in fan-out; do
    for t in agw nats nginx; do
        [[ "$t/$p" == nginx/fan-out ]] && continue
        run "pattern-$p-$t" --target "$t" --pattern "$p" --pairs 16 --size 256 --seconds "$short"
    done
done

echo "== open loop at 50% of the gateway's closed-loop maximum (x$reps, interleaved)"
rate=$(python3 - "$out" <<'PY'
import json, glob, statistics, sys
runs = [json.load(open(f)) for f in glob.glob(sys.argv[1] + "/headline-agw-*.json")]
best = statistics.median(r["delivered_per_second"] for r in runs)
print(int(best * 0.5 / 16))
PY
)
echo "   $rate messages/s per sender, 16 senders"
for r in $(seq 1 "$reps"); do
    for t in agw nats; do
        run "open-$t-$r" --target "$t" --pairs 16 --size 256 --rate "$rate" --seconds "$long"
    done
done

echo "== light load: open loop, 16 senders at 10 to 10,000 messages/s each, 256 B (x$reps, interleaved)"
for r in $(seq 1 "$reps"); do
    for rate in 10 100 1000 10000; do
        for t in agw nats nginx; do
            run "light-$rate-$t-$r" --target "$t" --pairs 16 --size 256 --rate "$rate" --seconds "$short"
        done
    done
done

echo "== ping-pong, one pair: the round trip (x$reps, interleaved)"
for r in $(seq 1 "$reps"); do
    for t in agw nats nginx; do
        run "rtt-$t-$r" --target "$t" --pattern ping-pong --pairs 1 --size 256 --seconds "$short"
    done
done

echo "== scenarios (x$reps, interleaved)"
for r in $(seq 1 "$reps"); do
    run "scenario-one-gateway-1k-$r" --scenario one-gateway --pairs 16 --size 1024 --seconds "$short"
    run "scenario-two-gateways-1k-$r" --scenario two-gateways --pairs 16 --size 1024 --seconds "$short"
done
run "scenario-same-shard" --scenario same-shard --shards 2 --pairs 16 --size 256 --seconds "$short"
run "scenario-cross-shard" --scenario cross-shard --shards 2 --pairs 16 --size 256 --seconds "$short"
run "scenario-chain" --scenario chain --pairs 16 --size 256 --seconds "$short"

echo "== the TLS agent leg beside plain TCP at equal offered load: 4 senders x 100,000/s, 1 KiB (x$reps, interleaved)"
# Open loop at one rate for both: closed loop, the one load CPU pays for the agents' own TLS
# and offers TLS far less load, and a relay that is not saturated spends less per message the
# more each wake-up finds, so a closed-loop ratio would mix the TLS leg's cost with the load's.
for r in $(seq 1 "$reps"); do
    run "agent-tls-1k-$r" --pairs 4 --rate 100000 --size 1024 --seconds "$short"
    run "agent-plain-1k-$r" --pairs 4 --rate 100000 --size 1024 --seconds "$short" --agent-plaintext
done

echo "== connections' memory: the daemon's resident memory per connection"
printf '[%3ds] %-40s ' "$(($(date +%s) - started))" "idle-10000"
"$load" --idle 10000 --json "$out/idle-10000.json" 2>"$out/idle-10000.log" | tail -1
printf '[%3ds] %-40s ' "$(($(date +%s) - started))" "idle-plain-10000"
"$load" --idle 10000 --agent-plaintext --json "$out/idle-plain-10000.json" 2>"$out/idle-plain-10000.log" | tail -1
printf '[%3ds] %-40s ' "$(($(date +%s) - started))" "partial-frame-5000"
(ulimit -n 20000; /usr/bin/python3 scripts/partial-frame-memory.py target/release/agw 5000 --json "$out/partial-frame-5000.json" 2>"$out/partial-frame-5000.log") | tail -1

echo "== report"
/usr/bin/python3 scripts/bench_report.py "$out" docs/benchmarks.md docs/bench
echo "done in $(($(date +%s) - started)) s: docs/benchmarks.md, docs/bench/*.svg"
