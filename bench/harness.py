"""What every benchmark script shares: the measured GEMM floor, one row format, sizes.

- Time and memory: :mod:`contrastive_kernels.testing.measure` (min / median / max, peak).
- The floor: the FLOPs of the matrix products the problem needs, at the GEMM rate
  ``torch.mm`` reaches on this device in this dtype, measured in the same run (fp32 sgemm
  on CPU; bf16, or fp32 at torch's float32 matmul precision (TF32 or not), on GPU).
  Forward 2 N M d (one Q K^T); backward 6 N M d (one recompute, two products), 8 N M d
  for the two-grid scheme that recomputes the logits on both grids. When Q and K are the
  same rows (SupCon 'all', SimCLR) the logits are symmetric and half the tiles suffice:
  the floor halves for a kernel that exploits it.
- :class:`Row`: the one JSON row every script writes (``write_rows``) or puts in a
  pytest-benchmark ``extra_info``; ``load_rows`` reads either file back.
- :func:`lse_rows`: the core op's forward and backward on one device, as rows (the GPU
  benchmark and the GPU check time it this way); :func:`copy_bandwidth`: the copy rate a
  kernel's bytes are read against (L2-resident or not).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform
from typing import Optional

import torch

from contrastive_kernels import env
from contrastive_kernels.testing.measure import Timing, peak_memory_bytes, time_fn

RESULTS = pathlib.Path(__file__).parent / "results"


# contenders whose backward recomputes the logits on both grids (dq's and dk's): 8 N M d
TWO_GRID_BACKWARD = frozenset({"triton", "cuda"})
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
               torch.float64: "fp64"}
DIRECTIONS = ("forward", "backward", "forward+backward")


def _exploits_symmetry(contender: str) -> bool:
    """Whether a registry backend computes each off-diagonal tile once when q is k."""
    from contrastive_kernels.backends import registry

    if contender not in registry.names():
        return False
    backend = registry.loaded(contender)
    return backend is not None and backend.symmetric_tiles


def dtype_name(dtype: torch.dtype) -> str:
    return DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def floor_flop(n: int, m: int, d: int, direction: str, *, two_grid: bool = False,
               symmetric: bool = False) -> float:
    """Matmul FLOPs of the core op over N queries and M keys of d features."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r} is not one of {DIRECTIONS}")
    per_nmd = {"forward": 2, "backward": 8 if two_grid else 6}
    factor = (per_nmd["forward"] + per_nmd["backward"] if direction == "forward+backward"
              else per_nmd[direction])
    flop = factor * n * m * d
    return flop / 2 if symmetric else flop


def gemm_rate(device="cpu", dtype: torch.dtype = torch.float32, n: Optional[int] = None,
              repeats: int = 5) -> float:
    """FLOP/s of an n x n x n ``torch.mm`` (median), 4096 on CPU and 8192 on GPU by default."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 4096)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    timing = time_fn(lambda: torch.mm(a, b), device, repeats=repeats)
    return 2 * n ** 3 / timing.median


def copy_bandwidth(nbytes: int, device="cpu", repeats: int = 50) -> float:
    """Bytes per second (read + written) of ``repeats`` back-to-back copies between two
    buffers of ``nbytes``, with nothing flushed between them: buffers that fit in L2 are
    read from L2 (do_bench would flush it before every call)."""
    device = torch.device(device)
    x = torch.randn(max(nbytes // 4, 1), device=device)
    y = torch.empty_like(x)
    y.copy_(x)  # warm: allocation, first touch, the L2 lines
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        for _ in range(repeats):
            y.copy_(x)
        end.record()
        end.synchronize()
        seconds = start.elapsed_time(end) / 1e3
    else:
        import time
        t0 = time.perf_counter()
        for _ in range(repeats):
            y.copy_(x)
        seconds = time.perf_counter() - t0
    return 2 * x.numel() * 4 * repeats / seconds


def lse_rows(contender: str, n: int, d: int, dtype: torch.dtype, gemm_flop_s=None,
             device="cuda", directions=("forward", "backward"), repeats: int = 3,
             **extra) -> list:
    """Rows of the core op at N = M = ``n`` in the SimCLR call (normalize, self-exclusion):
    the forward without autograd, and the backward alone (``autograd.grad`` of a kept
    graph). Peak memory above the inputs; floors at ``gemm_flop_s``; ``extra`` adds
    TFLOP/s on the floor and on the work the contender spends."""
    import contrastive_kernels as ck

    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(n, d, device=device, dtype=dtype, generator=gen)
    k = torch.randn(n, d, device=device, dtype=dtype, generator=gen)
    scale = torch.tensor(10.0, device=device, dtype=torch.float32, requires_grad=True)

    def call(q_, k_):
        return ck.ops.lse(q_, k_, scale, normalize=True, self_offset=0, backend=contender)[0]

    rows = []
    for which in directions:
        if which == "backward":
            qg, kg = q.clone().requires_grad_(), k.clone().requires_grad_()
            lse = call(qg, kg)
            grad = torch.randn_like(lse)

            def fn():
                torch.autograd.grad(lse, (qg, kg, scale), grad, retain_graph=True)
        else:
            def fn():
                with torch.no_grad():
                    call(q, k)
        peak = peak_memory_bytes(fn, device)
        timing = time_fn(fn, device, repeats=repeats)
        row = make_row("lse", contender, device, dtype, which, n, n, d, timing, peak,
                       gemm_flop_s, **extra)
        spent = floor_flop(n, n, d, which, two_grid=which == "backward"
                           and contender in TWO_GRID_BACKWARD)
        row.extra.update(tflops_floor=row.floor_flop / timing.median / 1e12,
                         tflops_spent=spent / timing.median / 1e12,
                         fp32_precision=torch.get_float32_matmul_precision())
        rows.append(row)
    return rows


def device_name(device="cpu") -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh
                          if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} threads"


def max_tflop() -> float:
    """The GPU benchmark's time budget: TFLOP of floor work per call."""
    return float(env.get("BENCH_MAX_TFLOP", "60"))


