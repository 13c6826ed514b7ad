"""Every registered loss against its published reference and the installed anchor library,
forward and forward + backward, time and peak memory, over the batch size.

One case per (loss, contender, direction, B, d). The loss configurations are the registry's
own rows (``LossSpec.accuracy``), the inputs fp32 on the device. The contenders:

- ``reference``: ``testing.reference_losses``, a naive re-implementation of the published
  code (SupContrast's, PaCo's, lightly's, ...), with its N x M matrices;
- each fused backend of this package that runs on the device (``torch``, ``cpu``, and
  ``triton`` / ``cuda`` on a GPU);
- the anchor library's own module, where the row names one (``Accuracy.anchor``) and it
  is installed: PML ``SupConLoss``; lightly ``NTXentLoss``, ``DCLLoss``, ``DCLWLoss``;
  open_clip ``ClipLoss``, ``SigLipLoss``.

Time: pytest-benchmark's rounds (``--benchmark-compare``, ``--benchmark-histogram``,
``--benchmark-save`` work as usual; under ``--benchmark-disable`` each case runs once).
Memory: the peak extra allocation of one call (the torch profiler's CPU memory events,
or ``max_memory_allocated`` on CUDA). Each case's :class:`harness.Row` is in
``extra_info``, and ``bench/report_losses.py`` turns the JSON into a table and one plot
per loss. A line per case goes to the terminal as it finishes. The CUDA device joins
the grid when one is present; nothing changes to run there.

    pytest bench/bench_losses.py -o python_files="bench_*.py" --benchmark-json=out.json \\
        [--bench-sizes 256x128,1024x128]
"""

from __future__ import annotations

import importlib.util
import time

import pytest
import torch

from contrastive_kernels.losses import SPECS
from contrastive_kernels.losses.spec import Sizes
from contrastive_kernels.testing import fused_backends
from contrastive_kernels.testing.measure import peak_memory_bytes

import harness

# (B, d): B is the registry's batch size (2B rows for the pair losses, K = 1024 queue rows)
SIZES = [(256, 128), (1024, 128)]  # B = 4096 (16384 SupCon rows): minutes per naive case
NAIVE_LARGEST_B = 4096  # the naive contenders' N x N matrices beyond it: GiBs per case
DIRECTIONS = ("forward", "forward+backward")


def _rows():
    """(id, spec, accuracy row) of every measured loss configuration."""
    out = []
    for spec in SPECS:
        for i, acc in enumerate(spec.accuracy):
            label = spec.family if len(spec.accuracy) == 1 else f"{spec.family}_{i}"
            out.append((label.replace(" ", "").replace("/", ""), spec, acc))
    return out


def _devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _contenders(spec, acc, device):
    names = ["reference"] + list(fused_backends(device))
    if acc.anchor and importlib.util.find_spec(acc.anchor.library) is not None:
        names.append(acc.anchor.library)
    return names


def _naive(acc, contender) -> bool:
    return contender == "reference" or (acc.anchor is not None
                                        and contender == acc.anchor.library)


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    sizes = harness.sizes_for(metafunc.config, SIZES)
    cases, ids = [], []
    for device in _devices():
        for label, spec, acc in _rows():
            for contender in _contenders(spec, acc, device):
                for direction in DIRECTIONS:
                    for b, d in sizes:
                        cases.append((device, label, spec, acc, contender, direction, b, d))
                        ids.append(f"{device}-{label}-{contender}-{direction}-B{b}-d{d}")
    metafunc.parametrize("case", cases, ids=ids)


def _loss_of(contender, acc):
    if contender == "reference":
        return acc.naive
    if acc.anchor is not None and contender == acc.anchor.library:
        return acc.anchor.theirs()
    return lambda x: acc.fused(x, contender)


def _inputs(acc, b, d, device, with_grad):
    x = acc.make(torch.Generator().manual_seed(0), Sizes(b=b, k=1024, d=d, c=100))
    out = {}
    for key, v in x.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device=device, dtype=torch.float32) if v.is_floating_point() else v.to(device)
            if with_grad and key in acc.grads:
                v.requires_grad_()
        out[key] = v
    return out


def _progress(config, text: str) -> None:
    """One line per finished case on the terminal, past pytest's output capture."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.ensure_newline()
        reporter.write_line(text)


def test_loss(benchmark, case, request):
    device, label, spec, acc, contender, direction, b, d = case
    if _naive(acc, contender) and b > NAIVE_LARGEST_B:
        pytest.skip(f"{contender} holds N x N matrices: skipped above B = {NAIVE_LARGEST_B}")
    backward = direction == "forward+backward"
    x = _inputs(acc, b, d, device, backward)
    loss_fn = _loss_of(contender, acc)
    leaves = [x[k] for k in acc.grads if isinstance(x.get(k), torch.Tensor)]

    def step():
        loss = loss_fn(x)
        if backward:
            torch.autograd.grad(loss, leaves, allow_unused=True)
        return loss

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def timed():
        step()
        sync()  # CUDA work is asynchronous: each round ends when the device is done

    t = time.perf_counter()
    benchmark.pedantic(timed, rounds=3 if b <= 1024 else 2, iterations=1, warmup_rounds=1)
    peak = peak_memory_bytes(step, device)
    timing = harness.timing_from_benchmark(benchmark)
    row = harness.make_row(f"loss:{label}", contender, device, torch.float32, direction, b,
                           None, d, timing, peak, loss=acc.label or spec.name, family=spec.family,
                           device_kind=device)
    benchmark.extra_info.update(row.as_dict())
    median = f"{timing.median * 1e3:9.1f} ms" if timing else "  (timing disabled)"
    _progress(request.config, f"[bench_losses] {device} {label:10s} {contender:24s} {direction:16s} B={b:<6d} "
              f"d={d:<4d} {median}  peak {peak / 2 ** 20:8.1f} MiB  "
              f"({time.perf_counter() - t:.1f} s)")
