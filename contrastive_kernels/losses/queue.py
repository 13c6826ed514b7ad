"""Queue-based losses: MoCo (facebookresearch/moco), CLSA (maple-research-lab/CLSA) and
BINGO (haohang96/bingo): the queue is the core op's key set, the own key a row-level term.
:class:`KeyQueue` is their builders' queue (every rank's keys enqueued, no gradient).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import distributed, ops
from ..core.layout import keep_input_layout
from .algebra import (check_matrix, check_on, check_pair, check_positive, check_same,
                      logaddexp_safe, lse_union, reduce, result_dtype, rowdot)
from .spec import Accuracy, LossCase, LossSpec, unit


@keep_input_layout("q", "k", "queue")
def moco_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.07,
              *, in_batch_negatives: bool = False, reduction: str = "mean",
              backend: Optional[str] = "auto"):
    """MoCo's InfoNCE (He et al., facebookresearch/moco ``builder.py``).

    q, k [N, d] (normalized by the model, used as given), queue [K, d] (rows; MoCo stores
    its transpose). logits = [l_pos, l_neg] / T with l_pos_i = <q_i, k_i>, l_neg = q queue^T,
    target 0: only the own key is a positive and only the queue gives negatives.
    ``in_batch_negatives=True`` adds the other rows of k as negatives (logits
    [q k^T, q queue^T], target i, as CLSA's builder does).
    """
    check_pair("q", q, "k", k)
    check_matrix("queue", queue, dim=q.shape[1])
    check_same("q", q, "queue", queue)
    check_positive("temperature", temperature)
    lam = 1.0 / temperature
    acc = ops.accumulate_dtype(q.dtype)
    pos = lam * rowdot(q.to(acc), k.to(acc))
    lse, _ = ops.lse(q, queue, lam, backend=backend)
    if in_batch_negatives:
        lse_k, _ = ops.lse(q, k, lam, backend=backend)  # includes the own key (the positive)
        lse = logaddexp_safe(lse_k, lse)
    else:
        lse = torch.logaddexp(pos, lse)
    return reduce(lse - pos, reduction).to(result_dtype(q))


@keep_input_layout("q_weak", "q_strong", "k", "queue")
def clsa_ddm_loss(q_weak: torch.Tensor, q_strong: torch.Tensor, k: torch.Tensor,
                  queue: torch.Tensor, temperature: float = 0.2, *,
                  backend: Optional[str] = "auto"):
    """CLSA's distributional distillation (Wang & Qi, maple-research-lab/CLSA): the weakly
    augmented query's distribution over the keys [k; queue] supervises the strong one's:

        -mean_i sum_j p_weak_ij log p_strong_ij,  p_x = softmax(<q_x, key_j> / temperature)

    computed as lse_strong_i - <q_strong_i, o_weak_i> / T with o_weak the core op's o output
    (the teacher's expected key). The teacher and the keys are detached, as in CLSA.
    """
    check_pair("q_weak", q_weak, "q_strong", q_strong)
    check_matrix("k", k, dim=q_weak.shape[1])
    check_matrix("queue", queue, dim=q_weak.shape[1])
    check_same("q_weak", q_weak, "k", k)
    check_same("q_weak", q_weak, "queue", queue)
    check_positive("temperature", temperature)
    lam = 1.0 / temperature
    k, queue, teacher = k.detach(), queue.detach(), q_weak.detach()
    lse_t, o_t = lse_union([ops.lse(teacher, k, lam, return_o=True, backend=backend),
                             ops.lse(teacher, queue, lam, return_o=True, backend=backend)])
    lse_s, _ = lse_union([ops.lse(q_strong, k, lam, backend=backend),
                           ops.lse(q_strong, queue, lam, backend=backend)])
    loss = lse_s - lam * rowdot(q_strong.to(o_t.dtype), o_t)
    return loss.mean().to(result_dtype(q_strong))


@keep_input_layout("q_weak", "q_strong", "k", "queue")
def clsa_loss(q_weak: torch.Tensor, q_strong, k: torch.Tensor, queue: torch.Tensor,
              temperature: float = 0.2, clsa_t: float = 0.2, alpha: float = 1.0, *,
              backend: Optional[str] = "auto"):
    """CLSA's training loss for one weak query: the contrastive cross-entropy over
    [k (in-batch, own key positive); queue] at ``temperature`` plus ``alpha`` times the DDM
    loss at ``clsa_t`` for each strongly augmented query (a tensor or a list of them)."""
    check_matrix("q_weak", q_weak)
    check_positive("clsa_t", clsa_t)
    strong = [q_strong] if isinstance(q_strong, torch.Tensor) else list(q_strong)
    loss = moco_loss(q_weak, k, queue, temperature, in_batch_negatives=True, backend=backend)
    for qs in strong:
        loss = loss + alpha * clsa_ddm_loss(q_weak, qs, k, queue, clsa_t, backend=backend)
    return loss


@keep_input_layout("q", "positive_keys", "queue")
def bingo_loss(q: torch.Tensor, positive_keys: torch.Tensor, queue: torch.Tensor, lam,
               temperature: float = 0.2, *, backend: Optional[str] = "auto"):
    """BINGO's multi-positive cross-entropy (Xu et al., haohang96/bingo ``builder.py`` +
    ``MulposCrossEntropy``): for each positive m of query i, the logits
    [<q_i, positive_keys[i, m]>, q_i queue^T] / T with target 0; the loss is
    sum_m lam[m] * mean_i CE_m,i. positive_keys: [N, P, d] (or [N, d] for P = 1).
    The queue part is one core-op call shared by every positive.
    """
    check_matrix("q", q)
    if not isinstance(positive_keys, torch.Tensor):
        raise TypeError(f"positive_keys must be a torch.Tensor, got {type(positive_keys).__name__}")
    if positive_keys.dim() == 2:
        positive_keys = positive_keys[:, None]
    if positive_keys.dim() != 3 or positive_keys.shape[0] != q.shape[0] \
            or positive_keys.shape[2] != q.shape[1]:
        raise ValueError(f"positive_keys must be [N, P, d] = [{q.shape[0]}, P, {q.shape[1]}], "
                         f"got {tuple(positive_keys.shape)}")
    check_matrix("queue", queue, dim=q.shape[1])
    check_same("q", q, "queue", queue)
    check_same("q", q, "positive_keys", positive_keys)
    # lam may be a tensor with a gradient (learned weights): it stays in the graph; the
    # original multiplies it with CUDA losses, so a CPU lam is moved, a meta one refused
    if isinstance(lam, torch.Tensor):
        check_on("lam", lam, q.device, "q", movable=True)
        weights = lam
    elif isinstance(lam, (list, tuple)) and all(
            isinstance(w, (int, float)) and not isinstance(w, bool) for w in lam):
        weights = torch.tensor([float(w) for w in lam], dtype=torch.float64)
    else:
        raise TypeError(f"lam must hold real weights, one per positive (a list, tuple or 1-D "
                        f"tensor), got {lam!r}")
    if weights.dim() != 1 or weights.shape[0] != positive_keys.shape[1]:
        raise ValueError(f"lam must have one weight per positive (P = {positive_keys.shape[1]}), "
                         f"got {len(weights) if weights.dim() else 'a scalar'}")
    if weights.is_complex():
        raise TypeError(f"lam must hold real weights, got {weights.dtype}")
    check_positive("temperature", temperature)
    inv_t = 1.0 / temperature
    acc = ops.accumulate_dtype(q.dtype)
    lse_queue, _ = ops.lse(q, queue, inv_t, backend=backend)
    pos = inv_t * torch.einsum("nd,npd->np", q.to(acc), positive_keys.to(acc))
    ce = (torch.logaddexp(pos, lse_queue[:, None]) - pos).mean(dim=0)  # [P]
    loss = (weights.to(device=ce.device, dtype=ce.dtype) * ce).sum()
    return loss.to(result_dtype(q))


class MoCoLoss(nn.Module):
    """MoCo's contrastive loss (facebookresearch/moco ``builder.py`` logits + cross-entropy).

    ``forward(q, k, queue)``: q, k [N, d] normalized by the model, queue [K, d] rows (MoCo
    keeps the transpose, [d, K]: pass ``queue.T``). Keys per query: its own k row and the
    queue; ``in_batch_negatives=True`` adds the other k rows.
    """

    def __init__(self, temperature: float = 0.07, in_batch_negatives: bool = False, *,
                 backend: Optional[str] = "auto"):
        super().__init__()
        self.temperature = temperature
        self.in_batch_negatives = in_batch_negatives
        self.backend = backend

    def forward(self, q, k, queue):
        return moco_loss(q, k, queue, self.temperature,
                                    in_batch_negatives=self.in_batch_negatives,
                                    backend=self.backend)


class CLSALoss(nn.Module):
    """CLSA's loss for one weak view (maple-research-lab/CLSA ``model/CLSA.py`` +
    ``training/train.py``): contrastive cross-entropy of q_weak over [k (in-batch); queue]
    at ``T``, plus ``alpha`` x the DDM loss at ``clsa_t`` for each strong view.

    ``forward(q_weak, q_strong, k, queue)``; q_strong is a tensor or a list of tensors.
    """

    def __init__(self, T: float = 0.2, clsa_t: float = 0.2, alpha: float = 1.0, *,
                 backend: Optional[str] = "auto"):
        super().__init__()
        self.T = T
        self.clsa_t = clsa_t
        self.alpha = alpha
        self.backend = backend

    def forward(self, q_weak, q_strong, k, queue):
        return clsa_loss(q_weak, q_strong, k, queue, self.T, self.clsa_t, self.alpha,
                                    backend=self.backend)


class BingoLoss(nn.Module):
    """BINGO's multi-positive cross-entropy (haohang96/bingo ``MulposCrossEntropy`` over the
    builder's logits): ``forward(q, positive_keys, queue, lam=None)`` with positive_keys
    [N, P, d], queue [K, d]; ``lam`` (per call, as the original) defaults to the module's."""

    def __init__(self, temperature: float = 0.2, lam=(0.5, 0.5), *,
                 backend: Optional[str] = "auto"):
        super().__init__()
        self.temperature = temperature
        self.lam = tuple(lam)
        self.backend = backend

    def forward(self, q, positive_keys, queue, lam=None):
        return bingo_loss(q, positive_keys, queue, self.lam if lam is None else lam,
                                     self.temperature, backend=self.backend)