@dataclasses.dataclass
class Row:
    """One measured case. Seconds are per call; ``x_floor`` is median / floor."""

    subject: str                       # what is measured, e.g. "supcon_all", "lse"
    contender: str                     # a registry backend, or a naive formulation
    device: str
    dtype: str
    direction: str                     # forward | backward | forward+backward
    N: Optional[int] = None
    M: Optional[int] = None
    d: Optional[int] = None
    min_s: Optional[float] = None
    median_s: Optional[float] = None
    max_s: Optional[float] = None
    samples: Optional[int] = None
    timer: Optional[str] = None
    peak_bytes: Optional[int] = None
    floor_flop: Optional[float] = None
    floor_halved: bool = False         # q is k and the contender exploits it
    gemm_flop_s: Optional[float] = None
    floor_s: Optional[float] = None
    x_floor: Optional[float] = None
    extra: dict = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def make_row(subject: str, contender: str, device, dtype: torch.dtype, direction: str,
             n: Optional[int], m: Optional[int], d: Optional[int],
             timing: Optional[Timing] = None, peak_bytes: Optional[int] = None,
             gemm_flop_s: Optional[float] = None, *, q_is_k: bool = False,
             two_grid: bool = False, **extra) -> Row:
    """A row with the floor filled in when there is a rate and a size to compute it from."""
    row = Row(subject=subject, contender=contender, device=device_name(device),
              dtype=dtype_name(dtype), direction=direction, N=n, M=m, d=d,
              peak_bytes=peak_bytes, gemm_flop_s=gemm_flop_s, extra=dict(extra))
    if timing is not None:
        row.min_s, row.median_s, row.max_s = timing.min, timing.median, timing.max
        row.samples, row.timer = timing.samples, timing.method
    if None not in (n, m, d):
        row.floor_halved = q_is_k and _exploits_symmetry(contender)
        row.floor_flop = floor_flop(n, m, d, direction, two_grid=two_grid,
                                    symmetric=row.floor_halved)
        if gemm_flop_s:
            row.floor_s = row.floor_flop / gemm_flop_s
            if row.median_s is not None:
                row.x_floor = row.median_s / row.floor_s
    return row


def timing_from_benchmark(benchmark) -> Optional[Timing]:
    """The spread pytest-benchmark measured (``time.perf_counter`` per round): no second run.
    None under ``--benchmark-disable`` (the function ran once, untimed: a smoke run)."""
    stats = getattr(benchmark, "stats", None)
    if stats is None:
        return None
    return Timing.of(list(stats.stats.data), "pytest-benchmark")


def write_rows(path, rows, **meta) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta.setdefault("torch", torch.__version__)
    meta.setdefault("threads", torch.get_num_threads())
    rows = [r.as_dict() if isinstance(r, Row) else r for r in rows]
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    return path


def load_rows(path, subject: Optional[str] = None):
    """(rows, meta) from a ``write_rows`` file or a pytest-benchmark JSON (its extra_info)."""
    with open(path) as fh:
        data = json.load(fh)
    if "benchmarks" in data:
        rows = [b["extra_info"] for b in data["benchmarks"] if b.get("extra_info", {}).get("contender")]
        meta = data.get("machine_info", {})
    else:
        rows, meta = data["rows"], data.get("meta", {})
    if subject is not None:
        # rows written before the subject field existed are SupCon rows
        rows = [r for r in rows if r.get("subject", "supcon_all") == subject]
    return rows, meta


def parse_sizes(text: Optional[str]):
    """``"1024x64,4096x128"`` -> [(1024, 64), (4096, 128)]; None or "" -> None."""
    if not text:
        return None
    sizes = []
    for item in text.split(","):
        n, _, d = item.strip().lower().partition("x")
        sizes.append((int(n), int(d)))
    return sizes


def cpu_load() -> str:
    try:
        return f"load average {os.getloadavg()[0]:.2f} (1 min)"
    except OSError:
        return "load average unknown"


def sizes_for(config, default):
    """The (N, d) grid of a pytest benchmark: ``--bench-sizes`` (bench/conftest.py) or its own."""
    return parse_sizes(config.getoption("--bench-sizes", default=None)) or default
