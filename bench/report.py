"""Turn a pytest-benchmark JSON of bench_supcon_cpu.py into a PNG plot and a markdown table.

    python bench/report.py bench/results/supcon_cpu.json

writes supcon_cpu.png (time and peak memory against N, log-log, d = 128) and
supcon_cpu.md (every case) beside the JSON.
"""

import json
import os
import sys
from collections import defaultdict


def load(path):
    with open(path) as fh:
        data = json.load(fh)
    rows = [b["extra_info"] for b in data["benchmarks"] if b.get("extra_info", {}).get("contender")]
    return rows, data.get("machine_info", {})


def markdown(rows, machine):
    ref = {(r["N"], r["d"]): r for r in rows if r["contender"] == "reference"}
    gemm = rows[0]["gemm_gflops"] if rows else float("nan")
    lines = [f"SupCon 'all', forward + backward, fp32, CPU ({machine.get('cpu', {}).get('brand_raw', 'unknown CPU')}, "
             f"{os.cpu_count()} threads); fp32 GEMM rate measured in the run: {gemm:.0f} GFLOP/s. "
             "Floor = 8 N^2 d FLOPs at that rate.", "",
             "| contender | N | d | median time (s) | x floor | peak memory (MiB) | vs reference (time / memory) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["N"], r["d"], r["contender"])):
        base = ref.get((r["N"], r["d"]))
        versus = (f"{base['median_s'] / r['median_s']:.1f}x / {base['peak_bytes'] / max(r['peak_bytes'], 1):.0f}x"
                  if base and r is not base else "")
        lines.append(f"| {r['contender']} | {r['N']} | {r['d']} | {r['median_s']:.3f} | {r['x_floor']:.2f} | "
                     f"{r['peak_bytes'] / 2**20:.1f} | {versus} |")
    return "\n".join(lines) + "\n"


def plot(rows, path, d=128):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = defaultdict(list)
    for r in rows:
        if r["d"] == d:
            series[r["contender"]].append((r["N"], r["median_s"], r["peak_bytes"] / 2**20))
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, pts in sorted(series.items()):
        pts.sort()
        ns = [p[0] for p in pts]
        ax_t.plot(ns, [p[1] for p in pts], marker="o", label=name)
        ax_m.plot(ns, [p[2] for p in pts], marker="o", label=name)
    floor = sorted({(r["N"], r["floor_s"]) for r in rows if r["d"] == d})
    if floor:
        ax_t.plot([f[0] for f in floor], [f[1] for f in floor], "k--", label="matmul floor")
    for ax, label in ((ax_t, "forward + backward time (s)"), (ax_m, "peak memory (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("N = bsz x 2 views")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"SupCon 'all', fp32, d = {d}, CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv):
    path = argv[1] if len(argv) > 1 else "bench/results/supcon_cpu.json"
    rows, machine = load(path)
    stem = os.path.splitext(path)[0]
    with open(stem + ".md", "w") as fh:
        fh.write(markdown(rows, machine))
    plot(rows, stem + ".png")
    print(f"wrote {stem}.md and {stem}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
