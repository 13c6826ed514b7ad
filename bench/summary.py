"""summary.md of the GPU check, from its sections' rows (standard library only: the
orchestrator, bench/gpu_check.py, renders it after every section without importing torch).

First the verdicts (correctness of both backends, the sanitizer, the GPU tests) and the
headline timing, then one part per section. docs/gpu_check.md says how to read it.
"""

from __future__ import annotations

HEADLINE = ("bf16", 65536, 128)  # (precision, N = M, d) of the headline timing


def table(header, body) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join("" if c is None else str(c) for c in r) + " |" for r in body]
    return "\n".join(out)


def _num(v, fmt="{:.3g}"):
    return fmt.format(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def correctness_counts(rows) -> str:
    done = [r for r in rows if "skipped" not in r]
    bad = [r for r in done if not r.get("ok")]
    skipped = len(rows) - len(done)
    return (f"{len(done) - len(bad)} ok" + (f", **{len(bad)} FAIL**" if bad else "")
            + (f", {skipped} not run (time budget)" if skipped else ""))


def correctness_table(rows) -> str:
    body = []
    for r in rows:
        if "skipped" in r:
            body.append((*r["case"], "", "not run: " + r["skipped"], "", "", "", "", "", ""))
            continue
        cells = [f"{_num(r[k]['err'], '{:.1e}')} / {_num(r[k]['tol'], '{:.1e}')}"
                 if isinstance(r.get(k), dict) else "-" for k in ("lse", "o", "dq", "dk", "dscale")]
        verdict = "ok" if r.get("ok") else "**FAIL**"
        body.append((r["dtype"], r["d"], r["opt"], r.get("variant") or "-", r["backend"], verdict,
                     *cells, r.get("error", "") + f" {r.get('seconds', '')} s"))
    return table(["dtype", "d", "options", "variant", "backend", "verdict", "lse", "o", "dq",
                  "dk", "dscale", "note"], body)


def _timing_rows(rows):
    return [r for r in rows if r.get("median_s") is not None]


def headline(rows) -> str:
    precision, n, d = HEADLINE
    pick = {(r["contender"], r["direction"]): r for r in _timing_rows(rows)
            if r.get("extra", {}).get("precision") == precision and r["N"] == n and r["d"] == d}
    if not pick:
        return f"headline ({precision}, N = M = {n}, d = {d}): not measured"
    parts = []
    for (contender, direction), r in sorted(pick.items()):
        parts.append(f"{contender} {direction} {1e3 * r['median_s']:.3f} ms "
                     f"({_num(r['extra'].get('tflops_floor'))} TFLOP/s on the floor, "
                     f"{_num(100 / r['x_floor'] if r.get('x_floor') else None, '{:.0f}')}% "
                     "of the GEMM rate)")
    return f"headline ({precision}, N = M = {n}, d = {d}): " + "; ".join(parts)


def timing_table(rows) -> str:
    body = []
    for r in rows:
        if r.get("median_s") is None:
            body.append((r.get("contender"), r.get("precision"), "", r.get("N"), r.get("d"),
                         "", "", "", "", r.get("skipped") or r.get("error") or
                         "not run: " + str(r.get("case", ""))))
            continue
        x = r.get("extra", {})
        body.append((r["contender"], x.get("precision", r["dtype"]), r["direction"], r["N"], r["d"],
                     _num(1e3 * r["median_s"], "{:.3f}"), _num(x.get("tflops_floor")),
                     _num(100 / r["x_floor"] if r.get("x_floor") else None, "{:.0f}%"),
                     _num((r.get("peak_bytes") or 0) / 2 ** 20, "{:.0f}"), ""))
    return table(["contender", "precision", "direction", "N", "d", "median ms",
                  "TFLOP/s (floor)", "% GEMM", "peak MiB", "note"], body)


def compare_table(rows) -> str:
    by = {}
    for r in _timing_rows(rows):
        key = (r["extra"].get("precision"), r["N"], r["d"], r["direction"])
        by.setdefault(key, {})[r["contender"]] = r["median_s"]
    body = [(*key, _num(1e3 * t["triton"], "{:.3f}"), _num(1e3 * t["cuda"], "{:.3f}"),
             _num(t["cuda"] / t["triton"], "{:.2f}"))
            for key, t in sorted(by.items(), key=str) if "triton" in t and "cuda" in t]
    return table(["precision", "N", "d", "direction", "triton ms", "cuda ms", "cuda / triton"],
                 body) if body else "(no case timed on both backends)"


def render(data: dict) -> str:
    plan = data.get("plan", {})
    info = (plan.get("rows") or [{}])[0]
    title = info.get("device") or ("CPU, dry run" if plan.get("dry") else "no device row")
    out = [f"# GPU check: {title}", "",
           f"Started {plan.get('started', '?')}, budget {plan.get('budget', '?')} s, "
           f"elapsed {plan.get('elapsed', '(still running or cut off)')} s. "
           "How to read this: docs/gpu_check.md.", "", "## Verdicts", ""]
    for name in ("correctness_triton", "correctness_cuda"):
        sec = data.get(name, {})
        out.append(f"- {name}: {correctness_counts(sec.get('rows', []))} "
                   f"(section {sec.get('state', 'not reached')})")
    san = data.get("sanitizer", {})
    verdicts = ", ".join(
        f"{r['tool']} {r.get('verdict') or 'skipped: ' + str(r.get('skipped'))}"
        + (f" ({r['errors']} errors)" if r.get("errors") else "")
        + (f"; the workload ran unsanitized: rc {r['workload_rc']}" if "workload_rc" in r else "")
        for r in san.get("rows", []))
    out.append(f"- sanitizer: {verdicts or san.get('reason') or san.get('state', 'not reached')}")
    tests = (data.get("gpu_tests", {}).get("rows") or [{}])[-1]
    counts = ", ".join(f"{v} {k}" for k, v in sorted(tests.get("counts", {}).items()))
    verdict = "ok" if tests.get("rc") == 0 else "**FAIL**" if tests else "not run"
    out.append(f"- gpu tests: {verdict}: {counts or 'no count'} (pytest rc {tests.get('rc', '-')}; "
               f"section {data.get('gpu_tests', {}).get('state', 'not reached')})")
    timing_rows = data.get("timing", {}).get("rows", [])
    out += [f"- {headline(timing_rows)}", "", "## Sections", "",
            table(["section", "state", "seconds", "ended at (s)", "rows (not run)", "reason"],
                  [(name, sec.get("state", "not reached"), sec.get("seconds"), sec.get("at"),
                    f"{len(sec.get('rows', []))} ({sum(1 for r in sec.get('rows', []) if 'skipped' in r)})",
                    sec.get("reason", "")) for name, sec in data.items() if name != "compiled"]),
            "", "## plan: versions, device, extension", "",
            table(["key", "value"], sorted(info.items()))]
    env = (data.get("env", {}).get("rows") or [{}])[0]
    out += ["", "## env: GEMM rates, copy bandwidth (L2-resident: no flush between copies)", "",
            table(["key", "value"], sorted(env.items()))]
    build = data.get("build", {})
    out += ["", f"## build: {build.get('state', 'not reached')}", "",
            "; ".join(f"{k}: {v}" for r in build.get("rows", []) for k, v in r.items())]
    for name in ("correctness_triton", "correctness_cuda"):
        out += ["", f"## {name}", "", "Cells: max error / tolerance (twice the naive "
                "computation's error in the dtype; tf32: 2^-10 x scale x magnitude).", "",
                correctness_table(data.get(name, {}).get("rows", []))]
    out += ["", "## sanitizer", "", table(["tool", "verdict", "errors", "rc", "seconds"], [
        (r["tool"], r.get("verdict") or r.get("skipped"), r.get("errors"), r.get("rc"),
         r.get("seconds")) for r in san.get("rows", [])])]
    out += ["", "## timing (harness rows; bench/report.py tabulates timing.json)", "",
            timing_table(timing_rows), "", "## triton vs cuda", "", compare_table(timing_rows)]
    compiled = data.get("compiled", {}).get("rows", [])
    seen = {(r["kernel"], r.get("key")): r for r in compiled}
    out += ["", f"## compiled: {len(seen)} Triton specializations, "
            f"{sum(1 for r in seen.values() if r.get('spills'))} with spills", "",
            table(["kernel", "registers", "spills", "shared", "warps", "stages"],
                  [(r["kernel"], r.get("registers"), r.get("spills"), r.get("shared"),
                    r.get("warps"), r.get("stages")) for r in seen.values()])]
    out += ["", "## gpu_tests", "", f"`{tests.get('command', '')}`", "", "```",
            str(tests.get("tail", ""))[-2500:], "```", ""]
    return "\n".join(out)
