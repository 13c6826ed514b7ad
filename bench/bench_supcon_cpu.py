"""SupCon 'all' forward + backward on the CPU: fused backends against the naive
SupContrast formulation and pytorch-metric-learning, over N (= bsz x 2 views) and d.

Each case records in ``extra_info``: median seconds, peak extra memory (torch profiler
memory events, replayed), the matmul floor (8 N^2 d FLOPs at the fp32 GEMM rate measured
in the same run) and the time as a multiple of it. Contenders that would not fit in
memory (or would take minutes) at a size are skipped with the reason.
"""

import pytest
import torch

import contrastive_kernels as ck
from contrastive_kernels import reference
from contrastive_kernels.profiling import peak_memory_bytes

CLASSES = 100
MEMORY_BUDGET = 16 * 2 ** 30  # of the machine's 24 GiB

# (N, d): the issue grid; N = 65536 only at d = 128 and only for the fused backends.
SIZES = [(n, d) for n in (1024, 4096, 16384) for d in (64, 128, 512)] + [(65536, 128)]


def _pml_loss():
    from pytorch_metric_learning.losses import SupConLoss as PMLSupConLoss

    pml = PMLSupConLoss(temperature=0.07)

    def loss(feats, labels):
        bsz, views, d = feats.shape
        return pml(feats.transpose(0, 1).reshape(bsz * views, d), labels.repeat(views))
    return loss


# contender -> (loss factory, bytes it needs at N, d; None if O(N d))
CONTENDERS = {
    "reference": (lambda: reference.supcon_loss_reference, lambda n, d: 8 * 4 * n * n),
    "pml": (_pml_loss, lambda n, d: 12 * 4 * n * n),
    "torch": (lambda: ck.SupConLoss(backend="torch"), None),
    "cpu": (lambda: ck.SupConLoss(backend="cpu"), None),
}


def _skip_reason(name, n, d):
    if name in ck.available_backends() and ck.available_backends()[name] is not None:
        return f"backend {name} unavailable: {ck.available_backends()[name]}"
    need = CONTENDERS[name][1]
    if need is not None and (need(n, d) > MEMORY_BUDGET or n > 16384):
        return f"{name} needs about {need(n, d) / 2**30:.0f} GiB at N = {n}"
    if name == "torch" and n * n * d > 65536 ** 2 * 128:
        return "too slow"
    if name in ("reference", "pml") and n == 16384 and d != 128:
        return "only at d = 128 at this size (minutes each)"
    return None


@pytest.mark.parametrize("name", list(CONTENDERS))
@pytest.mark.parametrize("n,d", SIZES, ids=[f"N{n}-d{d}" for n, d in SIZES])
def test_supcon_forward_backward(benchmark, cpu_gemm_flops, name, n, d):
    reason = _skip_reason(name, n, d)
    if reason:
        pytest.skip(reason)
    gen = torch.Generator().manual_seed(0)
    bsz = n // 2
    feats = torch.nn.functional.normalize(torch.randn(bsz, 2, d, generator=gen), dim=-1)
    labels = torch.randint(0, CLASSES, (bsz,), generator=gen)
    feats.requires_grad_()
    loss_fn = CONTENDERS[name][0]()

    def step():
        feats.grad = None
        loss_fn(feats, labels).backward()

    rounds = 3 if n <= 16384 else 1
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=1 if n <= 4096 else 0)
    seconds = benchmark.stats.stats.median
    feats.grad = None
    peak = peak_memory_bytes(step, "cpu")
    floor = 8 * n * n * d / cpu_gemm_flops
    benchmark.extra_info.update({
        "contender": name, "N": n, "d": d, "median_s": seconds, "peak_bytes": peak,
        "gemm_gflops": cpu_gemm_flops / 1e9, "floor_s": floor, "x_floor": seconds / floor,
    })
