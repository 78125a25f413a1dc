#!/usr/bin/env python3
"""Turns the harness's JSON results (scripts/bench.sh) into the tables and plots of
docs/benchmarks.md: the part between <!-- harness:begin --> and <!-- harness:end --> is
rewritten; the SVG plots go to the plots directory.

Usage: bench_report.py RUNS_DIR BENCHMARKS_MD PLOTS_DIR
"""

import glob
import json
import os
import platform
import statistics
import sys
import time

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt  # noqa: E402

RELAYS = ["agw", "nats", "nginx"]
NAMES = {"agw": "agw (this project)", "nats": "nats-server", "nginx": "nginx stream proxy"}
COLOURS = {"agw": "#1f77b4", "nats": "#2ca02c", "nginx": "#7f7f7f"}


def load(runs):
    out = {}
    for path in glob.glob(os.path.join(runs, "*.json")):
        with open(path) as f:
            out[os.path.basename(path)[:-5]] = json.load(f)
    return out


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, unit=""):
    if v is None:
        return "-"
    if abs(v) >= 1e6:
        return f"{v / 1e6:.2f}M{unit}"
    if abs(v) >= 1e3:
        return f"{v / 1e3:.0f}k{unit}"
    return f"{v:.0f}{unit}"


def verdict(ok):
    return "**met**" if ok else "**not met**"


def machine(runs):
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open(os.path.join(runs, "commit")) as f:
            commit = f.read().strip()
    except OSError:
        commit = ""
    return (
        f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}, "
        f"commit {commit or '?'}, {time.strftime('%Y-%m-%d')}"
    )


