#!/usr/bin/env python3
"""Turns the full benchmark sweep's JSON into an SVG figure and a Markdown summary.

    build-bench/bench/diffattn_bench_attention --full --benchmark_repetitions=3 \\
        --benchmark_report_aggregates_only=true \\
        --benchmark_out=results.json --benchmark_out_format=json
    python3 scripts/plot_bench.py results.json docs/bench.svg --medians docs/bench.json > docs/bench.md

Several JSON files (runs of the same sweep) may be given before the SVG's path: rates
are then medians across the runs, and ratios are taken within each run, then their median.

Standard library only (no matplotlib), so it runs wherever the benchmark does. With
repetitions the median of each benchmark is used, otherwise its single run. The figure
draws every rate against the machine limits the benchmark binary measured (FMA peak per
core times threads at start-up; read bandwidth at start-up or, when larger, the median of
its ReadBandwidth benchmarks run among the others), so the reference lines come from the
same run as the points.
"""

import json
import math
import sys
from xml.sax.saxutils import escape

# ---- reading ------------------------------------------------------------------------


def median_runs(data):
    """{name: entry}: the median (or the single run) of each benchmark in one run."""
    runs = {}
    for entry in data["benchmarks"]:
        if entry.get("error_occurred"):
            continue
        name = entry["run_name"]
        if name.endswith("/real_time"):
            name = name[: -len("/real_time")]
        if entry.get("run_type") == "aggregate":
            if entry.get("aggregate_name") != "median":
                continue
            runs[name] = entry
        elif name not in runs and entry.get("repetitions", 1) <= 1:
            runs[name] = entry
    return runs


def load(paths):
    """[(context, {name: entry})], one per run of the sweep: Google Benchmark's JSON
    files, or this script's --medians file (which holds several runs)."""
    sets = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        for run in data.get("runs", [data]):
            sets.append((run["context"], median_runs(run)))
    return sets


def to_ms(entry):
    scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[entry.get("time_unit", "ns")]
    return entry["real_time"] * scale


def benchmark_name(parts):
    """("Standard", 2048, 64, 0, 1) -> "Standard/2048/64/0/1"."""
    return "/".join(str(p) for p in parts)


def middle_entry(entries):
    entries = sorted(entries, key=to_ms)
    return entries[len(entries) // 2]


def middle(values):
    """The median, or the larger middle value for an even count (the conservative side
    for times)."""
    values = sorted(values)
    return values[len(values) // 2] if values else None


def run_bandwidth(context, runs):
    """A run's read bandwidth: the larger of the start-up measurement and the best median
    of its ReadBandwidth benchmarks (sampled among the decoding runs; older sweeps have
    none), as the benchmark binary's own table takes it."""
    values = [entry["GB/s"] for name, entry in runs.items()
              if name.startswith("ReadBandwidth/") and "GB/s" in entry]
    values.append(float(context.get("read_bandwidth_gbs", "nan")))
    values = [v for v in values if not math.isnan(v)]
    return max(values) if values else float("nan")


class Sweep:
    """One or several runs of the sweep. Rates are each benchmark's median-time entry
    across the runs; ratios are taken within each run and then their median, so every
    ratio still compares numbers measured in one run, and one disturbed run on a shared
    machine moves no number."""

    def __init__(self, sets):
        self.sets = sets
        self.context = dict(sets[0][0])
        self.peak = middle([float(c.get("fma_peak_gflops_per_core", "nan")) for c, _ in sets])
        self.bandwidth = middle([run_bandwidth(c, r) for c, r in sets])
        names = {name for _, runs in sets for name in runs}
        self.runs = {name: middle_entry([r[name] for _, r in sets if name in r]) for name in names}

    def bandwidth_fraction(self, name):
        """Median over the runs of GB/s over that run's measured read bandwidth."""
        key = benchmark_name(name)
        return middle([r[key]["GB/s"] / run_bandwidth(c, r) for c, r in self.sets
                       if key in r and "GB/s" in r[key] and "read_bandwidth_gbs" in c])

    def ratio(self, numerator, denominator):
        """Median over the runs of time(numerator) / time(denominator); names as tuples."""
        top, bottom = benchmark_name(numerator), benchmark_name(denominator)
        values = sorted(to_ms(r[top]) / to_ms(r[bottom]) for _, r in self.sets if top in r and bottom in r)
        if not values:
            return None
        mid = len(values) // 2
        return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])

    def get(self, kernel, *args):
        return self.runs.get(benchmark_name((kernel,) + args))

    def value(self, kernel, args, key):
        entry = self.get(kernel, *args)
        if entry is None:
            return None
        return to_ms(entry) if key == "ms" else entry.get(key)

    def sizes(self, kernel="Standard"):
        found = set()
        for name in self.runs:
            parts = name.split("/")
            if parts[0] == kernel and len(parts) == 5:
                found.add(int(parts[1]))
        return sorted(found)

    def decode_lengths(self):
        return sorted({int(n.split("/")[1]) for n in self.runs if n.startswith("Decode/")})

    def threads(self):
        """The thread count of the 'all threads' runs (argument 0)."""
        for name, entry in self.runs.items():
            if name.startswith("Standard/") and name.endswith("/0"):
                return int(entry.get("threads", 0))
        return 0


