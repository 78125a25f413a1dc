#!/usr/bin/env bash
# The gateway's CPU use at rest: `scripts/idle-cpu.sh [BINARY] [SECONDS]` starts BINARY
# (default target/release/agw) on loopback with one shard and four configured peers that never
# dial in, waits 3 s, then reads the process's CPU time (/proc) over SECONDS (default 10) and
# prints CPU milliseconds per second and wake-ups (context switches) per second. What a
# gateway costs a host when nothing happens: timers should be deadlines, not polls.
set -euo pipefail
binary=${1:-target/release/agw}
seconds=${2:-10}
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
cat >"$dir/agw.toml" <<TOML
[[peer]]
gateway = "spiffe://b.example/agw/b1"
[[peer]]
gateway = "spiffe://c.example/agw/c1"
[[peer]]
gateway = "spiffe://d.example/agw/d1"
[[peer]]
gateway = "spiffe://e.example/agw/e1"
TOML
any=127.0.0.1:0
"$binary" --config "$dir/agw.toml" --data-dir "$dir/data" --shards 1 --listen $any \
  --aca-listen $any --crl-listen $any --registry-listen $any --peering-listen $any \
  --relay-links-listen $any --metrics-listen $any >"$dir/out" 2>&1 &
pid=$!
sleep 3
# The daemon re-executes itself once (huge pages): measure the process that runs now.
ticks() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
switches() {
  awk '/ctxt_switches/ { n += $2 } END { print n }' /proc/"$pid"/task/*/status
}
t0=$(ticks); s0=$(switches)
sleep "$seconds"
t1=$(ticks); s1=$(switches)
hz=$(getconf CLK_TCK)
awk -v t="$((t1 - t0))" -v s="$((s1 - s0))" -v hz="$hz" -v secs="$seconds" -v b="$binary" \
  'BEGIN { printf "%s: %.1f CPU ms/s, %.0f context switches/s at rest\n", b, t * 1000 / hz / secs, s / secs }'
