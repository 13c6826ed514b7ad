"""The contract every op of the family shares, stated once: what every backend implements.

For queries q [N, d], keys k [M, d] (docs/design.md section 1), every op reduces

    s_ij  = scale * <q^_i, k^_j> + bias_j      q^ = q / max(||q||, eps) when normalize

over the pairs outside an excluded set: (i, i + self_offset) and, with exclude_positives,
the pairs whose labels are equal. What each op computes from them is its spec
(:mod:`.ops`: ``lse``, ``two_sided_lse``). Every backend that owns kernels provides, per op
it implements, the pair of torch.library ops ``<op>_<kernel_set>`` and
``<op>_<kernel_set>_backward`` with the schemas the spec derives (the C++ copy,
``csrc/common/contract.h``, is checked against them per op by a test), and:

- ``scale`` is a 0-dim tensor in the accumulation dtype (:func:`accumulate_dtype`); the
  outputs come back in that dtype, dq / dk in the inputs' dtype, dscale in the scale's dtype.
- An output whose option is off (lse's o without ``return_o``) is an empty tensor of shape
  [0]; when a ``need_*`` flag is False the matching gradient is an empty tensor ([0] for
  dq / dk, a 0-dim zero for dscale).
- Labels matter only under the op's label option (:func:`active_labels`).
- ``bias``, labels and the non-differentiable outputs carry no gradient.

Input validation (:func:`validate`) happens once, when the public entry builds the call's
problem (:class:`.problem.PairProblem`), before any backend sees the call.
"""

from __future__ import annotations

import dataclasses

import torch

from .ops import LSE, accumulate_dtype  # noqa: F401  (the contract's dtype rule)

NAMESPACE = "contrastive_kernels"

# The lse op's schemas, derived from its spec (core/ops/lse.py).
FORWARD_SCHEMA = LSE.forward_schema()
BACKWARD_SCHEMA = LSE.backward_schema()


def op_names(kernel_set: str):
    """(forward, backward) op names of lse in a kernel set, e.g. ``lse_native``."""
    return LSE.op_names(kernel_set)


def active_labels(q_labels, k_labels, exclude_positives: bool):
    """The labels a kernel must compare: both, only under exclude_positives."""
    if exclude_positives and q_labels is not None and k_labels is not None:
        return q_labels, k_labels
    return None, None


@dataclasses.dataclass(frozen=True)
class CoreOptions:
    """What a call asks for, as backends see it when deciding whether to take it."""

    normalize: bool = False
    has_bias: bool = False
    has_labels: bool = False
    has_self: bool = False
    return_o: bool = False

    def features(self) -> frozenset:
        """The optional features this call uses (names of :data:`FEATURES`)."""
        flags = {"normalize": self.normalize, "bias": self.has_bias, "labels": self.has_labels,
                 "self_offset": self.has_self, "return_o": self.return_o}
        return frozenset(name for name, on in flags.items() if on)


FEATURES = ("normalize", "bias", "labels", "self_offset", "return_o")


