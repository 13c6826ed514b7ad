"""Backend registry and dispatch for the core ops.

Each backend lives in its own module and exposes ``BACKEND``, a :class:`Backend`.
The registry imports them lazily, so a backend whose module or compiled extension
is missing is reported with the reason instead of breaking ``import
contrastive_kernels``.

Selection order: an explicit ``backend=`` argument, else the
``CONTRASTIVE_KERNELS_BACKEND`` environment variable, else ``"auto"``, which picks
the first backend in :data:`AUTO_ORDER` that is usable here and accepts the inputs.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Callable, Optional

import torch

ENV_VAR = "CONTRASTIVE_KERNELS_BACKEND"

# name -> module defining BACKEND. The order is the preference of "auto".
_MODULES = {
    "triton": "contrastive_kernels.triton",
    "cpu": "contrastive_kernels._cpu",
    "torch": "contrastive_kernels._torch_tiled",
    "reference": "contrastive_kernels.reference",
}
AUTO_ORDER = ("triton", "cpu", "torch")
NAMES = tuple(_MODULES)


@dataclasses.dataclass(frozen=True)
class CoreOptions:
    """What a core-op call asks for, as backends see it when deciding to accept it."""

    normalize: bool
    has_bias: bool
    has_labels: bool
    has_self: bool
    return_o: bool


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """What backends may look at when deciding to take a tensor: no data, so that the
    decision can run once while torch.compile traces and stay a constant in the graph."""

    device: torch.device
    dtype: torch.dtype
    shape: tuple

    @classmethod
    def of(cls, t: torch.Tensor) -> "TensorSpec":
        return cls(t.device, t.dtype, tuple(int(s) for s in t.shape))

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def is_cpu(self) -> bool:
        return self.device.type == "cpu"

    def dim(self) -> int:
        return len(self.shape)


@dataclasses.dataclass(frozen=True)
class Backend:
    """One implementation of the core ops.

    forward(q, k, scale, bias, q_labels, k_labels, self_offset, normalize, eps,
            exclude_positives, return_o) -> (lse, o)
    must be differentiable in q, k and scale (custom ops carry their autograd).
    """

    name: str
    forward: Callable
    # None when the backend can run in this process, else why it cannot.
    unavailable_reason: Callable[[], Optional[str]]
    # None when the backend takes inputs like these (TensorSpec of q, k), else why not.
    rejects: Callable[[TensorSpec, TensorSpec, CoreOptions], Optional[str]]
    # Device types for which "auto" may pick this backend.
    auto_devices: tuple = ()
    description: str = ""


class BackendError(RuntimeError):
    """No backend (or not the requested one) can run the call; the message says why."""


_loaded: dict = {}


def _load(name: str):
    """Return (Backend or None, reason)."""
    if name not in _loaded:
        try:
            module = importlib.import_module(_MODULES[name])
            _loaded[name] = (module.BACKEND, None)
        except Exception as exc:  # a missing build is a reason, never an import error
            _loaded[name] = (None, f"module {_MODULES[name]} failed to import: {exc}")
    return _loaded[name]


def get_backend(name: str) -> Backend:
    if name not in _MODULES:
        raise ValueError(f"backend={name!r} is not one of {('auto',) + NAMES}")
    backend, reason = _load(name)
    if backend is None:
        raise BackendError(f"backend {name!r} is unavailable: {reason}")
    return backend


def available_backends() -> dict:
    """Map each backend name to None (usable here) or the reason it is not."""
    out = {}
    for name in NAMES:
        backend, reason = _load(name)
        out[name] = reason if backend is None else backend.unavailable_reason()
    return out


def requested_backend(backend: Optional[str]) -> str:
    if backend is None or backend == "auto":
        backend = os.environ.get(ENV_VAR, "auto") or "auto"
        if backend != "auto" and backend not in _MODULES:
            raise ValueError(f"{ENV_VAR}={backend!r} is not one of {('auto',) + NAMES}")
    elif backend not in _MODULES:
        raise ValueError(f"backend={backend!r} is not one of {('auto',) + NAMES}")
    return backend


def select(backend: Optional[str], q: torch.Tensor, k: torch.Tensor, opts: CoreOptions) -> Backend:
    """Pick the backend for one call, or raise BackendError listing every reason.

    The choice depends only on metadata, so under torch.compile it is made once while
    tracing (the environment variable is read then, too) and is a constant of the graph.
    """
    name = _select_name(backend, str(q.device), q.dtype, tuple(int(s) for s in q.shape),
                        tuple(int(s) for s in k.shape), *dataclasses.astuple(opts))
    return _loaded[name][0]


@torch.compiler.assume_constant_result
def _select_name(backend, device, dtype, q_shape, k_shape, *options) -> str:
    # plain values in, a string out: what torch.compile can treat as a constant
    device = torch.device(device)
    q, k = TensorSpec(device, dtype, q_shape), TensorSpec(device, dtype, k_shape)
    opts = CoreOptions(*options)
    name = requested_backend(backend)
    if name != "auto":
        chosen = get_backend(name)
        reason = chosen.unavailable_reason() or chosen.rejects(q, k, opts)
        if reason:
            raise BackendError(f"backend {name!r} cannot run this call: {reason}")
        return name
    reasons = []
    for candidate in AUTO_ORDER:
        chosen, reason = _load(candidate)
        if chosen is not None:
            if q.device.type not in chosen.auto_devices:
                reason = f"not picked automatically for {q.device.type} tensors"
            else:
                reason = chosen.unavailable_reason() or chosen.rejects(q, k, opts)
            if reason is None:
                return candidate
        reasons.append(f"  {candidate}: {reason}")
    raise BackendError("no backend can run this call:\n" + "\n".join(reasons))
