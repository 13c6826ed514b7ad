"""Tables and plots of bench/bench_losses.py's JSON: every loss against its reference and
anchor library.

    python bench/report_losses.py bench/results/losses_cpu.json [--plots DIR]

Writes ``<stem>.md`` (per loss and device: each contender's median time and peak memory
per B, forward and forward + backward, and its ratio to the reference) and, in ``--plots``
(default ``<stem>/``), one PNG per loss: forward + backward time and peak memory against
B, log-log, one line per contender.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402


def _group(rows):
    """{(device kind, loss label): [rows]} of the loss benchmark's rows."""
    out = defaultdict(list)
    for r in rows:
        if str(r.get("subject", "")).startswith("loss:"):
            out[(r.get("extra", {}).get("device_kind", r["device"]), r["subject"][5:])].append(r)
    return out


def summary(rows) -> str:
    """One line per loss and device: forward + backward at the largest B the reference ran,
    the fastest fused backend against the reference and the anchor library."""
    lines = ["| loss | device | B, d | ours (fastest backend) ms / MiB | reference ms / MiB | "
             "anchor ms / MiB |", "|---|---|---|---|---|---|"]
    for (device, label), rs in sorted(_group(rows).items()):
        rs = [r for r in rs if r["direction"] == "forward+backward" and r.get("median_s")]
        ref = {(r["N"], r["d"]): r for r in rs if r["contender"] == "reference"}
        if not ref:
            continue
        size = max(ref)
        at = [r for r in rs if (r["N"], r["d"]) == size]
        fused = [r for r in at if r["contender"] in FUSED]
        anchors = [r for r in at if r["contender"] not in FUSED and r["contender"] != "reference"]
        if not fused:
            continue
        best = min(fused, key=lambda r: r["median_s"])

        def show(r):
            return f"{r['median_s'] * 1e3:.1f} / {r['peak_bytes'] / 2 ** 20:.1f}"
        anchor = "; ".join(f"{r['contender']}: {show(r)}" for r in anchors) or "-"
        lines.append(f"| {rs[0].get('extra', {}).get('loss', label)} | {device} | "
                     f"{size[0]}, {size[1]} | {best['contender']}: {show(best)} | "
                     f"{show(ref[size])} | {anchor} |")
    return "\n".join(lines) + "\n"


FUSED = ("torch", "cpu", "triton", "cuda")


def _cell(r, base):
    if r.get("median_s") is None:
        return f"- / {r['peak_bytes'] / 2 ** 20:.1f}"
    text = f"{r['median_s'] * 1e3:.1f} / {r['peak_bytes'] / 2 ** 20:.1f}"
    if base is not None and base is not r and base.get("median_s"):
        text += (f" ({base['median_s'] / r['median_s']:.1f}x, "
                 f"{base['peak_bytes'] / max(r['peak_bytes'], 1):.0f}x less memory)")
    return text


def markdown(rows, machine) -> str:
    groups = _group(rows)
    lines = ["Summary: forward + backward at the largest B the reference ran.", "",
             summary(rows), "Every loss, fp32: median time (ms) / peak extra memory (MiB) per call, and in "
             "brackets the reference's time and memory over the contender's (higher is "
             "better for the contender). `reference`: the published code re-implemented "
             "naively (testing.reference_losses); the library names are the installed "
             "anchors' own modules. Made by `make bench` (bench/bench_losses.py, "
             "bench/report_losses.py).", ""]
    for (device, label), rs in sorted(groups.items()):
        sizes = sorted({(r["N"], r["d"]) for r in rs})
        lines += [f"### {rs[0].get('extra', {}).get('loss', label)} ({label}), {device}", "",
                  "| contender | direction | " + " | ".join(f"B = {b}, d = {d}" for b, d in sizes)
                  + " |", "|---|---|" + "---:|" * len(sizes)]
        by = {(r["contender"], r["direction"], r["N"], r["d"]): r for r in rs}
        contenders = sorted({r["contender"] for r in rs}, key=lambda c: (c != "reference", c))
        for direction in harness.DIRECTIONS:
            for c in contenders:
                cells = []
                for b, d in sizes:
                    r = by.get((c, direction, b, d))
                    base = by.get(("reference", direction, b, d))
                    cells.append(_cell(r, base) if r else "skipped")
                if any(cell != "skipped" for cell in cells):
                    lines.append(f"| {c} | {direction} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plots(rows, folder) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for (device, label), rs in sorted(_group(rows).items()):
        fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 3.8))
        series = defaultdict(list)
        for r in rs:
            if r["direction"] == "forward+backward":
                series[r["contender"]].append((r["N"], r.get("median_s"), r["peak_bytes"]))
        for name, pts in sorted(series.items()):
            pts.sort()
            timed = [(b, t) for b, t, _ in pts if t]
            if timed:
                ax_t.plot(*zip(*timed), marker="o", label=name)
            ax_m.plot([p[0] for p in pts], [p[2] / 2 ** 20 for p in pts], marker="o", label=name)
        for ax, ylabel in ((ax_t, "forward + backward time (s)"), (ax_m, "peak memory (MiB)")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("B (batch)")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"{rs[0].get('extra', {}).get('loss', label)}, fp32, {device}")
        fig.tight_layout()
        path = folder / f"{label}_{device}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json")
    parser.add_argument("--plots", default=None)
    args = parser.parse_args(argv)
    rows, machine = harness.load_rows(args.json)
    stem = os.path.splitext(args.json)[0]
    pathlib.Path(stem + ".md").write_text(markdown(rows, machine))
    for path in plots([r for r in rows], args.plots or stem):
        print(path)
    print(stem + ".md")


if __name__ == "__main__":
    main()
