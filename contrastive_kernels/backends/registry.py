"""Backends as data, and the choice of one per call.

A backend module exposes ``BACKEND``, a :class:`Backend` that *declares* what it can run
(devices, dtypes, optional features, a d range, determinism, whether it runs here);
:meth:`Backend.not_supported_reasons` turns the declaration into reasons. The modules are
imported lazily, so a backend whose module or compiled extension is missing is reported
with the reason instead of breaking ``import contrastive_kernels``.

Adding a backend: one module that defines ``BACKEND`` and one line in :data:`MODULES`.
Tests, ``info``, the demo and the benchmarks enumerate :func:`names`.

Selection: an explicit ``backend=``, else ``CONTRASTIVE_KERNELS_BACKEND``, else ``"auto"``:
the usable backend of lowest ``priority`` that the call's device is an ``auto_devices``
entry of and that supports the call.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, Optional

import torch

from .. import env
from ..core.contract import FEATURES, CoreOptions

ENV_KEY = "BACKEND"
ENV_VAR = env.name(ENV_KEY)

# name -> module defining BACKEND
MODULES = {
    "triton": "contrastive_kernels.backends.triton",
    "cpu": "contrastive_kernels.backends.native",
    "cuda": "contrastive_kernels.backends.cuda",
    "torch": "contrastive_kernels.backends.torch_tiled",
    "reference": "contrastive_kernels.backends.reference",
}

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _always_available() -> Optional[str]:
    return None


@dataclasses.dataclass(frozen=True)
class OpPair:
    """How a backend runs one op (:mod:`contrastive_kernels.core.ops`): ``forward`` takes
    the op's flat schema arguments and is differentiable in q, k and scale; ``backward`` is
    its backward op, which the torch.func path calls (core/transforms.py), or None when
    ``forward`` is plain PyTorch that autograd differentiates itself."""

    forward: Callable
    backward: Optional[Callable] = None


@dataclasses.dataclass(frozen=True)
class Backend:
    """One implementation of the op family (:mod:`contrastive_kernels.core.contract`):
    ``ops`` maps each op it implements (a spec name) to its :class:`OpPair`."""

    name: str
    ops: dict
    description: str
    devices: tuple                      # device types it takes
    auto_devices: tuple = ()            # device types "auto" may pick it for
    priority: int = 100                 # "auto" tries lower first
    dtypes: tuple = FLOAT_DTYPES
    features: frozenset = frozenset(FEATURES)
    d_range: tuple = (0, None)          # inclusive bounds of the feature size; None: open
    deterministic: bool = True          # bitwise repeatable results
    symmetric_tiles: bool = False       # q is k: each off-diagonal tile computed once
    # None when the backend can run in this process, else why not
    available: Callable[[], Optional[str]] = _always_available
    # further per-call conditions (e.g. a device capability): None or why not
    device_check: Optional[Callable[[torch.device, torch.dtype], Optional[str]]] = None

    def admits_d(self, d) -> bool:
        low, high = self.d_range
        return d >= low and (high is None or d <= high)

    def not_supported_reasons(self, device: torch.device, dtype: torch.dtype, d,
                              opts: CoreOptions, op: str = "lse") -> list:
        """Why this backend cannot run a call of ``op`` with these properties ([] when it
        can). ``d=None`` leaves the feature size out of the question."""
        reason = self.available()
        if reason:
            return [reason]
        reasons = []
        if op not in self.ops:
            reasons.append(f"does not implement op {op} (it has {', '.join(self.ops)})")
        if device.type not in self.devices:
            reasons.append(f"takes {'/'.join(self.devices)} tensors, got {device.type}")
        if dtype not in self.dtypes:
            names = ", ".join(str(t).replace("torch.", "") for t in self.dtypes)
            reasons.append(f"dtype {dtype} is not supported ({names})")
        missing = sorted(opts.features() - self.features)
        if missing:
            reasons.append(f"does not implement {', '.join(missing)}")
        if d is not None and not self.admits_d(d):
            low, high = self.d_range
            reasons.append(f"d = {d} is outside [{low}, {high if high is not None else 'inf'}]")
        if not reasons and self.device_check is not None:
            extra = self.device_check(device, dtype)
            if extra:
                reasons.append(extra)
        return reasons


class BackendError(RuntimeError):
    """No backend (or not the requested one) can run the call; the message says why."""


_loaded: dict = {}


def names() -> tuple:
    return tuple(MODULES)


def _load(name: str):
    """(Backend or None, why not)."""
    if name not in _loaded:
        try:
            module = importlib.import_module(MODULES[name])
            _loaded[name] = (module.BACKEND, None)
        except Exception as exc:  # a missing build is a reason, never an import error
            _loaded[name] = (None, f"module {MODULES[name]} failed to import: {exc}")
    return _loaded[name]


def loaded(name: str) -> Optional[Backend]:
    """The backend called ``name`` if its module imports here, else None."""
    return _load(name)[0]


def get_backend(name: str) -> Backend:
    if name not in MODULES:
        raise ValueError(f"backend={name!r} is not one of {('auto',) + names()}")
    backend, reason = _load(name)
    if backend is None:
        raise BackendError(f"backend {name!r} is unavailable: {reason}")
    return backend


def auto_order() -> tuple:
    """The names "auto" tries, in order (loadable backends with any auto device)."""
    loaded = [(b.priority, name) for name in names()
              for b in [_load(name)[0]] if b is not None and b.auto_devices]
    return tuple(name for _, name in sorted(loaded))


def available_backends() -> dict:
    """Map each backend name to None (usable here) or the reason it is not."""
    out = {}
    for name in names():
        backend, reason = _load(name)
        out[name] = reason if backend is None else backend.available()
    return out


def requested_backend(backend: Optional[str]) -> str:
    if backend is None or backend == "auto":
        backend = env.get(ENV_KEY, "auto")
        if backend != "auto" and backend not in MODULES:
            raise ValueError(f"{ENV_VAR}={backend!r} is not one of {('auto',) + names()}")
    elif backend not in MODULES:
        raise ValueError(f"backend={backend!r} is not one of {('auto',) + names()}")
    return backend


def select(backend: Optional[str], q: torch.Tensor, opts: CoreOptions, op: str = "lse") -> Backend:
    """Pick the backend for one call of ``op``, or raise BackendError listing every reason.

    The choice reads the device, the dtype and the options (a constant of the graph under
    torch.compile; the environment variable is read while tracing, too), then d (a guard
    when d is symbolic); never the number of rows, so a compiled graph holds for every
    batch size.
    """
    candidates = _candidates(backend, op, str(q.device), q.dtype, *dataclasses.astuple(opts))
    d = q.shape[1]
    for name in candidates:
        if _loaded[name][0].admits_d(d):
            return _loaded[name][0]
    reasons = [f"  {name}: {'; '.join(_loaded[name][0].not_supported_reasons(q.device, q.dtype, int(d), opts, op))}"
               for name in candidates]
    raise BackendError("no backend can run this call:\n" + "\n".join(reasons))


@torch.compiler.assume_constant_result
def _candidates(backend, op, device, dtype, *options) -> tuple:
    # plain values in, names out: what torch.compile can treat as a constant
    device = torch.device(device)
    opts = CoreOptions(*options)
    name = requested_backend(backend)
    if name != "auto":
        reasons = get_backend(name).not_supported_reasons(device, dtype, None, opts, op)
        if reasons:
            raise BackendError(f"backend {name!r} cannot run this call: {'; '.join(reasons)}")
        return (name,)
    lines, fits = [], []
    for candidate in auto_order():
        chosen, _ = _load(candidate)
        if device.type not in chosen.auto_devices:
            reasons = [f"not picked automatically for {device.type} tensors"]
        else:
            reasons = chosen.not_supported_reasons(device, dtype, None, opts, op)
        if not reasons:
            fits.append(candidate)
        lines.append(f"  {candidate}: {'; '.join(reasons)}")
    if fits:
        return tuple(fits)
    for name in names():
        if _load(name)[0] is None:
            lines.append(f"  {name}: {_load(name)[1]}")
    raise BackendError("no backend can run this call:\n" + "\n".join(lines))