def bars(plots, name, title, groups, values, ylabel):
    """A grouped bar chart, one bar per relay in each group, log scale; saved and listed."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    width = 0.27
    for i, t in enumerate(RELAYS):
        xs = [j + (i - 1) * width for j in range(len(groups))]
        ax.bar(xs, values[t], width, label=NAMES[t], color=COLOURS[t])
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups)
    ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(plots, name))
    plots_made.append((name, title))


def headline(r, lines, plots):
    rows = {}
    for t in RELAYS:
        runs = [v for k, v in r.items() if k.startswith(f"headline-{t}-")]
        if not runs:
            continue
        rows[t] = {
            "tput": med(x["delivered_per_second"] for x in runs),
            "per_cpu": med(x["delivered_per_relay_cpu_second"] for x in runs),
            "cpu": med(x["relay_cpu_seconds"] / x["seconds"] for x in runs),
            "runs": [x["delivered_per_second"] for x in runs],
            "runs_cpu": [x["delivered_per_relay_cpu_second"] for x in runs],
            "load": med(
                x["load_cpu_seconds"] / x["seconds"] if x.get("load_cpu_seconds") is not None else None
                for x in runs
            ),
            "bound": [x.get("bound", "?") for x in runs],
        }
    lines += [
        "### Relay throughput: stream, 16 pairs, 256 B payloads, one relay core",
        "",
        "| relay | messages/s (median) | relay CPU (s/s) | messages per relay CPU-second | load generator CPU (s/s) | limit (runs) | runs (messages/s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for t, v in rows.items():
        lines.append(
            f"| {NAMES[t]} | {fmt(v['tput'])} | {v['cpu']:.2f} | {fmt(v['per_cpu'])} | "
            + (f"{v['load']:.2f}" if v["load"] is not None else "-")
            + " | "
            + ", ".join(v["bound"])
            + " | "
            + ", ".join(fmt(x) for x in v["runs"])
            + " |"
        )
    lines.append("")
    lines.append(
        "The limit says which side was busier when one used at least 80% of its CPUs: where it is "
        "`load`, the load generator (one CPU on a 2-CPU machine) could not drive the relay "
        "harder, and the relay's messages/s is the load's figure, not the relay's; its "
        "messages per relay CPU-second still hold."
    )
    lines.append("")
    if "agw" in rows and "nats" in rows:
        ratio = rows["agw"]["per_cpu"] / rows["nats"]["per_cpu"]
        lines.append(
            f"- Against nats-server, per relay CPU-second: {ratio:.2f}x (target >= 1.5x): "
            f"{verdict(ratio >= 1.5)}. Absolute: {rows['agw']['tput'] / rows['nats']['tput']:.2f}x."
        )
    if "agw" in rows and "nginx" in rows:
        tput = rows["agw"]["tput"] / rows["nginx"]["tput"]
        cpu = rows["agw"]["per_cpu"] / rows["nginx"]["per_cpu"]
        lines.append(
            f"- Against nginx's stream proxy (L4, no parsing): {tput:.2f}x its messages/s "
            f"(target >= 0.8x: {verdict(tput >= 0.8)}), {cpu:.2f}x its messages per CPU-second "
            f"({verdict(cpu >= 0.8)} if the target is read per CPU-second)."
        )
    lines.append("")
    return rows


def open_loop(r, lines, plots):
    rows = {}
    for t in ["agw", "nats"]:
        runs = [v for k, v in r.items() if k.startswith(f"open-{t}-")]
        if runs:
            rows[t] = runs
    if not rows:
        return
    rate = next(iter(rows.values()))[0]["rate_per_sender"] * 16
    lines += [
        f"### Latency, open loop at {fmt(rate)} messages/s (50% of the gateway's maximum), 16 senders, 256 B",
        "",
        "One way, from each message's intended send time to its arrival (medians of the runs' percentiles, microseconds).",
        "",
        "| relay | delivered/s | p50 | p90 | p99 | p99.9 | max |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    keys = ["p50", "p90", "p99", "p999", "max"]
    meds = {}
    for t, runs in rows.items():
        meds[t] = {k: med(x["latency_us"][k] for x in runs) for k in keys}
        d = med(x["delivered_per_second"] for x in runs)
        lines.append(
            f"| {NAMES[t]} | {fmt(d)} | " + " | ".join(f"{meds[t][k]:.0f}" for k in keys) + " |"
        )
    lines.append("")
    if "agw" in meds and "nats" in meds:
        ok = meds["agw"]["p99"] <= meds["nats"]["p99"]
        lines.append(
            f"- p99 {meds['agw']['p99']:.0f} us against nats-server's {meds['nats']['p99']:.0f} us "
            f"at the same rate (target: at most nats-server's): {verdict(ok)}."
        )
        nats_max = med(v["delivered_per_second"] for k, v in r.items() if k.startswith("headline-nats-"))
        if nats_max and nats_max < rate:
            lines.append(
                f"- The rate is above nats-server's own closed-loop maximum ({fmt(nats_max)}/s): its "
                f"queues grow for the whole run, which is what its tail shows. The target fixes the "
                f"rate by the gateway's maximum, not the peer's."
            )
        lines.append("")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = ["p50", "p90", "p99", "p99.9", "max"]
    for t in meds:
        ax.plot(labels, [meds[t][k] for k in keys], marker="o", label=NAMES[t], color=COLOURS[t])
    ax.set_yscale("log")
    ax.set_ylabel("latency (us, log)")
    ax.set_title(f"Open loop at {fmt(rate)} msg/s, 256 B")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(plots, "open-loop-latency.svg"))
    plots_made.append(("open-loop-latency.svg", "Open-loop latency percentiles"))


def light_load(r, lines, plots):
    rates = [10, 100, 1000, 10000]
    cells = {}
    for rate in rates:
        for t in RELAYS:
            runs = [v for k, v in r.items() if k.startswith(f"light-{rate}-{t}-")]
            per = med(
                1e6 * x["relay_cpu_seconds"] / x["delivered"] if x["delivered"] else None for x in runs
            )
            if per is not None:
                cells[(rate, t)] = (per, med(x["delivered_per_second"] for x in runs), len(runs))
    if not cells:
        return
    lines += [
        "### Light load: relay CPU per message from 10 to 10,000 messages/s per sender",
        "",
        "Open loop, 16 senders each at the rate, 256 B, one relay core; microseconds of relay CPU "
        "per message delivered (medians of the runs; lower is better). Target (issue 20): at most "
        "nats-server's and at most 1.5x nginx's.",
        "",
        "| per sender (total) | " + " | ".join(NAMES[t] for t in RELAYS) + " | agw / nats-server | agw / nginx |",
        "| --- | " + " | ".join("---" for _ in RELAYS) + " | --- | --- |",
    ]
    for rate in rates:
        row = [f"{rate:,}/s ({16 * rate:,}/s)"]
        for t in RELAYS:
            c = cells.get((rate, t))
            row.append(f"{c[0]:.1f} us" if c else "-")
        agw, nats, nginx = (cells.get((rate, t)) for t in RELAYS)
        for other, limit in ((nats, 1.0), (nginx, 1.5)):
            if agw and other:
                ratio = agw[0] / other[0]
                row.append(f"{ratio:.2f}x ({'met' if ratio <= limit else 'not met'})")
            else:
                row.append("-")
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for t in RELAYS:
        xs = [16 * rate for rate in rates if (rate, t) in cells]
        ys = [cells[(rate, t)][0] for rate in rates if (rate, t) in cells]
        ax.plot(xs, ys, marker="o", label=NAMES[t], color=COLOURS[t])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("messages/s through the relay (16 senders, log)")
    ax.set_ylabel("relay CPU per message (us, log)")
    ax.set_title("CPU per message against load, 256 B")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(plots, "light-load-cpu.svg"))
    plots_made.append(("light-load-cpu.svg", "Relay CPU per message against load"))


def round_trip(r, lines):
    rows = {}
    for t in RELAYS:
        runs = [v for k, v in r.items() if k.startswith(f"rtt-{t}-")]
        if runs:
            rows[t] = {k: med(x["latency_us"][k] for x in runs) for k in ("p50", "p99")}
            rows[t]["per_cpu"] = med(x["delivered_per_relay_cpu_second"] for x in runs)
    if not rows:
        return
    lines += [
        "### Ping-pong, one pair: the round trip",
        "",
        "One message in flight, sent back by the receiver; 256 B; medians of the runs' "
        "percentiles, microseconds. Target (issue 20): p50 and p99 within 1.1x nginx's.",
        "",
        "| relay | p50 | p99 | messages per relay CPU-second |",
        "| --- | --- | --- | --- |",
    ]
    for t, v in rows.items():
        lines.append(f"| {NAMES[t]} | {v['p50']:.0f} | {v['p99']:.0f} | {fmt(v['per_cpu'])} |")
    lines.append("")
    if "agw" in rows and "nginx" in rows:
        p50 = rows["agw"]["p50"] / rows["nginx"]["p50"]
        p99 = rows["agw"]["p99"] / rows["nginx"]["p99"]
        lines.append(
            f"- Against nginx: p50 {p50:.2f}x ({verdict(p50 <= 1.1)}), p99 {p99:.2f}x ({verdict(p99 <= 1.1)})."
        )
        lines.append("")


def sizes(r, head, lines, plots):
    sizes = [64, 256, 1024, 16384, 65536]
    table = {}
    for s in sizes:
        for t in RELAYS:
            if s == 256 and t in head:
                table[(s, t)] = (head[t]["tput"], head[t]["per_cpu"])
            elif f"size-{s}-{t}" in r:
                x = r[f"size-{s}-{t}"]
                table[(s, t)] = (x["delivered_per_second"], x["delivered_per_relay_cpu_second"])
    if not table:
        return
    lines += [
        "### Message sizes: stream, 16 pairs, one relay core",
        "",
        "messages/s and messages per relay CPU-second (256 B: the medians above; others one run each).",
        "",
        "| payload | " + " | ".join(NAMES[t] for t in RELAYS) + " |",
        "| --- | " + " | ".join("---" for _ in RELAYS) + " |",
    ]
    for s in sizes:
        cells = []
        for t in RELAYS:
            v = table.get((s, t))
            cells.append(f"{fmt(v[0])} ({fmt(v[1])}/CPU-s)" if v else "-")
        lines.append(f"| {s} B | " + " | ".join(cells) + " |")
    lines.append("")
    bars(
        plots,
        "throughput-per-cpu.svg",
        "Throughput per CPU-second by payload size",
        [f"{s} B" for s in sizes],
        {t: [table.get((s, t), (0, 0))[1] or 0 for s in sizes] for t in RELAYS},
        "messages per relay CPU-second (log)",
    )


def patterns(r, lines, plots):
    pats = ["ping-pong", "fan-in", "fan-out"]
    if not any(k.startswith("pattern-") for k in r):
        return
    lines += [
        "### Patterns: 16 pairs, senders or receivers, 256 B, closed loop",
        "",
        "messages/s (messages per relay CPU-second); ping-pong has one message in flight per pair, its latency the round trip (p50 / p99, us).",
        "",
        "| pattern | " + " | ".join(NAMES[t] for t in RELAYS) + " |",
        "| --- | " + " | ".join("---" for _ in RELAYS) + " |",
    ]
    for p in pats:
        cells = []
        for t in RELAYS:
            x = r.get(f"pattern-{p}-{t}")
            if not x:
                cells.append("n/a (an L4 proxy cannot fan out)" if (t, p) == ("nginx", "fan-out") else "-")
                continue
            cell = f"{fmt(x['delivered_per_second'])} ({fmt(x['delivered_per_relay_cpu_second'])})"
            if p == "ping-pong":
                cell += f", RTT {x['latency_us']['p50']:.0f} / {x['latency_us']['p99']:.0f} us"
            cells.append(cell)
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    lines.append("")
    bars(
        plots,
        "patterns.svg",
        "Throughput by pattern, 256 B",
        pats,
        {t: [(r.get(f"pattern-{p}-{t}") or {}).get("delivered_per_second", 0) for p in pats] for t in RELAYS},
        "messages/s (log)",
    )


def scenarios(r, lines):
    one = [v for k, v in r.items() if k.startswith("scenario-one-gateway-1k-")]
    two = [v for k, v in r.items() if k.startswith("scenario-two-gateways-1k-")]
    if not one and not two:
        return
    lines += [
        "### Scenarios: the gateway within one shard, across shards, across gateways",
        "",
        "| scenario | payload | messages/s | messages per relay CPU-second (all gateways' shards) |",
        "| --- | --- | --- | --- |",
    ]

    def row(name, payload, runs):
        if runs:
            lines.append(
                f"| {name} | {payload} | {fmt(med(x['delivered_per_second'] for x in runs))} | "
                f"{fmt(med(x['delivered_per_relay_cpu_second'] for x in runs))} |"
            )

    row("one gateway (plaintext agent connections)", "1 KiB", one)
    row("two gateways, mutual-TLS peer link", "1 KiB", two)
    for k, name in [
        ("scenario-same-shard", "one gateway, 2 shards, same shard"),
        ("scenario-cross-shard", "one gateway, 2 shards, across shards"),
        ("scenario-chain", "three gateways in a chain"),
    ]:
        if k in r:
            row(name, "256 B", [r[k]])
    lines.append("")
    if one and two:
        ratio = med(x["delivered_per_second"] for x in two) / med(x["delivered_per_second"] for x in one)
        per_hop = 2 * med(x["delivered_per_relay_cpu_second"] for x in two) / med(
            x["delivered_per_relay_cpu_second"] for x in one
        )
        lines.append(
            f"- The mutual-TLS hop (target: >= 0.7x the plaintext hop, 1 KiB frames). Peer links exist "
            f"only over TLS, so the plaintext baseline is one gateway relaying between plaintext agent "
            f"connections. Per relay CPU-second and per gateway crossed (two gateways relay each "
            f"message once each): {per_hop:.2f}x, {verdict(per_hop >= 0.7)}. In messages/s: {ratio:.2f}x, "
            f"but here both gateways' shards share the one relay core, so that ratio also halves for "
            f"want of a core, not for TLS."
        )
        lines.append("")


def tls_leg(r, lines):
    tls = [v for k, v in r.items() if k.startswith("agent-tls-1k-")]
    plain = [v for k, v in r.items() if k.startswith("agent-plain-1k-")]
    if not tls or not plain:
        return
    per = lambda runs: [x["delivered_per_relay_cpu_second"] for x in runs]
    t, p = med(per(tls)), med(per(plain))
    offered = tls[0]["pairs"] * tls[0]["rate_per_sender"]
    delivered = lambda runs: fmt(med([x["delivered_per_second"] for x in runs]))
    lines += [
        f"### The TLS agent leg at equal offered load: {fmt(offered)} messages/s, 1 KiB",
        "",
        "Agents over mutual TLS beside the same agents over plain TCP (the shard decrypts every "
        f"message in and encrypts it out), open loop, {tls[0]['pairs']} senders each at "
        f"{tls[0]['rate_per_sender']:,} messages/s: the same load for both, so the ratio is the "
        "TLS leg's cost (closed loop, the one load CPU also pays for the agents' TLS and offers "
        "TLS less). Messages per relay CPU-second, runs interleaved. Target (issue 15): at "
        "least 0.7x plain.",
        "",
        "| agents | delivered/s (median) | per relay CPU-second (median) | runs |",
        "| --- | --- | --- | --- |",
        f"| mutual TLS | {delivered(tls)} | {fmt(t)} | " + ", ".join(fmt(x) for x in per(tls)) + " |",
        f"| plain TCP | {delivered(plain)} | {fmt(p)} | " + ", ".join(fmt(x) for x in per(plain)) + " |",
        "",
        f"- TLS / plain: {t / p:.2f}x ({verdict(t / p >= 0.7)}).",
        "",
    ]


def memory(r, lines):
    states = [
        ("idle-10000", "accessed and idle, mutual TLS"),
        ("idle-plain-10000", "accessed and idle, plain TCP"),
        ("partial-frame-5000", "one byte of a frame sent, never finished (plain TCP)"),
    ]
    found = [(r[k], name) for k, name in states if k in r]
    if not found:
        return
    lines += [
        "### Memory per connection",
        "",
        "An `agw` daemon (one shard) holding the connections; its resident memory before and "
        "after, divided by their number. User-space memory only: the kernel's socket buffers "
        "are not in the process's RSS. Target (issue 20): at most 16 KiB in every state.",
        "",
        "| state | connections | per connection | target |",
        "| --- | --- | --- | --- |",
    ]
    for x, name in found:
        per = x["bytes_per_connection"]
        lines.append(
            f"| {name} | {x['connections']:,} | {per / 1024:.1f} KiB | {verdict(per <= 16 * 1024)} |"
        )
    lines.append("")


plots_made = []


def main():
    runs, md, plots = sys.argv[1:4]
    os.makedirs(plots, exist_ok=True)
    r = load(runs)
    lines = [
        "<!-- harness:begin (written by scripts/bench.sh; edit the script, not this part) -->",
        "",
        f"Machine: {machine(runs)}. Every relay pinned to CPU 0 (the gateway's shard, nats-server and "
        "nginx under `taskset -c 0`, nginx with one worker), the load generator's threads on the "
        "other CPU(s); runs of different relays interleaved; medians where runs repeat. Regenerate "
        "with `scripts/bench.sh` (raw JSON in `target/bench/runs/`).",
        "",
    ]
    head = headline(r, lines, plots)
    open_loop(r, lines, plots)
    light_load(r, lines, plots)
    round_trip(r, lines)
    sizes(r, head, lines, plots)
    patterns(r, lines, plots)
    scenarios(r, lines)
    tls_leg(r, lines)
    memory(r, lines)
    for name, title in plots_made:
        lines.append(f"![{title}](bench/{name})")
        lines.append("")
    lines.append("<!-- harness:end -->")
    text = open(md).read()
    begin, end = text.find("<!-- harness:begin"), text.find("<!-- harness:end -->")
    if begin < 0 or end < 0:
        sys.exit(f"{md}: no <!-- harness:begin --> ... <!-- harness:end --> section")
    end += len("<!-- harness:end -->")
    with open(md, "w") as f:
        f.write(text[:begin] + "\n".join(lines) + text[end:])


if __name__ == "__main__":
    main()