# ---- drawing ------------------------------------------------------------------------

COLORS = {
    "Standard": "#1f77b4",
    "Differential": "#d62728",
    "DifferentialComposed": "#ff7f0e",
    "NaiveMaterialized": "#7f7f7f",
    "Hkv=8": "#2ca02c",
    "Hkv=2": "#9467bd",
}


def nice_ceiling(value):
    if value <= 0:
        return 1.0
    exponent = math.floor(math.log10(value))
    for step in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if step * 10**exponent >= value:
            return step * 10**exponent
    return 10 ** (exponent + 1)


class Panel:
    """One chart: log2 x axis, linear y axis from 0 up to the data, the reference lines
    and room for the legend above them."""

    def __init__(self, x, y, width, height, title, xlabel, ylabel, xs):
        self.x, self.y, self.w, self.h = x, y, width, height
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel
        self.xs = xs
        self.lines = []  # (label, points, color, dashed)
        self.refs = []  # (label, y, color)

    def line(self, label, points, color, dashed=False):
        points = [(xv, yv) for xv, yv in points if yv is not None]
        if points:
            self.lines.append((label, points, color, dashed))

    def reference(self, label, yv, color="#444"):
        if yv is not None and not math.isnan(yv):
            self.refs.append((label, yv, color))

    def px(self, xv):
        lo, hi = math.log2(self.xs[0]), math.log2(self.xs[-1])
        span = hi - lo if hi > lo else 1.0
        return self.x + 50 + (math.log2(xv) - lo) / span * (self.w - 70)

    def py(self, yv):
        return self.y + self.h - 40 - yv / self.ymax * (self.h - 70)

    def svg(self, index):
        values = [yv for _, points, _, _ in self.lines for _, yv in points] + [yv for _, yv, _ in self.refs]
        self.ymax = nice_ceiling(max(values + [1e-9]) * (1.08 + 0.075 * len(self.lines)))
        left, right = self.x + 50, self.x + self.w - 20
        top, bottom = self.y + 30, self.y + self.h - 40
        out = ['<g font-family="sans-serif" font-size="11">',
               f'<clipPath id="plot{index}"><rect x="{left}" y="{top}" width="{right - left}" '
               f'height="{bottom - top}"/></clipPath>',
               f'<text x="{self.x + self.w / 2:.1f}" y="{self.y + 14}" text-anchor="middle" '
               f'font-size="13" font-weight="bold">{escape(self.title)}</text>',
               f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="none" stroke="#bbb"/>']
        for i in range(6):
            yv = self.ymax * i / 5
            yp = self.py(yv)
            out.append(f'<line x1="{left}" y1="{yp:.1f}" x2="{right}" y2="{yp:.1f}" stroke="#eee"/>')
            label = f"{yv:.0f}" if self.ymax >= 10 else f"{yv:.2f}"
            out.append(f'<text x="{left - 4}" y="{yp + 4:.1f}" text-anchor="end">{label}</text>')
        for xv in self.xs:
            xp = self.px(xv)
            out.append(f'<line x1="{xp:.1f}" y1="{bottom}" x2="{xp:.1f}" y2="{bottom + 4}" stroke="#888"/>')
            text = f"{xv // 1024}k" if xv >= 1024 else str(xv)
            out.append(f'<text x="{xp:.1f}" y="{bottom + 16}" text-anchor="middle">{text}</text>')
        out.append(f'<text x="{(left + right) / 2:.1f}" y="{bottom + 32}" text-anchor="middle">'
                   f'{escape(self.xlabel)}</text>')
        out.append(f'<text x="{self.x + 12}" y="{(top + bottom) / 2:.1f}" text-anchor="middle" '
                   f'transform="rotate(-90 {self.x + 12} {(top + bottom) / 2:.1f})">{escape(self.ylabel)}</text>')
        for i, (label, yv, color) in enumerate(self.refs):
            yp = self.py(yv)
            out.append(f'<line x1="{left}" y1="{yp:.1f}" x2="{right}" y2="{yp:.1f}" stroke="{color}" '
                       f'stroke-dasharray="2,3"/>')
            # Alternate sides so that close reference lines keep readable labels.
            anchor, xt = ("end", right - 4) if i % 2 == 0 else ("start", left + 4)
            out.append(f'<text x="{xt}" y="{yp - 4:.1f}" text-anchor="{anchor}" fill="{color}">{escape(label)}</text>')
        out.append(f'<g clip-path="url(#plot{index})">')
        for label, points, color, dashed in self.lines:
            path = " ".join(f"{self.px(xv):.1f},{self.py(yv):.1f}" for xv, yv in points)
            dash = ' stroke-dasharray="5,3"' if dashed else ""
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
            for xv, yv in points:
                out.append(f'<circle cx="{self.px(xv):.1f}" cy="{self.py(yv):.1f}" r="3" fill="{color}"/>')
        out.append("</g>")
        for i, (label, _, color, dashed) in enumerate(self.lines):
            ly = top + 14 + 13 * i
            dash = ' stroke-dasharray="5,3"' if dashed else ""
            out.append(f'<line x1="{left + 8}" y1="{ly - 4}" x2="{left + 28}" y2="{ly - 4}" stroke="{color}" '
                       f'stroke-width="2"{dash}/>')
            out.append(f'<text x="{left + 32}" y="{ly}">{escape(label)}</text>')
        out.append("</g>")
        return "\n".join(out)


def figure(sweep):
    sizes = sweep.sizes()
    threads = sweep.threads()
    width, height, top = 440, 340, 50
    panels = []

    def rate_panel(col, row, d, causal, title):
        panel = Panel(col * width, top + row * height, width, height, title, "sequence length N",
                      "GFLOP/s (useful work)", sizes)
        for kernel, label in (("Standard", "standard, 1 thread"), ("Differential", "differential, 1 thread"),
                              ("DifferentialComposed", "composed diff, 1 thread"),
                              ("NaiveMaterialized", "naive materialized (Eigen)")):
            panel.line(label, [(n, sweep.value(kernel, (n, d, causal, 1), "GFLOP/s")) for n in sizes], COLORS[kernel])
        for kernel, label in (("Standard", f"standard, {threads} threads"),
                              ("Differential", f"differential, {threads} threads")):
            panel.line(label, [(n, sweep.value(kernel, (n, d, causal, 0), "GFLOP/s")) for n in sizes],
                       COLORS[kernel], dashed=True)
        panel.reference("FMA peak, 1 core", sweep.peak)
        panel.reference(f"FMA peak, {threads} cores", sweep.peak * threads)
        return panel

    panels.append(rate_panel(0, 0, 64, 0, "d = 64, non-causal"))
    panels.append(rate_panel(1, 0, 128, 0, "d = 128, non-causal"))
    panels.append(rate_panel(2, 0, 64, 1, "d = 64, causal"))

    ratio = Panel(0, top + height, width, height, "Differential vs standard (time ratio)", "sequence length N",
                  "differential time / standard time", sizes)
    for d, dashed in ((64, False), (128, True)):
        for t, color in ((1, "#d62728"), (0, "#8c564b")):
            label = f"d = {d}, {'1 thread' if t == 1 else f'{threads} threads'}"
            points = [(n, sweep.ratio(("Differential", n, d, 0, t), ("Standard", n, d, 0, t))) for n in sizes]
            ratio.line(label, points, color, dashed)
    ratio.reference("target 1.05", 1.05, "#d62728")
    ratio.reference("equal time", 1.0)
    panels.append(ratio)

    speedup = Panel(width, top + height, width, height, "Speed-ups, 1 thread", "sequence length N",
                    "speed-up (x)", sizes)
    for d, dashed in ((64, False), (128, True)):
        points = []
        naive_points = []
        for n in sizes:
            points.append((n, sweep.ratio(("DifferentialComposed", n, d, 0, 1), ("Differential", n, d, 0, 1))))
            naive_points.append((n, sweep.ratio(("NaiveMaterialized", n, d, 0, 1), ("Standard", n, d, 0, 1))))
        speedup.line(f"fused / composed diff, d = {d}", points, COLORS["DifferentialComposed"], dashed)
        speedup.line(f"standard / naive, d = {d}", naive_points, COLORS["NaiveMaterialized"], dashed)
    speedup.reference("target 1.4 (fused/composed)", 1.4, COLORS["DifferentialComposed"])
    speedup.reference("equal", 1.0)
    panels.append(speedup)

    lengths = sweep.decode_lengths()
    if lengths:
        decode = Panel(2 * width, top + height, width, height,
                       f"Decode: Nq = 1, d = 128, 8 q heads, {threads} threads", "KV length Nk", "GB/s of K and V read",
                       lengths)
        for kv in (8, 2):
            decode.line(f"Hkv = {kv}", [(n, sweep.value("Decode", (n, kv, 0), "GB/s")) for n in lengths],
                        COLORS[f"Hkv={kv}"])
        decode.reference("read bandwidth", sweep.bandwidth)
        decode.reference("70% of it", 0.7 * sweep.bandwidth, "#2ca02c")
        panels.append(decode)

    ctx = sweep.context
    captions = [
        f"diffattn, fp32: {ctx.get('num_cpus', '?')} CPUs at {ctx.get('mhz_per_cpu', '?')} MHz "
        f"({ctx.get('host_name', '?')}), {ctx.get('date', '')[:10]}; measured by the benchmark binary: "
        f"FMA peak {sweep.peak:.0f} GFLOP/s per core, read bandwidth {sweep.bandwidth:.1f} GB/s.",
        "Matched size: 2 differential heads (Q/K width d, V width 2d) vs 4 standard heads of width d, "
        "batch 1. Medians of the repetitions" + (f", then across {len(sweep.sets)} runs of the sweep "
                                                  "(ratios within each run)." if len(sweep.sets) > 1 else "."),
    ]
    total_w, total_h = 3 * width, top + 2 * height + 10
    body = "\n".join(p.svg(i) for i, p in enumerate(panels))
    header = "".join(f'<text x="{total_w / 2}" y="{18 + 16 * i}" text-anchor="middle" font-family="sans-serif" '
                     f'font-size="12">{escape(c)}</text>\n' for i, c in enumerate(captions))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{total_h}" '
            f'viewBox="0 0 {total_w} {total_h}">\n<rect width="100%" height="100%" fill="white"/>\n'
            f"{header}{body}\n</svg>\n")


