"""Compile report of the CUDA kernels (no GPU needed): every kernel instantiation of
csrc/cuda/lse_cuda.cu compiled with nvcc for each arch (-Xptxas -v: registers, spills,
stack, static shared memory), its dynamic shared memory (lse_kernels.cuh), and the
static instruction mix of its SASS (cuobjdump -sass, shipped in Triton's package).

    python csrc/cuda/compile_report.py --out docs/cuda_compile_report.md

tests/backends/test_cuda_compile.py regenerates the report into a temporary file and
compares it with the committed one, and checks 0 spills, HMMA in the bf16 / fp16 tile
kernels (logits and second products), tf32 HMMA in the fp32 ones and no local memory
traffic (LDL / STL) anywhere.
"""

from __future__ import annotations

import argparse
import os
import re
import runpy
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = "csrc/cuda/lse_cuda.cu"
ARCHES = ("80", "90")
# The nvcc flags of setup.py's CUDA build (csrc/cuda/nvcc_flags.py, minus the arch list),
# so the report describes what the extension ships, plus the --expt-relaxed-constexpr and
# -D__CUDA_NO_* flags torch's CUDAExtension adds.
NVCC_FLAGS = runpy.run_path(str(Path(__file__).with_name("nvcc_flags.py")))["NVCC_FLAGS"] + [
    "--expt-relaxed-constexpr", "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__"]
DTYPES = {"TagF16": "fp16", "TagBF16": "bf16", "TagF32": "fp32", "TagF64": "fp64",
          "IfE": "fp32", "IdE": "fp64"}
# Dynamic shared memory of the tile kernels per dtype: 2 stages of (64 + 64) rows of a chunk
# of kBK + 16 bytes, the 64 x 65 weight tile and a row vector in the accumulation type.
_CHUNK = {"fp16": (32, 2, 4), "bf16": (32, 2, 4), "fp32": (32, 4, 4), "fp64": (16, 8, 8)}
TILE_KERNELS = ("lse_forward_kernel", "lse_forward_kernel+o", "lse_backward_rows_kernel",
                "lse_backward_keys_kernel", "two_sided_forward_kernel",
                "two_sided_backward_rows_kernel", "two_sided_backward_keys_kernel",
                "sigmoid_forward_kernel", "sigmoid_backward_rows_kernel",
                "sigmoid_backward_keys_kernel")
# The per-logit tile math of each reduction, compiled alone (a probe kernel: 32 logits per
# thread, fully unrolled, summed), minus the same probe summing the raw logits: the SASS the
# policy adds per logit on top of the score tile, which every op shares.
PROBE_TERMS = {
    "lse: exp(s - m)": "tile_exp<Tag>(x - pivot)",
    "sigmoid forward: softplus(x)": "tile_softplus<Tag>(x)",
    "sigmoid backward: sigmoid(x)": "tile_sigmoid<Tag>(x)",
}
PROBE_TAGS = {"TagBF16": "bf16", "TagF32": "fp32", "TagF64": "fp64"}
SASS_CLASSES = {
    "HMMA": r"HMMA", "LDSM": r"LDSM", "LDGSTS": r"LDGSTS", "MUFU": r"MUFU",
    "FFMA": r"FFMA", "DFMA": r"DFMA", "SHFL": r"SHFL", "BAR": r"BAR",
    "LDL/STL": r"(?:LDL|STL)",
}
# Matched against the whole mnemonic (with its modifiers): the tf32 MMAs of the fp32
# logits (mma.sync.m16n8k8 tf32 is HMMA.1688.F32.TF32) and the transposed ldmatrix that
# feeds the B operand of the second products (LDSM.16.MT88).
SASS_FULL_CLASSES = {"HMMA.TF32": r"HMMA\.\w+\.F32\.TF32", "LDSM.T": r"LDSM\.16\.MT88(?:\.\w+)*"}
# What --use_fast_math writes into the PTX: fp32 arithmetic that flushes subnormals (.ftz)
# and approximate division / square root. None may appear (csrc/cuda/nvcc_flags.py): the
# emulation computes IEEE. (libdevice's accurate expf reduces its argument and then uses
# ex2.approx.ftz, and fp64 division seeds with rcp.approx.ftz.f64: those are not counted.)
FAST_MATH_PTX = re.compile(r"\b(?:(?:add|sub|mul|fma\.rn|mad|min|max|abs|neg|setp\.\w+|"
                           r"cvt\.\w+)\.ftz|(?:div|sqrt|rcp|rsqrt)\.approx(?:\.ftz)?)\.f32\b")


