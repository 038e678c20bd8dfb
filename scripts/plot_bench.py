#!/usr/bin/env python3
"""Turns the full benchmark sweep's JSON into an SVG figure and a Markdown summary.

    build-bench/bench/diffattn_bench_attention --full --benchmark_repetitions=3 \\
        --benchmark_report_aggregates_only=true \\
        --benchmark_out=results.json --benchmark_out_format=json
    /usr/bin/python3 scripts/plot_bench.py results.json docs/bench.svg --medians docs/bench.json > docs/bench.md

(`bash scripts/bench.sh --plot results.json... DIR` runs the last line into DIR and
installs matplotlib first.) Several JSON files (runs of the same sweep) may be given
before the SVG's path: rates are then medians across the runs, and ratios are taken
within each run, then their median. The script reads its own --medians file back like
Google Benchmark's output, so the committed figure is redrawn from docs/bench.json.

Needs matplotlib (Debian: python3-matplotlib, seen by /usr/bin/python3). With
repetitions the median of each benchmark is used, otherwise its single run. The figure
draws every rate against the machine limits the benchmark binary measured (FMA peak per
core times threads at start-up; read bandwidth at start-up or, when larger, the median of
its ReadBandwidth benchmarks run among the others), so the reference lines come from the
same run as the points.
"""

import json
import math
import sys

try:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "diffattn"
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: a small, searchable SVG
    import matplotlib.pyplot as plt
except ImportError:
    plt = None

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

    def has(self, kernel):
        """Whether any run has the kernel's rows (older sweeps have no bf16 ones)."""
        return any(name.startswith(kernel + "/") for name in self.runs)

    def threads(self):
        """The thread count of the 'all threads' runs (argument 0)."""
        for name, entry in self.runs.items():
            if name.startswith("Standard/") and name.endswith("/0"):
                return int(entry.get("threads", 0))
        return 0


# ---- the figure ---------------------------------------------------------------------

COLORS = {
    "Standard": "#1f77b4",
    "Differential": "#d62728",
    "DifferentialComposed": "#ff7f0e",
    "NaiveMaterialized": "#7f7f7f",
    "Differential, all threads": "#8c564b",
    "Hkv=8": "#2ca02c",
    "Hkv=2": "#9467bd",
    "Differential, bf16": "#e377c2",
    "bf16 vs fp32": "#17becf",
}

# bf16 and f16 rows: the fp32 row's colour, drawn with their own line and marker.
HALF_STYLE = {"bf16": ("-.", "s"), "f16": ((0, (5, 1, 1, 1, 1, 1)), "^")}


def size_label(n):
    return f"{n // 1024}k" if n >= 1024 else str(n)


def draw_series(ax, label, xs, ys, color, dashed=False, style=None):
    """One line with markers, skipping the sizes a sweep has no number for; style is a
    (linestyle, marker) pair that overrides the solid or dashed line."""
    points = [(x, y) for x, y in zip(xs, ys) if y is not None]
    if points:
        linestyle, marker = style if style else ("--" if dashed else "-", "o")
        ax.plot(*zip(*points), label=label, color=color, linestyle=linestyle,
                marker=marker, markersize=3.5, linewidth=1.8)


def reference(ax, label, value, color="#555555", legend=True):
    """A dotted limit or target; labelled in the legend, or on the line itself."""
    if value is None or math.isnan(value):
        return
    ax.axhline(value, color=color, linestyle=":", linewidth=1.3, label=label if legend else None)
    if not legend:
        ax.annotate(label, (0, value), xycoords=("axes fraction", "data"), xytext=(4, 3),
                    textcoords="offset points", ha="left", va="bottom", fontsize=8, color=color,
                    bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})


