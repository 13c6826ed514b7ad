"""Turn benchmark rows (``harness.Row``) into a PNG plot and a markdown table.

    python bench/report.py bench/results/supcon_cpu.json
    python bench/report.py bench/results/gpu/timing.json      # the GPU check's rows

writes <stem>.png (median time, with the min-max spread, and peak memory against N,
log-log, at one d) and <stem>.md (every case) beside the JSON. Reads a pytest-benchmark
JSON or a ``harness.write_rows`` file. SupCon CPU rows get their comparison with the
reference formulation; any other subject (the core op on a GPU) gets the generic table:
per case the time, the floor, TFLOP/s on the floor and the peak memory.
"""

import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402

SUBJECT = "supcon_all"


def _spread(r):
    # rows from before the spread was recorded carry the median only
    return r.get("min_s", r["median_s"]), r["median_s"], r.get("max_s", r["median_s"])


def markdown(rows, machine):
    ref = {(r["N"], r["d"]): r for r in rows if r["contender"] == "reference"}
    rates = [r.get("gemm_flop_s") or r.get("gemm_gflops", float("nan")) * 1e9 for r in rows]
    device = rows[0].get("device") if rows else None
    device = device or (f"{machine.get('cpu', {}).get('brand_raw', 'unknown CPU')}, "
                        f"{os.cpu_count()} threads")
    halved = sorted({r["contender"] for r in rows if r.get("floor_halved")})
    floor_text = "Floor = 8 N^2 d FLOPs at that rate"
    if halved:
        floor_text += (f" (4 N^2 d for {', '.join(halved)}, which computes each symmetric "
                       "tile of q = k once)")
    lines = [f"SupCon 'all', forward + backward, fp32, CPU ({device}); fp32 GEMM rate measured "
             f"in the run: {(rates[0] if rates else float('nan')) / 1e9:.0f} GFLOP/s. "
             f"{floor_text}. Times: min / median / max of the rounds.", "",
             "| contender | N | d | time min / median / max (s) | floor (s) | x floor | "
             "peak memory (MiB) | vs reference (median time / memory) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["N"], r["d"], r["contender"])):
        base = ref.get((r["N"], r["d"]))
        versus = (f"{base['median_s'] / r['median_s']:.1f}x / "
                  f"{base['peak_bytes'] / max(r['peak_bytes'], 1):.0f}x"
                  if base and r is not base else "")
        lo, mid, hi = _spread(r)
        lines.append(f"| {r['contender']} | {r['N']} | {r['d']} | {lo:.3f} / {mid:.3f} / {hi:.3f} | "
                     f"{r['floor_s']:.4f} | {r['x_floor']:.2f} | {r['peak_bytes'] / 2**20:.1f} | "
                     f"{versus} |")
    return "\n".join(lines) + "\n"


def generic_markdown(rows) -> str:
    """Every row: contender, dtype, direction, N, d, time, x floor, TFLOP/s, peak memory."""
    lines = ["| subject | contender | dtype | direction | N | d | median (ms) | min / max (ms) | "
             "x floor | TFLOP/s (floor) | % of GEMM | peak (MiB) |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def num(v, fmt):
        return fmt.format(v) if isinstance(v, (int, float)) else "-"
    for r in sorted(rows, key=lambda r: (r.get("subject", ""), r.get("dtype", ""), r.get("N") or 0,
                                         r.get("d") or 0, r.get("direction", ""),
                                         r.get("contender", ""))):
        med = r.get("median_s")
        flop = r.get("floor_flop")
        tflops = flop / med / 1e12 if flop and med else None
        pct = 100 / r["x_floor"] if r.get("x_floor") else None
        lines.append(
            f"| {r.get('subject', '')} | {r.get('contender', '')} | {r.get('dtype', '')} | "
            f"{r.get('direction', '')} | {r.get('N', '')} | {r.get('d', '')} | "
            f"{num(med and 1e3 * med, '{:.3f}')} | "
            f"{num(r.get('min_s') and 1e3 * r['min_s'], '{:.3f}')} / "
            f"{num(r.get('max_s') and 1e3 * r['max_s'], '{:.3f}')} | "
            f"{num(r.get('x_floor'), '{:.2f}')} | {num(tflops, '{:.3g}')} | "
            f"{num(pct, '{:.0f}%')} | "
            f"{num(r.get('peak_bytes') and r['peak_bytes'] / 2 ** 20, '{:.0f}')} |")
    return "\n".join(lines) + "\n"


def _series_key(r, generic):
    return (f"{r['contender']} {r.get('dtype', '')} {r.get('direction', '')}" if generic
            else r["contender"])


def plot(rows, path, d=128, generic=False, title=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = defaultdict(list)
    for r in rows:
        if r["d"] == d:
            series[_series_key(r, generic)].append((r["N"], *_spread(r),
                                                    (r.get("peak_bytes") or 0) / 2**20))
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, pts in sorted(series.items()):
        pts.sort()
        ns = [p[0] for p in pts]
        mids = [p[2] for p in pts]
        err = [[m - p[1] for m, p in zip(mids, pts)], [p[3] - m for m, p in zip(mids, pts)]]
        ax_t.errorbar(ns, mids, yerr=err, marker="o", capsize=3, label=name)
        ax_m.plot(ns, [p[4] for p in pts], marker="o", label=name)
    for halved, style, label in ((False, "k--", "matmul floor"),
                                 (True, "k:", "matmul floor, symmetric tiles once")):
        floor = sorted({(r["N"], r["floor_s"]) for r in rows
                        if r["d"] == d and r.get("floor_s") and not generic
                        and bool(r.get("floor_halved")) == halved})
        if floor:
            ax_t.plot([f[0] for f in floor], [f[1] for f in floor], style, label=label)
    time_label = "median time per call (s)" if generic else "forward + backward time (s)"
    for ax, label in ((ax_t, time_label), (ax_m, "peak memory (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("N = M" if generic else "N = bsz x 2 views")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(title or f"SupCon 'all', fp32, d = {d}, CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv):
    path = argv[1] if len(argv) > 1 else "bench/results/supcon_cpu.json"
    rows, machine = harness.load_rows(path)
    subjects = {r.get("subject", SUBJECT) for r in rows}
    generic = subjects != {SUBJECT}
    stem = os.path.splitext(path)[0]
    with open(stem + ".md", "w") as fh:
        fh.write(generic_markdown(rows) if generic else markdown(rows, machine))
    rows = [r for r in rows if r.get("median_s") is not None]
    sizes = {r["d"] for r in rows}
    d = 128 if 128 in sizes or not sizes else max(sizes)
    title = (f"{', '.join(sorted(subjects))}, d = {d}, {rows[0].get('device', '')}"
             if generic and rows else None)
    plot(rows, stem + ".png", d=d, generic=generic, title=title)
    print(f"wrote {stem}.md and {stem}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