def dynamic_smem(kernel: str, dtype: str) -> int:
    if kernel not in TILE_KERNELS:
        return 0
    bk, s, acc = _CHUNK[dtype]
    lds = bk + 16 // s
    return 2 * (64 + 64) * lds * s + 64 * 65 * acc + 64 * acc  # 2 pipeline stages


def cuda_home() -> Path:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var) and (Path(os.environ[var]) / "bin" / "nvcc").exists():
            return Path(os.environ[var])
    return Path("/usr/local/cuda")


def cuobjdump() -> str | None:
    try:
        import triton
        path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        if path.exists():
            return str(path)
    except Exception:
        pass
    found = shutil.which("cuobjdump")
    if found:
        return found
    candidate = cuda_home() / "bin" / "cuobjdump"
    return str(candidate) if candidate.exists() else None


def nvcc_version(nvcc: Path) -> str:
    out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release ([\d.]+), (V[\d.]+)", out)
    return f"{m[1]} ({m[2]})" if m else out.strip().splitlines()[-1]


def readable(mangled: str) -> tuple[str, str]:
    """(kernel name, dtype) of an Itanium-mangled ck::<namespace>::<kernel><Tag>."""
    rest, names = mangled[3:] if mangled.startswith("_ZN") else mangled, []
    while rest[:1].isdigit():
        m = re.match(r"(\d+)", rest)
        length = int(m[1])
        names.append(rest[len(m[1]):len(m[1]) + length])
        rest = rest[len(m[1]) + length:]
    tag = re.search(r"(Tag(?:BF16|F16|F32|F64))|(I[fd]E)", mangled)
    name = names[-1] if names else mangled
    if re.search(r"Tag\w+ELb1E", mangled):  # lse_forward_kernel<Tag, kO = true>
        name += "+o"
    return name, (DTYPES[tag[0]] if tag else "?")


def compile_arch(arch: str, workdir: Path) -> tuple[dict, Path]:
    nvcc = cuda_home() / "bin" / "nvcc"
    cubin = workdir / f"lse_cuda_sm{arch}.cubin"
    keep = workdir / f"keep_sm{arch}"
    keep.mkdir(exist_ok=True)
    cmd = [str(nvcc), *NVCC_FLAGS, "-I", str(ROOT / "csrc"), "-cubin",
           f"-gencode=arch=compute_{arch},code=sm_{arch}", "-Xptxas", "-v", "-keep",
           "-keep-dir", str(keep), str(ROOT / SOURCE), "-o", str(cubin)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"nvcc failed for sm_{arch}:\n{res.stderr}")
    kernels, current = {}, None
    for line in res.stderr.splitlines():
        m = re.search(r"Compiling entry function '(\w+)' for 'sm_\d+'", line)
        if m:
            current = m[1]
            kernels[current] = {}
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            kernels[current].update(stack=int(m[1]), spill_stores=int(m[2]), spill_loads=int(m[3]))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            kernels[current]["registers"] = int(m[1])
            s = re.search(r"(\d+) bytes smem", line)
            kernels[current]["static_smem"] = int(s[1]) if s else 0
    for ptx in keep.glob("*.ptx"):  # the PTX of this arch (kept by -keep)
        parts = re.split(r"\.entry\s+(\w+)\(", ptx.read_text())
        for name, body in zip(parts[1::2], parts[2::2]):
            if name in kernels:
                kernels[name]["fast_math"] = len(FAST_MATH_PTX.findall(body))
    return kernels, cubin


