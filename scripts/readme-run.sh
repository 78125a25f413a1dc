#!/usr/bin/env bash
# Runs the README's run command exactly as a new user types it, in the repository root, and
# waits for the gateway to listen: it must answer /health and take a certificate request's
# connection. Then stops it with SIGTERM, starts it again on the same ./agw-data (a restart
# must work too), and stops it again. CI runs this on a fresh clone.
set -euo pipefail
cd "$(dirname "$0")/.."

command='cargo run --release'
grep -qxF "$command" README.md || {
  echo "readme-run: the README no longer shows \`$command\`; update this script with it" >&2
  exit 1
}
if [ -e agw-data ]; then
  echo "readme-run: ./agw-data exists; this check starts from none (move it away)" >&2
  exit 1
fi
log=$(mktemp)
pgid=
cleanup() {
  if [ -n "$pgid" ]; then kill -TERM -- "-$pgid" 2>/dev/null || true; fi
  rm -rf agw-data "$log"
}
trap cleanup EXIT

for round in first restart; do
  : >"$log"
  # Its own process group, so SIGTERM reaches the gateway and not only cargo.
  setsid bash -c "exec $command" >"$log" 2>&1 &
  pgid=$!
  # The first round builds the release binary: allow it 20 minutes.
  deadline=$((SECONDS + 1200))
  until grep -q '^agw: Ctrl-C' "$log"; do
    if ! kill -0 "$pgid" 2>/dev/null; then
      echo "readme-run: \`$command\` exited ($round):" >&2
      tail -20 "$log" >&2
      exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "readme-run: no gateway after 20 minutes ($round)" >&2
      tail -20 "$log" >&2
      exit 1
    fi
    sleep 1
  done
  health=$(curl -sf http://127.0.0.1:7406/health)
  [ "$health" = ok ] || { echo "readme-run: /health said: $health" >&2; exit 1; }
  # The agents' and the authority's ports take connections.
  for port in 7400 7401 7403; do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") || { echo "readme-run: nothing on $port" >&2; exit 1; }
  done
  kill -TERM -- "-$pgid"
  for _ in $(seq 1 60); do kill -0 "$pgid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pgid" 2>/dev/null; then
    echo "readme-run: the gateway did not stop on SIGTERM ($round)" >&2
    exit 1
  fi
  grep -q '^agw: stopped after' "$log" || { echo "readme-run: no clean stop ($round)" >&2; tail -5 "$log" >&2; exit 1; }
  pgid=
  echo "readme-run: \`$command\` listened and stopped cleanly ($round)"
done
