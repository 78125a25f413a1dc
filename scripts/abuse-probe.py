#!/usr/bin/env python3
"""Abuse figures for a control-plane server: how long a legitimate client waits while
attackers drip bytes, and how much memory the server holds while attackers send large bodies.

    scripts/abuse-probe.py target/release/agw-aca [--drips 300] [--floods 100]

Starts the given agw-aca on loopback (its own data directory, removed after), then:
1. opens --floods connections from 127.0.0.3-127.0.0.6 that each announce a 4 MiB
   body (of a kind the protocol allows that large) and send 3 MiB of it, and reads the server's resident memory;
2. opens --drips connections from 127.0.0.2 that each send one byte of a request and then one
   byte a second, and times a legitimate status query from 127.0.0.1 five times (5 s limit).
Bounded in count and time; loopback only. Prints one line per figure."""

import argparse
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time

STATUS_QUERY = 0x45
CRL_REPLY = 0x48  # a 4 MiB kind: what an authority never takes


def frame(kind, body):
    return bytes([1, kind, 0, 0]) + struct.pack(">I", len(body)) + body


def connect(addr, source):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.settimeout(5)
    s.connect(addr)
    return s


def legit(addr):
    """Seconds until a status query is answered, or None when refused or not answered in 5 s."""
    start = time.monotonic()
    try:
        s = connect(addr, "127.0.0.1")
        s.sendall(frame(STATUS_QUERY, b"\x08\x01"))
        head = s.recv(8)
        s.close()
    except OSError:
        return None
    if len(head) < 2 or head[1] != 0x46:  # StatusReply
        return None
    return time.monotonic() - start


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("binary")
    ap.add_argument("--drips", type=int, default=300)
    ap.add_argument("--floods", type=int, default=100)
    args = ap.parse_args()
    data = tempfile.mkdtemp(prefix="abuse-probe-")
    server = subprocess.Popen(
        [args.binary, "--domain", "probe.example", "--listen", "127.0.0.1:0",
         "--crl-listen", "127.0.0.1:0", "--allow", "Acme", "--data-dir", data],
        stdout=subprocess.PIPE, text=True)
    try:
        first = server.stdout.readline()
        host, port = first.rsplit(" ", 1)[1].strip().rsplit(":", 1)
        addr = (host, int(port))
        print(f"idle: legitimate query answered in {legit(addr):.4f} s; "
              f"server RSS {rss_mib(server.pid):.1f} MiB")

        floods = []
        chunk = b"\x00" * 65536
        for i in range(args.floods):
            try:
                s = connect(addr, f"127.0.0.{3 + i % 4}")
                s.sendall(struct.pack(">BBBBI", 1, CRL_REPLY, 0, 0, 4 << 20))
                floods.append(s)
            except OSError:
                pass
        sent = 0
        deadline = time.monotonic() + 20
        for _ in range(48):  # 3 MiB each
            for s in floods:
                try:
                    s.settimeout(0.05)
                    s.send(chunk)
                    sent += len(chunk)
                except OSError:
                    pass
            if time.monotonic() > deadline:
                break
        time.sleep(0.5)
        print(f"{args.floods} connections announcing 4 MiB bodies ({sent >> 20} MiB accepted by "
              f"the kernel): server RSS {rss_mib(server.pid):.1f} MiB; legitimate query "
              f"{'answered' if legit(addr) is not None else 'NOT answered'}")
        for s in floods:
            s.close()
        time.sleep(2)  # the server sees them go
        drips = []
        for _ in range(args.drips):
            try:
                s = connect(addr, "127.0.0.2")
                s.sendall(b"\x01")
                drips.append(s)
            except OSError:
                pass
        waits = []
        for _ in range(5):
            for s in drips:
                try:
                    s.send(b"\x45")
                except OSError:
                    pass
            waits.append(legit(addr))
            time.sleep(1)
        served = [w for w in waits if w is not None]
        worst = f"{max(served):.4f} s" if served else "-"
        print(f"{args.drips} dripping connections: {len(served)}/5 legitimate queries answered "
              f"(slowest {worst})")
        for s in drips:
            s.close()

    finally:
        server.terminate()
        server.wait()
        subprocess.run(["rm", "-rf", data])
    return 0


if __name__ == "__main__":
    sys.exit(main())