# ---- the Markdown summary -----------------------------------------------------------


def fmt(value, pattern="{:.2f}"):
    return "-" if value is None else pattern.format(value)


def summary(sweep):
    threads = sweep.threads()
    runs = len(sweep.sets) if len(sweep.sets) > 1 else None
    lines = [
        f"Machine (measured by the benchmark binary): fp32 FMA peak {sweep.peak:.1f} GFLOP/s per core, "
        + (f"{threads} threads, " if threads else "") + f"read bandwidth {sweep.bandwidth:.1f} GB/s"
        " (the larger of the start-up loop and its in-run ReadBandwidth median)."
        + (f" Rates are medians across {runs} runs of the sweep; ratios are taken within each run, then"
           " their median." if runs else ""),
        "",
        "| N | d | causal | std 1T GFLOP/s (% peak) | diff/std 1T | diff/std 2T | fused/composed 1T | "
        "standard 2T / 1T | naive/standard |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n in sweep.sizes():
        for d in (64, 128):
            for causal in (0, 1):
                args1 = (n, d, causal, 1)
                args0 = (n, d, causal, 0)
                rate = sweep.value("Standard", args1, "GFLOP/s")
                if rate is None:
                    continue
                ratio = lambda a, b: sweep.ratio((a[0],) + a[1], (b[0],) + b[1])  # noqa: E731
                lines.append(
                    f"| {n} | {d} | {'yes' if causal else 'no'} | {rate:.0f} ({100 * rate / sweep.peak:.0f}%) | "
                    f"{fmt(ratio(('Differential', args1), ('Standard', args1)))} | "
                    f"{fmt(ratio(('Differential', args0), ('Standard', args0)))} | "
                    f"{fmt(ratio(('DifferentialComposed', args1), ('Differential', args1)))} | "
                    f"{fmt(ratio(('Standard', args1), ('Standard', args0)))} | "
                    f"{fmt(ratio(('NaiveMaterialized', args1), ('Standard', args1)))} |")
    lengths = sweep.decode_lengths()
    if lengths:
        lines += ["", "| decode Nk | Hkv | ms | GB/s | % of read bandwidth |", "|---|---|---|---|---|"]
        for n in lengths:
            for kv in (8, 2):
                gbs = sweep.value("Decode", (n, kv, 0), "GB/s")
                if gbs is None:
                    continue
                lines.append(f"| {n} | {kv} | {sweep.value('Decode', (n, kv, 0), 'ms'):.2f} | {gbs:.1f} | "
                             f"{100 * sweep.bandwidth_fraction(('Decode', n, kv, 0)):.0f}% |")
    layouts = [("Decode", "[B, H, N, D] tensors"), ("DecodeKVCache", "diffattn::KVCache"),
               ("DecodeProjectionLayout", "[B, N, H, D] tensor, read as [B, H, N, D] views")]
    if any(sweep.get(kernel, 32768, kv, 0) is not None for kernel, _ in layouts[1:] for kv in (8, 2)):
        lines += ["", "| decode Nk = 32768, K/V stored as | Hkv | ms | GB/s | % of read bandwidth |",
                  "|---|---|---|---|---|"]
        for kernel, label in layouts:
            for kv in (8, 2):
                gbs = sweep.value(kernel, (32768, kv, 0), "GB/s")
                if gbs is None:
                    continue
                lines.append(f"| {label} | {kv} | {sweep.value(kernel, (32768, kv, 0), 'ms'):.2f} | {gbs:.1f} | "
                             f"{100 * sweep.bandwidth_fraction((kernel, 32768, kv, 0)):.0f}% |")
    long_run = next((e for name, e in sweep.runs.items() if name.startswith("LongSequenceMemory/")), None)
    if long_run is not None:
        lines += ["", f"Long sequence (N = 65536, one causal differential head, d = 64, {threads} threads): "
                  f"{to_ms(long_run) / 1e3:.2f} s, {long_run.get('GFLOP/s', 0):.0f} GFLOP/s, "
                  f"{long_run.get('RSS_beyond_io_MiB', 0):.1f} MiB resident beyond inputs and outputs."]
    return "\n".join(lines) + "\n"


KEPT_FIELDS = ("name", "run_name", "run_type", "aggregate_name", "repetitions", "real_time", "cpu_time",
               "time_unit", "iterations", "GFLOP/s", "GB/s", "threads", "RSS_MiB", "RSS_beyond_io_MiB")


def write_medians(sweep, path):
    """The figure's data alone (each run's context and one entry per benchmark), small
    enough to commit next to the figure; this script reads it back like the full output."""
    runs = [{"context": context, "benchmarks": [{k: e[k] for k in KEPT_FIELDS if k in e} for e in entries.values()]}
            for context, entries in sweep.sets]
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"runs": runs}, f, separators=(",", ":"))
        f.write("\n")


def main(argv):
    args = argv[1:]
    medians = None
    if "--medians" in args:
        i = args.index("--medians")
        medians = args[i + 1] if i + 1 < len(args) else None
        del args[i:i + 2]
    if len(args) < 2 or ("--medians" in argv and medians is None):
        sys.stderr.write(__doc__)
        return 2
    sweep = Sweep(load(args[:-1]))
    if not sweep.runs:
        sys.stderr.write(f"{' '.join(args[:-1])}: no benchmark runs found\n")
        return 1
    with open(args[-1], "w", encoding="utf-8") as f:
        f.write(figure(sweep))
    if medians:
        write_medians(sweep, medians)
    sys.stdout.write(summary(sweep))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
