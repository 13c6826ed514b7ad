"""What each loss declares once: its :class:`LossSpec` (at the end of ``losses/<x>.py``, in a
tuple ``SPECS``), which every list of losses enumerates instead of keeping its own copy —
the package exports and ``functional``, the test tables (``testing.loss_cases``, the
bad-input families, the published signatures), ``bench/loss_accuracy.py`` and the generated
tables of README.md and docs/losses.md (:mod:`.tables`).

A spec names its oracle by convention instead of importing it: the functional form ``f``
has its faithful re-implementation ``f_reference`` in
:mod:`contrastive_kernels.testing.reference_losses`, imported on first use. The shipped
``testing`` package imports the losses (its tables call them), so the losses import none of
it at module level: the library then loads without its test tooling and there is no cycle.

The test inputs live here too (``cases``, ``accuracy``) because they are part of what a
loss is checked against; they are built in float64 from a seeded generator and only when a
test or the benchmark asks.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, Mapping, NamedTuple, Optional

import torch

ORACLES = "contrastive_kernels.testing.reference_losses"


def oracle_of(function: Callable) -> Callable:
    """The float64 oracle of a functional form: ``reference_losses.<name>_reference``."""
    return getattr(importlib.import_module(ORACLES), f"{function.__name__}_reference")


def randn(gen: torch.Generator, *shape) -> torch.Tensor:
    """Standard normal float64 values from ``gen`` (the inputs of every case)."""
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def unit(gen: torch.Generator, *shape) -> torch.Tensor:
    """Unit rows (last dim) in float64 from ``gen``."""
    x = randn(gen, *shape)
    return x / x.norm(dim=-1, keepdim=True)


def two_views(gen: torch.Generator, rows: int, d: int, draw: Callable = randn) -> dict:
    """out0, out1 [rows, d] drawn by ``draw`` (the accuracy rows of the two-view losses)."""
    return {"out0": draw(gen, rows, d), "out1": draw(gen, rows, d)}


def pair_inputs(unit_rows: bool = False, bank: int = 0, aligned: bool = False) -> Callable:
    """``make`` of the losses over two views out0, out1 [B, d] (NT-Xent, DCL, HCL): raw rows
    (1.7 x normal) or unit ones; ``bank`` rows of negatives; ``aligned``: the views of a
    sample close together and the rest spread (HCL's clamp fires for the rows whose positive
    dominates)."""
    def make(gen, small):
        b, d = (3, 3) if small else (33, 17)
        draw = unit if unit_rows else (lambda g, *s: 1.7 * randn(g, *s))
        x = {"out0": draw(gen, b, d), "out1": draw(gen, b, d)}
        if aligned:
            noise = torch.linspace(0.05, 2.0, b, dtype=torch.float64)[:, None]
            out1 = x["out0"] + noise * x["out1"]
            x["out1"] = out1 / out1.norm(dim=-1, keepdim=True)
        if bank:
            x["bank"] = unit(gen, 5 if small else bank, d)
        return x
    return make


class _CallsBoth:
    """``call(fn, x, **kw)`` runs ``function`` (kw = ``backend=``) or its oracle (no kw) on
    the inputs ``x``: both take the published arguments in the same order."""

    def fused(self, inputs: dict, backend: str):
        return self.call(self.function, inputs, backend=backend)

    def naive(self, inputs: dict):
        return self.call(oracle_of(self.function), inputs)


@dataclasses.dataclass(frozen=True)
class LossCase(_CallsBoth):
    """One configuration of the loss-family test table (tests/losses/test_loss_family.py):
    the fused form and its oracle called on the same inputs, in every dtype and backend.

    ``call`` as in :class:`_CallsBoth`; ``make(gen, small)`` returns the float64 inputs
    (``small``: tiny shapes for the Triton interpreter).
    ``grads`` names the differentiable inputs; everything else is a constant of the case.
    """

    id: str
    function: Callable
    make: Callable      # (gen, small) -> dict of float64 tensors / constants
    call: Callable      # (fn, inputs, **backend) -> 0-dim loss
    grads: tuple
    # inputs for torch.autograd.gradcheck: those without a stop-gradient path (the CLSA
    # teacher and DCLW's weights are detached on purpose, which finite differences see)
    gradcheck: Optional[tuple] = None
    # floating inputs kept in float64 in every dtype (PaCo's class prior: the module keeps
    # it in full precision whatever the features' dtype)
    full_precision: tuple = ()

    @property
    def gradcheck_inputs(self) -> tuple:
        return self.grads if self.gradcheck is None else self.gradcheck

    def inputs(self, dtype: torch.dtype, small: bool = False, seed: int = 0):
        """(inputs in dtype, the same values in float64) with grads enabled."""
        gen = torch.Generator().manual_seed(seed)
        low, high = {}, {}
        for name, value in self.make(gen, small).items():
            if (isinstance(value, torch.Tensor) and value.is_floating_point()
                    and name not in self.full_precision):
                rounded = value.to(dtype)
                grad = name in self.grads
                low[name] = rounded.detach().clone().requires_grad_(grad)
                high[name] = rounded.double().detach().clone().requires_grad_(grad)
            else:
                low[name] = high[name] = value
        return low, high


class Sizes(NamedTuple):
    """Realistic sizes of the accuracy benchmark: batch, queue / bank, feature, classes."""
    b: int = 128
    k: int = 1024
    d: int = 128
    c: int = 100


@dataclasses.dataclass(frozen=True)
class Anchor:
    """The installed anchor library's own module for an :class:`Accuracy` row: what the
    README's column "matches <library> <version>" compares, in float64.

    ``theirs()`` builds the library's loss as a function of the row's inputs; ``ours(x,
    backend)`` the call of ours that equals it (default: the row's own fused call).
    ``error``: the measured figure, as :class:`Accuracy`'s (``bench/loss_accuracy.py``;
    tests/losses/test_anchor_parity.py checks it on small inputs).
    """

    library: str        # the import name (pytorch_metric_learning, lightly, open_clip)
    version: str        # the release the figure was measured with (its major.minor)
    theirs: Callable    # () -> (inputs -> 0-dim loss)
    error: str
    ours: Optional[Callable] = None   # (inputs, backend) -> 0-dim loss

    def call_ours(self, row, inputs: dict, backend: str):
        return self.ours(inputs, backend) if self.ours else row.fused(inputs, backend)


def library_loss(module: str, name: str, inputs: tuple, *args) -> Callable:
    """``theirs`` for an :class:`Anchor`: ``module.name(*args)`` called on the inputs named
    by ``inputs`` (imported on use: the anchor libraries are test dependencies)."""
    def make():
        import importlib

        loss = getattr(importlib.import_module(module), name)(*args)
        return lambda x: loss(*(x[key] for key in inputs))
    return make


@dataclasses.dataclass(frozen=True)
class Accuracy(_CallsBoth):
    """A row of docs/losses.md's table: a realistic float64 configuration whose agreement
    with the oracle ``bench/loss_accuracy.py`` measures, and the figure it measured.

    ``make(gen, sizes)`` returns the float64 inputs, ``grads`` the differentiable ones;
    ``call`` as in :class:`_CallsBoth`. ``error``: the largest relative error of the loss and
    of its gradients (over 3 seeds, backends torch and cpu), rounded up to a power of ten.
    The texts default to the spec's (its name, module, functional forms and source).
    """

    function: Callable
    make: Callable      # (gen, Sizes) -> dict of float64 tensors / constants
    call: Callable
    grads: tuple
    error: str
    label: Optional[str] = None
    # how the row calls the module and the functional form, e.g.
    # "NTXentLoss(memory_bank_size=...)", "ntxent_loss(..., negatives=bank)"
    module: Optional[str] = None
    functional: Optional[str] = None
    source: Optional[str] = None
    anchor: Optional[Anchor] = None


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """One loss of the family: its ``nn.Module`` drop-in and what it is checked against.

    ``family``: the short name of the bad-input table and the README ("NT-Xent");
    ``name``: the docs' name ("SimCLR NT-Xent"). ``functional``: its functional forms, each
    exported by ``contrastive_kernels.functional`` with an oracle ``<name>_reference``;
    ``helpers``: other public names of the family (exported by ``losses`` and, if functions,
    ``functional``). ``published_signature``: the published constructor's positional
    parameters and defaults (``inspect.Parameter.empty``: required), ``published_forward``
    the published forward's parameters; None where no module was published (the loss is a
    training-loop formula there).
    """

    name: str
    family: str
    module: type
    functional: tuple
    source: str
    cases: tuple
    accuracy: tuple
    helpers: tuple = ()
    published_signature: Optional[Mapping] = None
    published_forward: Optional[tuple] = None

    @property
    def public(self) -> tuple:
        """Every public object of the loss: module, functional forms, helpers."""
        return (self.module, *self.functional, *self.helpers)