def sass_mix(cubin: Path) -> dict:
    tool = cuobjdump()
    if tool is None:
        raise RuntimeError("cuobjdump not found (it ships in triton/backends/nvidia/bin)")
    out = subprocess.run([tool, "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
    mixes, current = {}, None
    for line in out.splitlines():
        m = re.match(r"\s*Function : (\w+)", line)
        if m:
            current = m[1]
            mixes[current] = {"total": 0, **{k: 0 for k in SASS_CLASSES},
                              **{k: 0 for k in SASS_FULL_CLASSES}}
            continue
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if m and current is not None:
            op = m[1].split(".")[0]
            mixes[current]["total"] += 1
            for key, pattern in SASS_CLASSES.items():
                if re.fullmatch(pattern, op):
                    mixes[current][key] += 1
            for key, pattern in SASS_FULL_CLASSES.items():
                if re.fullmatch(pattern, m[1]):
                    mixes[current][key] += 1
    return mixes


def probe_source() -> str:
    kernels = []
    for i, term in enumerate(["x", *PROBE_TERMS.values()]):
        kernels.append(f"""
template <class Tag>
__global__ void probe{i}(const typename Tag::Acc* in, typename Tag::Acc* out) {{
  using Acc = typename Tag::Acc;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const Acc pivot = in[0];
  Acc acc = 0;
#pragma unroll
  for (int j = 0; j < 32; ++j) {{
    const Acc x = in[i * 32 + j];
    acc += {term};
  }}
  out[i] = acc + pivot;
}}""")
    inst = [f"template __global__ void probe{i}<{tag}>(const {tag}::Acc*, {tag}::Acc*);"
            for i in range(len(PROBE_TERMS) + 1) for tag in PROBE_TAGS]
    return ("#define CK_KERNEL_NAMESPACE probe_kernels\n#include \"cuda/lse_kernels.cuh\"\n"
            "namespace ck {\nnamespace probe_kernels {\n" + "\n".join(kernels) + "\n" +
            "\n".join(inst) + "\n}  // namespace probe_kernels\n}  // namespace ck\n")


def per_logit(arch: str, workdir: Path) -> list:
    """[(term, dtype, SASS, MUFU, FMA-pipe ops)] per logit, from the probe kernels."""
    src = workdir / f"probe_sm{arch}.cu"
    src.write_text(probe_source())
    cubin = workdir / f"probe_sm{arch}.cubin"
    cmd = [str(cuda_home() / "bin" / "nvcc"), *NVCC_FLAGS, "-I", str(ROOT / "csrc"), "-cubin",
           f"-gencode=arch=compute_{arch},code=sm_{arch}", str(src), "-o", str(cubin)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"nvcc failed for the sm_{arch} probe:\n{res.stderr}")
    fma_pipe = re.compile(r"(?:FFMA|FMUL|FADD|DFMA|DMUL|DADD|FSEL|FMNMX|FSETP|DSETP)")
    counts = {}
    out = subprocess.run([cuobjdump(), "-sass", str(cubin)], capture_output=True, text=True,
                         check=True).stdout
    current = None
    for line in out.splitlines():
        m = re.match(r"\s*Function : (\w+)", line)
        if m:
            i = int(re.search(r"probe(\d+)", m[1])[1])
            tag = re.search(r"Tag\w+?(?=E)", m[1])[0]
            current = counts.setdefault((i, tag), [0, 0, 0])
            continue
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if m and current is not None and m[1].split(".")[0] not in ("NOP", "BRA", "EXIT"):
            op = m[1].split(".")[0]
            current[0] += 1
            current[1] += op == "MUFU"
            current[2] += bool(fma_pipe.fullmatch(op))
    rows = []
    for i, name in enumerate(PROBE_TERMS, start=1):
        for tag, dtype in PROBE_TAGS.items():
            base, term = counts[(0, tag)], counts[(i, tag)]
            rows.append((name, dtype, *[(t - b) / 32 for t, b in zip(term, base)]))
    return rows


def _rows(kernels: dict, mixes: dict) -> list:
    rows = []
    for mangled, info in kernels.items():
        name, dtype = readable(mangled)
        rows.append(dict(kernel=name, dtype=dtype, mangled=mangled,
                         dynamic_smem=dynamic_smem(name, dtype),
                         **info, **mixes.get(mangled, {})))
    rows.sort(key=lambda r: (r["kernel"], r["dtype"]))
    return rows


def collect_arch(arch: str, workdir: Path) -> list:
    """The report's rows of one arch: compiled, then its SASS mix."""
    kernels, cubin = compile_arch(arch, workdir)
    return _rows(kernels, sass_mix(cubin))


def collect(workdir: Path) -> dict:
    return {arch: collect_arch(arch, workdir) for arch in ARCHES}


def collect_per_logit(workdir: Path) -> dict:
    return {arch: per_logit(arch, workdir) for arch in ARCHES}


def render(report: dict, logits: dict) -> str:
    nvcc = cuda_home() / "bin" / "nvcc"
    lines = [
        "# CUDA kernels: compile report",
        "",
        f"Generated by `python csrc/cuda/compile_report.py --out docs/cuda_compile_report.md` "
        f"from `{SOURCE}` with nvcc {nvcc_version(nvcc)}, flags `{' '.join(NVCC_FLAGS)} -Xptxas -v`, "
        "one cubin per arch; SASS from `cuobjdump -sass`. "
        "`tests/backends/test_cuda_compile.py` checks that it is current.",
        "",
        "Columns: registers per thread, spill stores / loads and stack frame (bytes), static and "
        "dynamic shared memory per block (bytes; the tile kernels carve their dynamic buffer "
        "in `tile_traits.cuh`), then the static SASS instruction counts of the kernel: all "
        "instructions, tensor-core MMAs (HMMA; of which tf32: HMMA.TF32), ldmatrix (LDSM; of "
        "which transposed, the B operand of the second products: LDSM.T), cp.async (LDGSTS), "
        "special-function ops (MUFU: exp / log / rcp), FP32 / FP64 FMAs, shuffles, barriers and "
        "local-memory traffic (LDL/STL, which must be 0); last, from the PTX, fast-math "
        "arithmetic (fp32 ops that flush subnormals, approximate division / square root: "
        "must be 0, no `--use_fast_math`). The main loop of a 64 x 64 tile with "
        "a 32-wide chunk of d is, per warp, 2 x 8 HMMA (bf16 / fp16) fed by 2 x 5 LDSM, or "
        "4 x 8 tf32 HMMA (fp32 when torch allows tf32); a second product (o, u, v) adds 16 "
        "HMMA fed by 8 LDSM.T per chunk (32 HMMA for bf16 o: weights and their rounding "
        "residue); the exp of the online log-sum-exp is 32 MUFU per thread per tile. "
        "`two_sided_*` are the kernels of two_sided_lse (policy LseRowsCols, "
        "`reductions.cuh`): its forward adds the column partials of each tile (32 more exps "
        "per thread, 3 barriers, no shuffles), its backward grids the two-sided weights. "
        "`sigmoid_*` are the kernels of pairwise_sigmoid (policy SigmoidRows): its forward sums "
        "softplus per row (one exp per logit; the log1p on the FMA pipe), its backward grids "
        "the sigmoid weights (one exp and one reciprocal per logit) and, on the key grid, the "
        "dbias partials; `sum_splits_kernel` adds its split partials in range order.",
        "",
    ]
    head = ("| kernel | dtype | regs | spill st/ld | stack | smem static | smem dynamic | "
            "SASS | HMMA | HMMA.TF32 | LDSM | LDSM.T | LDGSTS | MUFU | FFMA | DFMA | SHFL | BAR | "
            "LDL/STL | fast-math PTX |")
    for arch, rows in report.items():
        lines += [f"## sm_{arch}", "", head, "|" + "---|" * 20]
        for r in rows:
            lines.append(
                f"| {r['kernel']} | {r['dtype']} | {r.get('registers', '?')} | "
                f"{r.get('spill_stores', '?')}/{r.get('spill_loads', '?')} | {r.get('stack', '?')} | "
                f"{r.get('static_smem', 0)} | {r['dynamic_smem']} | {r.get('total', '?')} | "
                f"{r.get('HMMA', '?')} | {r.get('HMMA.TF32', '?')} | {r.get('LDSM', '?')} | "
                f"{r.get('LDSM.T', '?')} | {r.get('LDGSTS', '?')} | "
                f"{r.get('MUFU', '?')} | {r.get('FFMA', '?')} | {r.get('DFMA', '?')} | "
                f"{r.get('SHFL', '?')} | {r.get('BAR', '?')} | {r.get('LDL/STL', '?')} | "
                f"{r.get('fast_math', '?')} |")
        lines.append("")
    lines += [
        "## Per logit: the tile math of each reduction",
        "",
        "What a policy adds per logit to the shared score tile, from probe kernels (32 logits "
        "per thread, unrolled, summed; the same probe summing the raw logits subtracted), per "
        "arch: SASS instructions, MUFU (SFU: ex2 / rcp / lg2) and FMA-pipe ops (FFMA, FMUL, "
        "FADD, FSEL, FMNMX, FSETP and their fp64 forms). The 16-bit kernels use bf16's row "
        "(fp16 is the same code). The main loop of the logits adds, per logit and chunk of 32 "
        "features, 16 / 32 HMMA, 10 / 32 LDSM and 4 / 32 LDGSTS per thread (bf16 / fp16; "
        "the kernels' rows above): at d = 128 (4 chunks), 2 HMMA, 1.25 LDSM and 0.5 LDGSTS "
        "per logit; d streams in chunks of kBK = 32 (16 for fp64), the one d tile, so at "
        "d = 256 those double while the tile math stays.",
        "",
        "| arch | term | dtype | SASS / logit | MUFU / logit | FMA-pipe / logit |",
        "|---|---|---|---|---|---|",
    ]
    for arch, rows in logits.items():
        for term, dtype, sass, mufu, fma in rows:
            lines.append(f"| sm_{arch} | {term} | {dtype} | {sass:.2f} | {mufu:.2f} | {fma:.2f} |")
    lines.append("")
    return "\n".join(lines)


# The committed ledger of the last full compile: the parsed report and per-logit rows under
# the hash of every input (inputs_key). nvcc takes ~45 s per arch here: the test takes the
# ledger when the key matches and recompiles one arch a day (alternating) to compare.
LEDGER = ROOT / "docs" / "cuda_compile_ledger.json"


def inputs_key() -> str:
    """Everything the compile reads: the C++ / CUDA sources (every header under csrc/), this
    script (what it parses), the flags and nvcc's version. The CPU kernels (.cpp) are not read."""
    import hashlib

    h = hashlib.sha256(nvcc_version(cuda_home() / "bin" / "nvcc").encode())
    h.update(" ".join(NVCC_FLAGS).encode())
    for path in sorted((ROOT / "csrc").rglob("*")):
        if path.suffix in (".cu", ".cuh", ".h", ".py") and path.is_file():
            h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:32]


def _plain(value):
    """JSON's view of the report (tuples as lists), for comparing with a ledger."""
    import json
    return json.loads(json.dumps(value))


def collect_or_ledger(workdir: Path, ledger: Path = LEDGER, day: int | None = None) -> dict:
    """{report, logits, source, verified, mismatch}: from the ledger when its key is
    today's inputs' ("ledger"; the arch of the day, ARCHES[day % 2], compiled afresh and
    compared: ``mismatch`` names what differs), else compiled ("compiled")."""
    import datetime
    import json

    data = json.loads(ledger.read_text()) if ledger and ledger.exists() else {}
    if data.get("key") != inputs_key():
        return dict(report=_plain(collect(workdir)), logits=_plain(collect_per_logit(workdir)),
                    source="compiled", verified=None, mismatch="")
    day = datetime.date.today().toordinal() if day is None else day
    arch = ARCHES[day % len(ARCHES)]
    fresh = dict(report=_plain(collect_arch(arch, workdir)),
                 logits=_plain(per_logit(arch, workdir)))
    return dict(report=data["report"], logits=data["logits"], source="ledger", verified=arch,
                fresh=fresh, mismatch=ledger_mismatch(data, arch, fresh))


def ledger_mismatch(data: dict, arch: str, fresh: dict) -> str:
    """'' when an arch's fresh compile ({report, logits} of that arch) is what the ledger
    records, else what differs."""
    diff = []
    if fresh["report"] != data["report"][arch]:
        diff.append(f"sm_{arch} kernels")
    if fresh["logits"] != data["logits"][arch]:
        diff.append(f"sm_{arch} per-logit rows")
    return ", ".join(diff)


def write_ledger(report: dict, logits: dict, ledger: Path = LEDGER) -> None:
    import json
    ledger.write_text(json.dumps(dict(key=inputs_key(), report=_plain(report),
                                      logits=_plain(logits)), indent=0, sort_keys=True) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write the markdown here (default: stdout)")
    parser.add_argument("--write-ledger", default=None, type=Path,
                        help="also write the parsed rows as the ledger (docs/cuda_compile_ledger.json)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        report, logits = collect(Path(tmp)), collect_per_logit(Path(tmp))
        text = render(report, logits)
    if args.write_ledger:
        write_ledger(report, logits, args.write_ledger)
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
