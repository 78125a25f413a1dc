#!/usr/bin/env python3
# usage: scripts/partial-frame-memory.py target/release/agw 5000 [--json OUT]   (ulimit -n above N first)
# Opens N plain connections to an agw daemon's agent port, each sending one byte (a frame
# begun, never finished), and reports the daemon's RSS growth per connection.
import json, os, socket, subprocess, sys, tempfile, time
binary, n = sys.argv[1], int(sys.argv[2])
d = tempfile.mkdtemp()
p = subprocess.Popen([binary, "--data-dir", d, "--agent-plaintext", "--shards", "1",
    "--listen", "127.0.0.1:0", "--aca-listen", "127.0.0.1:0", "--crl-listen", "127.0.0.1:0",
    "--registry-listen", "127.0.0.1:0", "--peering-listen", "127.0.0.1:0",
    "--relay-links-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
    "--est-listen", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True, env=dict(os.environ, AGW_HUGEPAGES="0"))
addr = None
for line in p.stdout:
    if line.startswith("agw: agents connect to "):
        h, port = line.split()[4].rsplit(":", 1); addr = (h, int(port))
    if line.startswith("agw: Ctrl-C"): break
def rss():
    for l in open(f"/proc/{p.pid}/status"):
        if l.startswith("VmRSS:"): return int(l.split()[1]) * 1024
time.sleep(0.5); before = rss()
socks = []
for i in range(n):
    s = socket.create_connection(addr); s.send(b"\x01"); socks.append(s)
time.sleep(2); after = rss()
print(f"{os.path.basename(binary)}: {n} connections that sent one byte: +{(after-before)/2**20:.1f} MiB, {(after-before)/n/1024:.1f} KiB each")
if sys.argv[3:4] == ["--json"]:
    json.dump({"connections": n, "rss_before": before, "rss_after": after,
               "bytes_per_connection": (after - before) / n}, open(sys.argv[4], "w"))
for s in socks: s.close()
p.terminate(); p.wait()
