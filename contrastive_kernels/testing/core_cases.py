"""Shared parameter tables for the core-op tests of every backend."""

import dataclasses
import random
from typing import Optional

import torch

# (N, M, d): tiny, odd, and tails that straddle tile sizes.
SHAPES = [(1, 1, 1), (3, 3, 3), (1, 5, 130), (97, 97, 130), (97, 61, 3), (130, 257, 64)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@dataclasses.dataclass(frozen=True)
class Options:
    id: str
    normalize: bool = False
    self_offset: Optional[int] = None
    bias: bool = False
    labels: bool = False  # exclude_positives with random labels
    return_o: bool = False
    scale: float = 2.5

    def kwargs(self, n, m, device, acc_dtype, gen):
        kw = dict(normalize=self.normalize, self_offset=self.self_offset, return_o=self.return_o)
        if self.bias:
            bias = torch.randn(m, generator=gen, dtype=torch.float64).to(acc_dtype)
            if m > 2:
                bias[1] = float("-inf")  # a dropped key
            kw["bias"] = bias.to(device)
        if self.labels:
            kw["q_labels"] = torch.randint(0, 3, (n,), generator=gen).to(device)
            kw["k_labels"] = torch.randint(0, 3, (m,), generator=gen).to(device)
            kw["exclude_positives"] = True
        return kw


OPTIONS = [
    Options("plain"),
    Options("normalize", normalize=True, scale=14.0),
    Options("self", self_offset=0),
    Options("self_shifted", self_offset=-2, normalize=True),
    Options("bias", bias=True),
    Options("labels", labels=True, self_offset=1),
    Options("o", return_o=True, normalize=True),
    Options("all", normalize=True, self_offset=0, bias=True, labels=True, return_o=True, scale=7.0),
]


def make_inputs(n, m, d, dtype, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n, d, generator=gen, dtype=torch.float64)
    k = torch.randn(m, d, generator=gen, dtype=torch.float64)
    # unnormalized rows of unit-ish norm keep logits O(scale) without normalize
    q, k = q / d ** 0.5, k / d ** 0.5
    return q.to(dtype).to(device), k.to(dtype).to(device), gen


# (N, M, d), dtype, option id: a covering sample for the launcher tests that run under the
# interpreter (slow): every shape, dtype and option at least once; d = 130 takes the
# chunked path of the interpreter's configs, N, M = 97 / 130 / 257 cross tile tails.
LAUNCHER_CASES = [
    ((1, 1, 1), torch.float32, "plain"),
    ((3, 3, 3), torch.float64, "all"),
    ((1, 5, 130), torch.bfloat16, "normalize"),
    ((97, 61, 3), torch.float16, "labels"),
    ((130, 257, 64), torch.bfloat16, "all"),
    ((97, 97, 130), torch.float32, "self_shifted"),
    ((61, 130, 64), torch.float32, "bias"),
    ((3, 130, 64), torch.float16, "self"),
    ((97, 97, 130), torch.float16, "all"),
    ((130, 1, 3), torch.float64, "bias"),
]


def launcher_args(n, m, d, dtype, opt: Options, eps: float, acc: torch.dtype, seed=0):
    """(args, gen): a core op launcher's pair prefix (q, k, scale, bias, q_labels, k_labels,
    self_offset, normalize, eps; CPU, q / k in ``dtype``, float tensors in ``acc``) for
    option ``opt``, and the generator that made them (for the cotangents)."""
    q, k, gen = make_inputs(n, m, d, dtype, seed=seed)
    kw = opt.kwargs(n, m, "cpu", acc, gen)
    args = dict(q=q, k=k, scale=torch.tensor(opt.scale, dtype=acc), bias=kw.get("bias"),
                q_labels=kw.get("q_labels"), k_labels=kw.get("k_labels"),
                self_offset=kw.get("self_offset"), normalize=kw.get("normalize", False),
                eps=eps)
    return args, gen


def covering(options=tuple(OPTIONS), shapes=tuple(SHAPES), dtypes=tuple(DTYPES), seed=0):
    """[(shape, dtype, option)]: a covering design of the full shapes x dtypes x options
    factorial (as xformers samples its tests). The first dtype (fp32) takes every option
    on every shape; every other dtype the option with every feature ("all") on every
    shape and each other option on one shape drawn with a fixed seed (the same cases on
    every run). Every pair of (shape, option), (dtype, shape) and (dtype, option) meets."""
    rng = random.Random(seed)
    full = [o for o in options if o.id == "all"]
    cases = [(s, dtypes[0], o) for o in options for s in shapes]
    for dtype in dtypes[1:]:
        for o in options:
            for s in (shapes if o in full else [rng.choice(shapes)]):
                cases.append((s, dtype, o))
    return cases
