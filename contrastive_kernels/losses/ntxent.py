"""SimCLR's NT-Xent, lightly ``NTXentLoss`` semantics (with its memory bank).

    L_i = lse_{j != i} s_ij - s_{i, partner(i)},  s = <u_i, u_j> / T over [out0; out1]

One core-op call over the stacked rows with self-exclusion; with a memory bank, the keys
are [own out1 row; bank].
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import distributed, ops
from ..core.layout import keep_input_layout
from .algebra import (check_gather_available, check_matrix, check_pair, lse_over_ranks,
                      mean_over_ranks, result_dtype, rowdot, unit_rows)
from .spec import Accuracy, Anchor, LossCase, LossSpec, library_loss, pair_inputs, two_views, unit
from .state import ResizableBuffers


def check_ntxent_temperature(temperature):
    if abs(temperature) < 1e-8:
        raise ValueError(f"Illegal temperature: abs({temperature}) < 1e-8")


@keep_input_layout("out0", "out1", "negatives")
def ntxent_loss(out0: torch.Tensor, out1: torch.Tensor, temperature: float = 0.5,
                negatives: Optional[torch.Tensor] = None, *, gather_distributed: bool = False,
                distributed_mode: str = "gather", eps: float = 1e-12,
                backend: Optional[str] = "auto"):
    """NT-Xent (SimCLR), lightly ``NTXentLoss`` semantics; rows are L2-normalized inside.

    Without ``negatives``: 2B anchors (out0 and out1), each against every other row of
    [out0; out1] (its partner is the positive), cross-entropy averaged over the 2B rows.
    With ``negatives`` [K, d] (a memory bank, used as given): B anchors out0, keys
    [its own out1 row; negatives], no in-batch negatives.
    ``gather_distributed``: every rank's [out0; out1] are keys (``distributed_mode``
    "gather" or "ring": :func:`contrastive_kernels.distributed.lse`); each rank's loss is
    its anchors' share of the global mean (:func:`contrastive_kernels.distributed.mean_share`:
    equal batches give the local mean, as lightly; uneven ones are weighted).
    """
    check_pair("out0", out0, "out1", out1)
    check_ntxent_temperature(temperature)
    check_gather_available(gather_distributed, distributed_mode)
    lam = 1.0 / temperature
    u0, u1 = unit_rows(out0, True, eps), unit_rows(out1, True, eps)
    pos = lam * rowdot(u0, u1)
    if negatives is not None:
        check_matrix("negatives", negatives, dim=out0.shape[1])
        if negatives.device != out0.device:
            raise ValueError(f"negatives must be on {out0.device}, got {negatives.device}")
        # the bank is used as stored (lightly does not renormalize it)
        bank = negatives.to(u0.dtype)
        lse_neg, _ = ops.lse(u0, bank, lam, backend=backend)
        loss = torch.logaddexp(pos, lse_neg) - pos
        return loss.mean().to(result_dtype(out0))

    world = distributed.world()[0] if gather_distributed else 1
    z = torch.cat([out0, out1], dim=0)
    # each row of z against every row (of every rank, distributed) but itself
    lse = lse_over_ranks(z, z, lam, world, distributed_mode, self_offset=0, normalize=True,
                         eps=eps, backend=backend)
    loss = lse - torch.cat([pos, pos])
    return mean_over_ranks(loss, world).to(result_dtype(out0))


class MemoryBank(ResizableBuffers):
    """lightly's ``MemoryBankModule`` behaviour: a FIFO of past out1 rows.

    ``size`` is ``(num_rows, d)`` (lightly >= 1.5): the bank is drawn at construction as
    lightly draws it, randn(num_rows, d) with unit rows, in fp32. An int ``size`` (earlier
    lightly releases) fills it lazily on first use with their draw, randn(d, size)
    normalized per column, in the first batch's dtype. :meth:`forward` returns the bank as
    it was before this step and enqueues ``output`` (detached) when ``update``. Stored as
    rows [num_rows, d]; the bank and its pointer are in ``state_dict()``.
    """

    _resizable = ("bank", "bank_ptr")

    def __init__(self, size=2 ** 16):
        super().__init__()
        dims = (size,) if isinstance(size, int) else tuple(size)
        if any(x < 0 for x in dims) or len(dims) not in (1, 2):
            raise ValueError(f"Illegal memory bank size {size}: a non-negative int or a "
                             "(num_rows, d) tuple")
        self.size = dims[0]
        self.register_buffer("bank", torch.empty(0))
        self.register_buffer("bank_ptr", torch.zeros(1, dtype=torch.long))
        if len(dims) == 2 and self.size > 0:
            self.bank = torch.nn.functional.normalize(torch.randn(dims), dim=-1)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        absent = [prefix + name for name in self._resizable if prefix + name not in state_dict]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if len(absent) == len(self._resizable):
            # a checkpoint of lightly's NTXentLoss: lightly does not save its bank (nor
            # pointer), so ours keeps its own, as lightly's does when it loads
            for key in absent:
                if key in missing_keys:
                    missing_keys.remove(key)

    @torch.no_grad()
    def _init_memory_bank(self, like: torch.Tensor):
        bank = torch.randn(like.shape[1], self.size, dtype=like.dtype)
        bank = torch.nn.functional.normalize(bank, dim=0)
        self.bank = bank.T.contiguous().to(like.device)
        self.bank_ptr = torch.zeros(1, dtype=torch.long, device=like.device)

    @torch.no_grad()
    def _dequeue_and_enqueue(self, batch: torch.Tensor):
        batch_size = batch.shape[0]
        ptr = int(self.bank_ptr)
        if ptr + batch_size >= self.size:
            self.bank[ptr:] = batch[: self.size - ptr].detach().to(self.bank.dtype)
            self.bank_ptr[0] = 0
        else:
            self.bank[ptr:ptr + batch_size] = batch.detach().to(self.bank.dtype)
            self.bank_ptr[0] = ptr + batch_size

    def forward(self, output: torch.Tensor, update: bool = False, gather: bool = False):
        """(output, the bank before this step or None); ``gather`` enqueues the rows of
        every rank (torch.distributed), as lightly does with gather_distributed."""
        if self.size == 0:
            return output, None
        self._usable_outside_inference()
        if self.bank.numel() == 0:
            self._init_memory_bank(output)
        elif self.bank.shape[1] != output.shape[1]:
            raise ValueError(f"the memory bank holds rows of d = {self.bank.shape[1]}, got a batch "
                             f"of d = {output.shape[1]}; the feature size must not change")
        bank = self.bank.clone().detach()
        if update:
            self._dequeue_and_enqueue(distributed.concat_all_gather(output) if gather
                                      else output)
        return output, bank


class NTXentLoss(nn.Module):
    """Drop-in for lightly's ``NTXentLoss`` (SimCLR's NT-Xent; MoCo-style with a bank).

    ``forward(out0, out1)``: rows normalized inside. ``memory_bank_size > 0``: out0 rows are
    the anchors, keys [own out1 row; bank], and out1 (normalized) enters the bank when out0
    requires grad. ``gather_distributed``: keys from every rank (torch.distributed).
    Equals pytorch-metric-learning's ``NTXentLoss`` on [out0; out1] with labels
    [0..B-1, 0..B-1] (one positive per row).
    """

    def __init__(self, temperature: float = 0.5, memory_bank_size=0,
                 gather_distributed: bool = False, *, distributed_mode: str = "gather",
                 backend: Optional[str] = "auto"):
        super().__init__()
        check_ntxent_temperature(temperature)
        check_gather_available(gather_distributed, distributed_mode)
        self.temperature = temperature
        self.gather_distributed = gather_distributed
        self.distributed_mode = distributed_mode
        self.backend = backend
        self.memory_bank = MemoryBank(memory_bank_size)
        self.memory_bank_size = self.memory_bank.size  # rows (an int, or the tuple's first)

    def forward(self, out0: torch.Tensor, out1: torch.Tensor) -> torch.Tensor:
        negatives = None
        if self.memory_bank_size > 0:
            unit1 = torch.nn.functional.normalize(out1, dim=1)
            _, negatives = self.memory_bank(unit1, update=out0.requires_grad,
                                            gather=self.gather_distributed)
            negatives = negatives.to(out0.dtype)
        return ntxent_loss(out0, out1, self.temperature, negatives,
                           gather_distributed=self.gather_distributed,
                           distributed_mode=self.distributed_mode, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, memory_bank_size={self.memory_bank_size}, "
                f"gather_distributed={self.gather_distributed}, "
                f"distributed_mode={self.distributed_mode!r}, backend={self.backend!r}")


# --------------------------------------------------------------------------- registry


def _case(id, temperature, bank=0):
    def call(f, x, **be):
        return f(x["out0"], x["out1"], temperature, x.get("bank"), **be)
    return LossCase(id, ntxent_loss, pair_inputs(bank=bank), call, ("out0", "out1"))


SPECS = (
    LossSpec(
        name="SimCLR NT-Xent", family="NT-Xent", module=NTXentLoss, functional=(ntxent_loss,),
        helpers=(MemoryBank,), source="lightly `lightly/loss/ntx_ent_loss.py`",
        cases=(_case("ntxent", 0.5), _case("ntxent_t01", 0.1), _case("ntxent_bank", 0.2, bank=50)),
        accuracy=(
            Accuracy(ntxent_loss,
                     lambda gen, s: two_views(gen, 2 * s.b, s.d),
                     lambda f, x, **be: f(x["out0"], x["out1"], 0.5, **be), ("out0", "out1"),
                     error="1e-14",
                     anchor=Anchor("lightly", "1.6", library_loss(
                         "lightly.loss", "NTXentLoss", ("out0", "out1"), 0.5), error="1e-14")),
            Accuracy(ntxent_loss,
                     lambda gen, s: {**two_views(gen, s.b, s.d), "bank": unit(gen, s.k, s.d)},
                     lambda f, x, **be: f(x["out0"], x["out1"], 0.2, x["bank"], **be),
                     ("out0", "out1"), error="1e-15", label="NT-Xent, memory bank",
                     module="NTXentLoss(memory_bank_size=...)",
                     functional="ntxent_loss(..., negatives=bank)",
                     source="lightly `ntx_ent_loss.py` + `memory_bank.py`")),
        published_signature=dict(temperature=0.5, memory_bank_size=0, gather_distributed=False),
        published_forward=("out0", "out1")),
)