class KeyQueue(nn.Module):
    """The queue of MoCo's, CLSA's, BINGO's and PaCo's builders: ``size`` rows of d, drawn
    as MoCo draws it (randn, unit rows), refreshed first in, first out.

    :meth:`enqueue` stores every rank's keys (torch.distributed, without gradient: the
    builders' ``concat_all_gather`` is :func:`contrastive_kernels.distributed.concat_all_gather`,
    uneven batches too), so that the queue is the same on every rank; outside
    torch.distributed, this process's keys. Batches need not divide ``size`` (MoCo asserts
    they do): the write wraps around. ``queue`` and its pointer are buffers (saved in
    ``state_dict()``); :meth:`forward` returns the queue as the losses take it, [size, d]
    rows, detached.
    """

    def __init__(self, dim: int, size: int = 65536):
        super().__init__()
        if dim < 1 or size < 1:
            raise ValueError(f"dim and size must be >= 1, got dim={dim}, size={size}")
        self.register_buffer("queue", nn.functional.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros(1, dtype=torch.long))

    def forward(self) -> torch.Tensor:
        return self.queue.detach()

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, gather: bool = True) -> None:
        """Store ``keys`` [B, d] (every rank's when ``gather`` and distributed) after the
        newest rows, replacing the oldest."""
        check_matrix("keys", keys, dim=self.queue.shape[1])
        rows = distributed.concat_all_gather(keys) if gather else keys.detach()
        size = self.queue.shape[0]
        rows = rows[-size:].to(self.queue.dtype)  # a batch larger than the queue: its newest
        ptr = int(self.ptr)  # one host sync per step, as MoCo's int(self.queue_ptr)
        first = min(rows.shape[0], size - ptr)
        self.queue[ptr:ptr + first] = rows[:first]
        self.queue[:rows.shape[0] - first] = rows[first:]
        self.ptr[0] = (ptr + rows.shape[0]) % size


