"""SupCon 'all' forward + backward on the CPU: the fused backends of the registry against
the naive SupContrast formulation and pytorch-metric-learning, over N (= bsz x 2 views) and d.

Each case records a :class:`harness.Row` in ``extra_info``: min / median / max seconds
(pytest-benchmark's rounds), peak extra memory (torch profiler memory events, replayed),
the matmul floor (8 N^2 d FLOPs, halved for a backend that computes each symmetric tile
once, at the fp32 GEMM rate measured in the same run) and the time as a multiple of it.
Contenders that would not fit in memory (or would take minutes) at a size are skipped
with the reason. ``--bench-sizes 512x64`` runs another grid.
"""

import importlib.util

import pytest
import torch

import contrastive_kernels as ck
from contrastive_kernels.testing import fused_backends, reference_losses
from contrastive_kernels.testing.measure import peak_memory_bytes

import harness

SUBJECT = "supcon_all"
CLASSES = 100
MEMORY_BUDGET = 16 * 2 ** 30  # of the machine's 24 GiB
LARGEST_N2D = 65536 ** 2 * 128  # the grid's largest case: about a minute for a fused backend

# (N, d): the issue grid; N = 65536 only at d = 128 and only for the fused backends.
SIZES = [(n, d) for n in (1024, 4096, 16384) for d in (64, 128, 512)] + [(65536, 128)]


def _pml_loss():
    from pytorch_metric_learning.losses import SupConLoss as PMLSupConLoss

    pml = PMLSupConLoss(temperature=0.07)

    def loss(feats, labels):
        bsz, views, d = feats.shape
        return pml(feats.transpose(0, 1).reshape(bsz * views, d), labels.repeat(views))
    return loss


def _pml_missing():
    if importlib.util.find_spec("pytorch_metric_learning") is None:
        return "pytorch-metric-learning is not installed"
    return None


# naive formulations: name -> (loss factory, bytes it needs at N, why it cannot run or None)
NAIVE = {
    "reference": (lambda: reference_losses.supcon_loss_reference, lambda n: 8 * 4 * n * n,
                  lambda: None),
    "pml": (_pml_loss, lambda n: 12 * 4 * n * n, _pml_missing),
}
CONTENDERS = list(NAIVE) + fused_backends("cpu")


def pytest_generate_tests(metafunc):
    if {"n", "d"} <= set(metafunc.fixturenames):
        sizes = harness.sizes_for(metafunc.config, SIZES)
        metafunc.parametrize("n,d", sizes, ids=[f"N{n}-d{d}" for n, d in sizes])


def _loss_fn(name):
    if name in NAIVE:
        return NAIVE[name][0]()
    return ck.SupConLoss(backend=name)


def _skip_reason(name, n, d):
    if name in NAIVE:
        _, need, missing = NAIVE[name]
        if missing():
            return missing()
        if need(n) > MEMORY_BUDGET or n > 16384:
            return f"{name} needs about {need(n) / 2**30:.0f} GiB at N = {n}"
        if n == 16384 and d != 128:
            return "only at d = 128 at this size (minutes each)"
    if n * n * d > LARGEST_N2D:
        return f"over the grid's largest case (N^2 d = {LARGEST_N2D:.1e}): too slow"
    return None


@pytest.mark.parametrize("name", CONTENDERS)
def test_supcon_forward_backward(benchmark, cpu_gemm_flop_s, name, n, d):
    reason = _skip_reason(name, n, d)
    if reason:
        pytest.skip(reason)
    gen = torch.Generator().manual_seed(0)
    bsz = n // 2
    feats = torch.nn.functional.normalize(torch.randn(bsz, 2, d, generator=gen), dim=-1)
    labels = torch.randint(0, CLASSES, (bsz,), generator=gen)
    feats.requires_grad_()
    loss_fn = _loss_fn(name)

    def step():
        feats.grad = None
        loss_fn(feats, labels).backward()

    rounds = 3 if n <= 16384 else 1
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=1 if n <= 4096 else 0)
    feats.grad = None
    peak = peak_memory_bytes(step, "cpu")
    row = harness.make_row(SUBJECT, name, "cpu", torch.float32, "forward+backward", n, n, d,
                           harness.timing_from_benchmark(benchmark), peak, cpu_gemm_flop_s,
                           q_is_k=True)
    benchmark.extra_info.update(row.as_dict())