def size_axis(ax, xs, label):
    """log2 x axis with a tick at each measured size."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs)
    ax.set_xticklabels([size_label(x) for x in xs])
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.set_xlabel(label)
    ax.grid(True, axis="y", color="#e6e6e6")
    ax.set_axisbelow(True)


def figure(sweep, path):
    sizes = sweep.sizes()
    threads = sweep.threads()
    fig, axes = plt.subplots(2, 3, figsize=(15, 9.4))
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.06, top=0.85, wspace=0.2, hspace=0.38)

    # Top row: rates against the FMA peak; one legend above the three panels.
    for ax, (d, causal, title) in zip(axes[0], ((64, 0, "d = 64, non-causal"), (128, 0, "d = 128, non-causal"),
                                                (64, 1, "d = 64, causal"))):
        for kernel, label in (("Standard", "standard"), ("Differential", "differential"),
                              ("DifferentialComposed", "composed differential (2 standard calls)"),
                              ("NaiveMaterialized", "naive materialized (Eigen GEMMs)")):
            draw_series(ax, f"{label}, 1 thread", sizes,
                        [sweep.value(kernel, (n, d, causal, 1), "GFLOP/s") for n in sizes], COLORS[kernel])
        for kernel in ("Standard", "Differential"):
            draw_series(ax, f"{kernel.lower()}, {threads} threads", sizes,
                        [sweep.value(kernel, (n, d, causal, 0), "GFLOP/s") for n in sizes], COLORS[kernel],
                        dashed=True)
        # bf16 on one thread only: the two-thread bf16 rates are in the Markdown table.
        for kernel in ("Standard", "Differential"):
            draw_series(ax, f"{kernel.lower()}, bf16, 1 thread", sizes,
                        [sweep.value(kernel + "Bf16", (n, d, causal, 1), "GFLOP/s") for n in sizes],
                        COLORS[kernel], style=HALF_STYLE["bf16"])
        reference(ax, "FMA peak, 1 core", sweep.peak, legend=False)
        reference(ax, f"FMA peak, {threads} cores", sweep.peak * threads, legend=False)
        ax.set_ylim(0, 1.08 * max(sweep.peak * max(threads, 1), ax.get_ylim()[1]))
        ax.set_title(title, fontweight="bold")
        ax.set_ylabel("GFLOP/s (useful work)")
        size_axis(ax, sizes, "sequence length N")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.945), ncol=3 if len(handles) <= 6 else 4,
               frameon=False, fontsize=9)

    ratio = axes[1][0]
    for d, dashed in ((64, False), (128, True)):
        for t in (1, 0):
            draw_series(ratio, f"d = {d}, {'1 thread' if t == 1 else f'{threads} threads'}", sizes,
                        [sweep.ratio(("Differential", n, d, 0, t), ("Standard", n, d, 0, t)) for n in sizes],
                        COLORS["Differential" if t == 1 else "Differential, all threads"], dashed)
    for d, dashed in ((64, False), (128, True)):
        draw_series(ratio, f"d = {d}, bf16, 1 thread", sizes,
                    [sweep.ratio(("DifferentialBf16", n, d, 0, 1), ("StandardBf16", n, d, 0, 1)) for n in sizes],
                    COLORS["Differential, bf16"], dashed)
    reference(ratio, "target ≤ 1.05", 1.05, COLORS["Differential"])
    reference(ratio, "equal time", 1.0)
    ratio.set_title("Differential / standard time, non-causal", fontweight="bold")
    ratio.set_ylabel("time ratio (lower is better)")
    size_axis(ratio, sizes, "sequence length N")

    speedup = axes[1][1]
    for d, dashed in ((64, False), (128, True)):
        draw_series(speedup, f"fused vs composed differential, d = {d}", sizes,
                    [sweep.ratio(("DifferentialComposed", n, d, 0, 1), ("Differential", n, d, 0, 1)) for n in sizes],
                    COLORS["DifferentialComposed"], dashed)
        draw_series(speedup, f"standard vs naive materialized, d = {d}", sizes,
                    [sweep.ratio(("NaiveMaterialized", n, d, 0, 1), ("Standard", n, d, 0, 1)) for n in sizes],
                    COLORS["NaiveMaterialized"], dashed)
        draw_series(speedup, f"standard, bf16 vs fp32, d = {d}", sizes,
                    [sweep.ratio(("Standard", n, d, 0, 1), ("StandardBf16", n, d, 0, 1)) for n in sizes],
                    COLORS["bf16 vs fp32"], dashed)
    reference(speedup, "target ≥ 1.4 (fused vs composed)", 1.4, COLORS["DifferentialComposed"])
    if sweep.has("StandardBf16"):
        reference(speedup, "target ≥ 1.5 (bf16 vs fp32)", 1.5, COLORS["bf16 vs fp32"])
    reference(speedup, "equal time", 1.0)
    speedup.set_ylim(bottom=min(0.8, speedup.get_ylim()[0]))
    speedup.set_title("Speed-ups, 1 thread, non-causal", fontweight="bold")
    speedup.set_ylabel("speed-up (×, higher is better)")
    size_axis(speedup, sizes, "sequence length N")

    decode = axes[1][2]
    lengths = sweep.decode_lengths()
    if lengths:
        for kv in (8, 2):
            draw_series(decode, f"Hkv = {kv}", lengths, [sweep.value("Decode", (n, kv, 0), "GB/s") for n in lengths],
                        COLORS[f"Hkv={kv}"])
            for half in ("bf16", "f16"):
                draw_series(decode, f"Hkv = {kv}, {half} K/V", lengths,
                            [sweep.value(f"Decode{half.capitalize()}", (n, kv, 0), "GB/s") for n in lengths],
                            COLORS[f"Hkv={kv}"], style=HALF_STYLE[half])
        reference(decode, f"read bandwidth ({sweep.bandwidth:.0f} GB/s)", sweep.bandwidth)
        reference(decode, "target: 70% of it", 0.7 * sweep.bandwidth, COLORS["Hkv=8"])
        decode.set_ylim(0, 1.15 * decode.get_ylim()[1])
        decode.set_title(f"Decoding: d = 128, 8 query heads, {threads} threads", fontweight="bold")
        half = sweep.has("DecodeBf16") or sweep.has("DecodeF16")
        decode.set_ylabel("GB/s of K and V read" + (" (in their own type)" if half else ""))
        size_axis(decode, lengths, "KV length Nk")
    else:
        decode.set_axis_off()
    for ax in axes[1]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best", framealpha=0.9)

    ctx = sweep.context
    runs = len(sweep.sets)
    fig.suptitle(
        f"diffattn, {'fp32 and bf16' if sweep.has('StandardBf16') else 'fp32'}, batch 1: {ctx.get('num_cpus', '?')} CPUs at {ctx.get('mhz_per_cpu', '?')} MHz "
        f"({ctx.get('host_name', '?')}), {ctx.get('date', '')[:10]}; measured by the benchmark binary: "
        f"FMA peak {sweep.peak:.0f} GFLOP/s per core, read bandwidth {sweep.bandwidth:.1f} GB/s\n"
        "Matched size: 2 differential heads (Q/K width d, V width 2d) vs 4 standard heads of width d. "
        "Medians of the repetitions" + (f", then across {runs} runs of the sweep (ratios within each run)."
                                        if runs > 1 else "."),
        fontsize=10, y=0.985)
    # A fixed hash salt and no date keep the SVG byte-identical for the same data.
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)


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
    if sweep.has("StandardBf16"):
        lines += ["", "bf16 q, k, v and out against the fp32 rows of the same run (speed-up: fp32 time / bf16 time):",
                  "", "| N | d | causal | bf16 std 1T GFLOP/s | std bf16 speed-up 1T | std bf16 speed-up 2T | "
                  "diff bf16 speed-up 1T | bf16 diff/std 1T | bf16 diff/std 2T |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for n in sweep.sizes("StandardBf16"):
            for d in (64, 128):
                for causal in (0, 1):
                    args1 = (n, d, causal, 1)
                    args0 = (n, d, causal, 0)
                    rate = sweep.value("StandardBf16", args1, "GFLOP/s")
                    if rate is None:
                        continue
                    ratio = lambda a, b: sweep.ratio((a[0],) + a[1], (b[0],) + b[1])  # noqa: E731
                    lines.append(
                        f"| {n} | {d} | {'yes' if causal else 'no'} | {rate:.0f} | "
                        f"{fmt(ratio(('Standard', args1), ('StandardBf16', args1)))} | "
                        f"{fmt(ratio(('Standard', args0), ('StandardBf16', args0)))} | "
                        f"{fmt(ratio(('Differential', args1), ('DifferentialBf16', args1)))} | "
                        f"{fmt(ratio(('DifferentialBf16', args1), ('StandardBf16', args1)))} | "
                        f"{fmt(ratio(('DifferentialBf16', args0), ('StandardBf16', args0)))} |")
    if sweep.has("StandardBackward"):
        lines += ["", "Backward passes against the forward of the same run; their GFLOP/s count 2.5× the forward's"
                  " FLOPs (10·N²·d per standard head of width d):",
                  "", "| N | d | causal | std bwd 1T GFLOP/s (% peak) | bwd/fwd 1T | bwd/fwd 2T | diff/std bwd 1T | "
                  "diff/std bwd 2T | std bwd 2T / 1T | diff bwd 2T / 1T |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for n in sweep.sizes("StandardBackward"):
            for d in (64, 128):
                for causal in (0, 1):
                    args1 = (n, d, causal, 1)
                    args0 = (n, d, causal, 0)
                    rate = sweep.value("StandardBackward", args1, "GFLOP/s")
                    if rate is None:
                        continue
                    ratio = lambda a, b: sweep.ratio((a[0],) + a[1], (b[0],) + b[1])  # noqa: E731
                    lines.append(
                        f"| {n} | {d} | {'yes' if causal else 'no'} | {rate:.0f} ({100 * rate / sweep.peak:.0f}%) | "
                        f"{fmt(ratio(('StandardBackward', args1), ('Standard', args1)))} | "
                        f"{fmt(ratio(('StandardBackward', args0), ('Standard', args0)))} | "
                        f"{fmt(ratio(('DifferentialBackward', args1), ('StandardBackward', args1)))} | "
                        f"{fmt(ratio(('DifferentialBackward', args0), ('StandardBackward', args0)))} | "
                        f"{fmt(ratio(('StandardBackward', args1), ('StandardBackward', args0)))} | "
                        f"{fmt(ratio(('DifferentialBackward', args1), ('DifferentialBackward', args0)))} |")
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
    if lengths and (sweep.has("DecodeBf16") or sweep.has("DecodeF16")):
        lines += ["", "| decode Nk | Hkv | K/V | ms | GB/s (half bytes) | % of read bandwidth | speed-up over fp32 |",
                  "|---|---|---|---|---|---|---|"]
        for n in lengths:
            for kv in (8, 2):
                for kernel, label in (("DecodeBf16", "bf16"), ("DecodeF16", "f16")):
                    gbs = sweep.value(kernel, (n, kv, 0), "GB/s")
                    if gbs is None:
                        continue
                    lines.append(f"| {n} | {kv} | {label} | {sweep.value(kernel, (n, kv, 0), 'ms'):.2f} | {gbs:.1f} | "
                                 f"{100 * sweep.bandwidth_fraction((kernel, n, kv, 0)):.0f}% | "
                                 f"{fmt(sweep.ratio(('Decode', n, kv, 0), (kernel, n, kv, 0)))} |")
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
    if plt is None:
        sys.stderr.write("plot_bench.py needs matplotlib: apt-get install python3-matplotlib, then run it with "
                         "/usr/bin/python3 (or pip install matplotlib)\n")
        return 1
    sweep = Sweep(load(args[:-1]))
    if not sweep.runs:
        sys.stderr.write(f"{' '.join(args[:-1])}: no benchmark runs found\n")
        return 1
    figure(sweep, args[-1])
    if medians:
        write_medians(sweep, medians)
    sys.stdout.write(summary(sweep))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
