#!/usr/bin/env python3
"""Plots the federation simulation's results (docs/scale.md) as an SVG with no dependency:
updates until convergence against the number of gateways, log-log, one line per topology,
phase and advertisement interval, from the JSON lines `scripts/simulate.sh` writes.

    python3 scripts/scale_plot.py target/simulate.jsonl docs/bench/scale-updates.svg
"""

import json
import math
import sys

W, H, LEFT, RIGHT, TOP, BOTTOM = 840, 440, 70, 290, 30, 50
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
           "#7f7f7f", "#17becf", "#bcbd22"]


def series(path):
    lines = {}
    with open(path) as f:
        for raw in f:
            raw = raw.strip()
            if not raw:
                continue
            r = json.loads(raw)
            if r.get("converged_ms") is None:
                continue
            # Absent: the default interval, 100 ms.
            interval = r.get("advertisement_interval_ms")
            interval = 100 if interval is None else interval
            label = "{} {}, {}".format(
                r["topology"], r["phase"],
                "at once" if interval == 0 else "interval {} ms".format(interval))
            lines.setdefault(label, []).append((r["gateways"], r["updates"]))
    return {k: sorted(v) for k, v in sorted(lines.items()) if v}


def log_axis(values):
    lo = 10 ** math.floor(math.log10(min(values)))
    hi = 10 ** math.ceil(math.log10(max(values)))
    return lo, hi


def main():
    source, target = sys.argv[1], sys.argv[2]
    data = series(source)
    if not data:
        sys.exit("no converged phase in " + source)
    xs = [x for pts in data.values() for x, _ in pts]
    ys = [max(y, 1) for pts in data.values() for _, y in pts]
    (x0, x1), (y0, y1) = log_axis(xs), log_axis(ys)

    def px(x):
        return LEFT + (math.log10(x) - math.log10(x0)) / (math.log10(x1) - math.log10(x0)) * (
            W - LEFT - RIGHT)

    def py(y):
        return H - BOTTOM - (math.log10(max(y, 1)) - math.log10(y0)) / (
            math.log10(y1) - math.log10(y0)) * (H - TOP - BOTTOM)

    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" '
           'font-family="sans-serif" font-size="11">'.format(W, H),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="{}" y="18" font-size="13">Updates until convergence (agw-simulate)</text>'
           .format(LEFT)]
    decade = x0
    while decade <= x1:
        out.append('<line x1="{0:.1f}" y1="{1}" x2="{0:.1f}" y2="{2}" stroke="#ddd"/>'
                   '<text x="{0:.1f}" y="{3}" text-anchor="middle">{4:,}</text>'
                   .format(px(decade), TOP, H - BOTTOM, H - BOTTOM + 15, int(decade)))
        decade *= 10
    decade = y0
    while decade <= y1:
        out.append('<line x1="{0}" y1="{1:.1f}" x2="{2}" y2="{1:.1f}" stroke="#ddd"/>'
                   '<text x="{3}" y="{4:.1f}" text-anchor="end">{5:,}</text>'
                   .format(LEFT, py(decade), W - RIGHT, LEFT - 5, py(decade) + 4, int(decade)))
        decade *= 10
    out.append('<text x="{}" y="{}" text-anchor="middle">gateways</text>'
               .format((LEFT + W - RIGHT) / 2, H - 12))
    out.append('<text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">'
               'updates (log)</text>'.format((TOP + H - BOTTOM) / 2, (TOP + H - BOTTOM) / 2))
    for i, (label, pts) in enumerate(data.items()):
        colour = COLOURS[i % len(COLOURS)]
        dash = ' stroke-dasharray="5,3"' if "at once" in label else ""
        path = " ".join("{:.1f},{:.1f}".format(px(x), py(y)) for x, y in pts)
        out.append('<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{}/>'
                   .format(path, colour, dash))
        for x, y in pts:
            out.append('<circle cx="{:.1f}" cy="{:.1f}" r="3" fill="{}"/>'
                       .format(px(x), py(y), colour))
        ly = TOP + 10 + i * 16
        out.append('<line x1="{0}" y1="{1}" x2="{2}" y2="{1}" stroke="{3}" stroke-width="2"{4}/>'
                   '<text x="{5}" y="{6}">{7}</text>'
                   .format(W - RIGHT + 10, ly, W - RIGHT + 30, colour, dash, W - RIGHT + 35,
                           ly + 4, label))
    out.append("</svg>")
    with open(target, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