def check_rows_tensor(name: str, x) -> None:
    """x is a 2-D [rows, d] floating-point tensor (the shape of q, k and of every loss's
    feature matrices)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D [rows, d], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point (fp16/bf16/fp32/fp64), got {x.dtype}")


def validate(q, k, bias, q_labels, k_labels, self_offset, exclude_positives, eps,
             bias_differentiable=False) -> None:
    """Raise TypeError / ValueError naming the bad argument and what was expected
    (``bias_differentiable``: whether the op returns a gradient for the bias)."""
    check_rows_tensor("q", q)
    check_rows_tensor("k", k)
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"q and k must have the same feature size d, got q {tuple(q.shape)} "
                         f"and k {tuple(k.shape)}")
    if q.dtype != k.dtype:
        raise TypeError(f"q and k must share a dtype, got q {q.dtype} and k {k.dtype}")
    if q.device != k.device:
        raise ValueError(f"q and k must be on one device, got q on {q.device}, k on {k.device}")
    for name, t in (("bias", bias), ("q_labels", q_labels), ("k_labels", k_labels)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
    if bias is not None:
        if bias.shape != (k.shape[0],):
            raise ValueError(f"bias must have shape [M] = [{k.shape[0]}], got {tuple(bias.shape)}")
        if bias.device != k.device:
            raise ValueError(f"bias must be on {k.device}, got {bias.device}")
        if bias.requires_grad and torch.is_grad_enabled() and not bias_differentiable:
            raise ValueError("bias carries no gradient in the core op; pass bias.detach()")
    for name, t, rows in (("q_labels", q_labels, q.shape[0]), ("k_labels", k_labels, k.shape[0])):
        if t is not None:
            if t.shape != (rows,):
                raise ValueError(f"{name} must have shape [{rows}], got {tuple(t.shape)}")
            if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
                raise TypeError(f"{name} must be an integer tensor, got {t.dtype}")
            if t.device != q.device:
                raise ValueError(f"{name} must be on {q.device}, got {t.device}")
    if exclude_positives and (q_labels is None or k_labels is None):
        raise ValueError("exclude_positives=True needs both q_labels and k_labels")
    if self_offset is not None:
        if not isinstance(self_offset, int) or isinstance(self_offset, bool):
            raise TypeError(f"self_offset must be an int or None, got {type(self_offset).__name__}")
        if not -2 ** 63 <= self_offset < 2 ** 63:
            raise ValueError(f"self_offset must fit in int64, got {self_offset}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")


def check_real_scalar(name: str, value, device=None) -> None:
    """value is a real number or a one-element real tensor (on ``device`` when given)."""
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise TypeError(f"{name} must be real (a float or a real 0-dim tensor), got {value.dtype}")
        if value.numel() != 1:
            raise ValueError(f"{name} must be a float or a 0-dim tensor, got shape {tuple(value.shape)}")
        if device is not None and value.device != device:
            raise ValueError(f"{name} must be on {device}, got {value.device}")
        return
    if isinstance(value, complex):
        raise TypeError(f"{name} must be real (a float or a real 0-dim tensor), got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float or a 0-dim tensor, got {type(value).__name__}")


def scale_tensor(scale, q: torch.Tensor) -> torch.Tensor:
    """``scale`` as the 0-dim accumulation-dtype tensor of the contract (keeps its grad)."""
    acc = accumulate_dtype(q.dtype)
    check_real_scalar("scale", scale, q.device)
    if isinstance(scale, torch.Tensor):
        return scale.reshape(()).to(acc)
    # torch.full, not torch.tensor: a fill kernel, no host-to-device copy that syncs.
    return torch.full((), float(scale), dtype=acc, device=q.device)


# Integer dtypes whose every value fits in int32: labels of these compare as int32.
_INT32_SAFE = (torch.int8, torch.uint8, torch.int16, torch.int32) + tuple(
    getattr(torch, name) for name in ("uint16",) if hasattr(torch, name))


def canonical_labels(q_labels: torch.Tensor, k_labels: torch.Tensor):
    """Both label vectors as contiguous int32 equality codes: the one rule every backend
    receives (a kernel compares raw 32-bit integers; a 64-bit compare costs two
    instructions per logit on a GPU). Decided by dtype, never by reading values (no host
    sync): dtypes that fit int32 are cast (in the common dtype an int8 -1 and a uint8 255
    no longer alias); wider ones are replaced by the value's position in the sorted
    concatenation of both vectors (sort + searchsorted on the device, O((N + M) log(N + M))),
    which preserves equality."""
    if q_labels.dtype in _INT32_SAFE and k_labels.dtype in _INT32_SAFE:
        return q_labels.to(torch.int32).contiguous(), k_labels.to(torch.int32).contiguous()
    ql, kl = q_labels.to(torch.int64), k_labels.to(torch.int64)
    ordered = torch.sort(torch.cat([ql, kl])).values
    return (torch.searchsorted(ordered, ql, out_int32=True).contiguous(),
            torch.searchsorted(ordered, kl, out_int32=True).contiguous())