# --------------------------------------------------------------------------- registry


def _inputs(n_pos=0, strong=0):
    """q, k [B, d], queue [K, d] (unit rows); positive_keys [B, n_pos, d]; strong views."""
    def make(gen, small):
        b, k, d = (3, 6, 4) if small else (21, 70, 16)
        x = {"q": unit(gen, b, d), "k": unit(gen, b, d), "queue": unit(gen, k, d)}
        if n_pos:
            x["positive_keys"] = unit(gen, b, n_pos, d)
        for i in range(strong):
            x[f"strong{i}"] = unit(gen, b, d)
        return x
    return make


def _moco_case(id, in_batch):
    return LossCase(id, moco_loss, _inputs(),
                    lambda f, x, **be: f(x["q"], x["k"], x["queue"], 0.07,
                                         in_batch_negatives=in_batch, **be),
                    ("q", "k", "queue"))


def _bingo_case(id, lam):
    return LossCase(id, bingo_loss, _inputs(n_pos=len(lam)),
                    lambda f, x, **be: f(x["q"], x["positive_keys"], x["queue"], lam, 0.2, **be),
                    ("q", "positive_keys", "queue"))


SPECS = (
    LossSpec(
        name="MoCo", family="MoCo", module=MoCoLoss, functional=(moco_loss,),
        helpers=(KeyQueue,),
        source="facebookresearch/moco `moco/builder.py` (`[l_pos, l_neg]`, CE)",
        cases=(_moco_case("moco", in_batch=False), _moco_case("moco_in_batch", in_batch=True)),
        accuracy=(Accuracy(
            moco_loss,
            lambda gen, s: {"q": unit(gen, s.b, s.d), "k": unit(gen, s.b, s.d),
                            "queue": unit(gen, s.k, s.d)},
            lambda f, x, **be: f(x["q"], x["k"], x["queue"], 0.07, **be), ("q", "k", "queue"),
            error="1e-14"),)),
    LossSpec(
        name="CLSA (contrastive + DDM)", family="CLSA", module=CLSALoss,
        functional=(clsa_loss, clsa_ddm_loss),
        source="maple-research-lab/CLSA `model/CLSA.py`, `training/train.py`",
        cases=(
            LossCase("clsa_ddm", clsa_ddm_loss, _inputs(strong=1),
                     lambda f, x, **be: f(x["q"], x["strong0"], x["k"], x["queue"], 0.2, **be),
                     ("q", "strong0"), gradcheck=("strong0",)),
            LossCase("clsa_two_strong", clsa_loss, _inputs(strong=2),
                     lambda f, x, **be: f(x["q"], [x["strong0"], x["strong1"]], x["k"],
                                          x["queue"], 0.2, 0.25, 1.5, **be),
                     ("q", "strong0", "strong1"), gradcheck=("strong0", "strong1"))),
        accuracy=(Accuracy(
            clsa_loss,
            lambda gen, s: {"q": unit(gen, s.b, s.d), "strong": unit(gen, s.b, s.d),
                            "k": unit(gen, s.b, s.d), "queue": unit(gen, s.k, s.d)},
            lambda f, x, **be: f(x["q"], [x["strong"]], x["k"], x["queue"], 0.2, 0.2, 1.0, **be),
            ("q", "strong", "k"), error="1e-14"),)),
    LossSpec(
        name="BINGO", family="BINGO", module=BingoLoss, functional=(bingo_loss,),
        source="haohang96/bingo `moco/builder.py` + `main_moco.py` (`MulposCrossEntropy`)",
        cases=(_bingo_case("bingo", (0.5, 0.5)), _bingo_case("bingo_three", (0.6, 0.3, 0.1))),
        accuracy=(Accuracy(
            bingo_loss,
            lambda gen, s: {"q": unit(gen, s.b, s.d), "positive_keys": unit(gen, s.b, 2, s.d),
                            "queue": unit(gen, s.k, s.d)},
            lambda f, x, **be: f(x["q"], x["positive_keys"], x["queue"], (0.5, 0.5), 0.2, **be),
            ("q", "positive_keys"), error="1e-15"),)),
)
