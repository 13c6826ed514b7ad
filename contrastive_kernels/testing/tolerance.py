"""Tolerances relative to the naive computation's own error in the same dtype.

A fused result passes when its distance to the float64 oracle is at most twice the
distance of the naive PyTorch formulation run in that dtype (apple/ml-cross-entropy's
criterion), with two floors so that a naive error of exactly zero (tiny shapes, a lucky
rounding) does not demand bit equality: a few accumulation-precision ulps of the values'
magnitude, and the rounding of the output itself (``output_ulps`` ulps of its dtype at
that magnitude: a gradient returned in fp16 cannot be closer than its last bit).

fp32 under tf32 (torch's matmul precision "high" / "medium") is the one exception: the
naive formulation on the CPU ignores the precision setting, so its error is not the bar.
There the operands are rounded to 10 mantissa bits and the logits are off by about
scale * 2^-11 * |q| |k|: the bar is ``2^-10 * scale * magnitude``.

:func:`compare` returns the verdict as data (the GPU check reports it);
:func:`assert_close` raises on it (the tests).
"""

from __future__ import annotations

import dataclasses
import math

import torch

ACC_EPS = {torch.float64: 2.0 ** -52, torch.float32: 2.0 ** -23, torch.float16: 2.0 ** -23,
           torch.bfloat16: 2.0 ** -23}
FLOOR_ULPS = 64
TF32_REL = 2.0 ** -10


def max_err(x: torch.Tensor, oracle: torch.Tensor) -> float:
    x, oracle = x.double(), oracle.double()
    both_inf = torch.isinf(x) & torch.isinf(oracle) & (torch.sign(x) == torch.sign(oracle))
    diff = torch.where(both_inf, torch.zeros_like(x), (x - oracle).abs())
    return float(diff.max()) if diff.numel() else 0.0


def magnitude(oracle: torch.Tensor) -> float:
    """The largest finite |value| of the oracle (1 when it has none)."""
    finite = oracle[torch.isfinite(oracle)].double()
    return float(finite.abs().max()) if finite.numel() else 1.0


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One output against the oracle: its error, the bar and what set the bar."""

    err: float
    tol: float
    naive_err: float
    floor: float
    nan: bool
    shape_ok: bool = True

    @property
    def ok(self) -> bool:
        return self.shape_ok and not self.nan and self.err <= self.tol

    def as_dict(self) -> dict:
        return dict(dataclasses.asdict(self), ok=self.ok)


def compare(ours: torch.Tensor, oracle: torch.Tensor, naive: torch.Tensor | None,
            dtype: torch.dtype, *, tf32_scale: float | None = None,
            output_ulps: float = 1.0) -> Verdict:
    """The verdict of ``ours`` against the float64 ``oracle``.

    ``naive``: the naive formulation's result in ``dtype`` (its error sets the bar);
    ``tf32_scale``: the logit scale when fp32 ran under tf32 (the bar is the tf32 one);
    ``output_ulps``: how many ulps of the output's own dtype its rounding may cost.
    """
    if ours.shape != oracle.shape:
        return Verdict(float("inf"), 0.0, float("nan"), 0.0, False, shape_ok=False)
    mag = magnitude(oracle)
    rounding = (output_ulps * torch.finfo(ours.dtype).eps * mag
                if ours.is_floating_point() else 0.0)
    floor = max(FLOOR_ULPS * ACC_EPS[dtype] * max(1.0, mag), rounding)
    naive_err = max_err(naive, oracle) if naive is not None else 0.0
    if math.isnan(naive_err):  # a naive result that is NaN sets no bar: the floors apply
        naive_err = 0.0
    tol = max(2.0 * naive_err, floor)
    if tf32_scale is not None:
        tol = max(tol, TF32_REL * abs(tf32_scale) * max(1.0, mag))
    return Verdict(max_err(ours, oracle), tol, naive_err, floor, bool(torch.isnan(ours).any()))


def assert_close(name: str, ours: torch.Tensor, oracle: torch.Tensor, naive: torch.Tensor,
                 dtype: torch.dtype, *, tf32_scale: float | None = None,
                 output_ulps: float = 1.0) -> None:
    """Raise unless :func:`compare` passes ``ours`` (same arguments)."""
    assert ours.shape == oracle.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(oracle.shape)}"
    v = compare(ours, oracle, naive, dtype, tf32_scale=tf32_scale, output_ulps=output_ulps)
    assert not v.nan, f"{name}: NaN in result"
    assert v.ok, (f"{name} ({dtype}): max error {v.err:.3e} > tolerance {v.tol:.3e} "
                  f"(naive {dtype} error {v.naive_err:.3e}, floor {v.floor:.3e})")
