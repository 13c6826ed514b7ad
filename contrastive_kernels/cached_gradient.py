"""Cached-gradient training: a contrastive batch larger than the encoders' activations allow.

The loss is O(N d), but the encoders' activations for N inputs are not. The step is
GradCache's (Gao et al., 2021), and it is exact:

1. Encode the batch chunk by chunk without a graph, and keep only the embeddings [N, d].
2. Compute the loss once over the whole batch of embeddings. The fused loss needs no N x N
   memory, so labels, masks, banks and the other rows all stay as in the plain step.
   Backpropagate it: G = dL/dE, and the loss's own parameters (a learned logit scale) get
   their gradient as in the plain step.
3. Encode each chunk again, now with a graph, and backpropagate its rows of G into the
   parameters. Only one chunk's activations are alive at a time.

Parameter gradients equal the plain step's (the chain rule, split by rows). The step
replays each chunk's random state on the second pass (CPU and the CUDA devices of its
inputs), so dropout draws the same masks twice. Under ``torch.autocast`` both passes run in
the caller's autocast. With a ``GradScaler``, the loss is scaled once and the scaled G
flows into every chunk. With DDP, every chunk but the last runs under ``no_sync()``: the
gradients are reduced once, after the last chunk. Calling backward once per chunk inside
a DDP model without ``no_sync`` reduces every time, and uneven chunk counts across ranks
then hang (sentence-transformers 4027).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional, Sequence, Union

import torch

Tensors = Union[torch.Tensor, Sequence[torch.Tensor]]


class _RandomState:
    """The CPU generator's state and those of the CUDA devices ``tensors`` live on, to run
    a chunk's forward twice with the same random draws."""

    def __init__(self, tensors):
        self.devices = sorted({t.device.index or 0 for t in tensors if t.is_cuda})
        self.cpu = torch.get_rng_state()
        self.cuda = [torch.cuda.get_rng_state(d) for d in self.devices]

    @contextlib.contextmanager
    def replayed(self):
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu)
            for device, state in zip(self.devices, self.cuda):
                torch.cuda.set_rng_state(state, device)
            yield


def _as_tuple(x) -> tuple:
    return (x,) if isinstance(x, torch.Tensor) else tuple(x)


def _chunks(inputs: tuple, chunk_size: int):
    n = inputs[0].shape[0]
    for name, x in enumerate(inputs):
        if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[0] != n:
            raise ValueError(f"inputs[{name}] must be a tensor with the batch's {n} rows on "
                             f"dim 0, got {getattr(x, 'shape', type(x).__name__)}")
    return [tuple(x[start:start + chunk_size] for x in inputs)
            for start in range(0, n, chunk_size)]


def cached_gradient_step(encode: Callable[..., Tensors], inputs: Tensors,
                         loss_fn: Callable[..., torch.Tensor], chunk_size: int, *,
                         scaler=None, no_sync: Optional[Callable[[], object]] = None
                         ) -> torch.Tensor:
    """One training step's backward, chunked (module docstring). Returns the loss, detached.

    ``encode(*chunk)`` maps a chunk of ``inputs`` (a tensor, or several tensors split
    together along dim 0) to its embeddings: one tensor [rows, d], or a tuple of them (one
    per tower, e.g. CLIP's image and text). ``loss_fn(*embeddings)`` takes the whole batch's
    embeddings in the same structure and returns the scalar loss. Labels and masks are
    whatever it closes over. ``chunk_size``: rows per chunk; the last chunk may be shorter.
    ``scaler``: a ``torch.amp.GradScaler`` (the loss is scaled, the step is the caller's).
    ``no_sync``: the DDP model's ``no_sync`` (every chunk but the last runs under it).
    The parameter gradients are accumulated into ``.grad`` as ``loss.backward()`` would;
    the optimizer step and ``zero_grad`` remain the caller's.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    chunks = _chunks(_as_tuple(inputs), chunk_size)

    # 1. embeddings without a graph, each chunk's random state kept for its replay
    states, parts = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(_RandomState(chunk))
            parts.append(_as_tuple(encode(*chunk)))
    towers = len(parts[0])
    if any(len(p) != towers for p in parts):
        raise ValueError("encode must return the same number of tensors for every chunk")
    embeddings = [torch.cat([p[t] for p in parts]).detach().requires_grad_() for t in
                  range(towers)]
    del parts

    # 2. the loss over the whole batch, backpropagated to the embeddings only
    loss = loss_fn(*embeddings)
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise ValueError(f"loss_fn must return a scalar tensor, got "
                         f"{getattr(loss, 'shape', type(loss).__name__)}")
    # a plain backward: the loss's own parameters (a learned temperature or logit scale)
    # get their gradient here, the embeddings (leaves) theirs in .grad
    (scaler.scale(loss) if scaler is not None else loss).backward()
    cached = [e.grad if e.grad is not None else torch.zeros_like(e) for e in embeddings]
    del embeddings

    # 3. each chunk again with a graph, its rows of the cached gradient into the parameters
    start = 0
    for i, (chunk, state) in enumerate(zip(chunks, states)):
        rows = chunk[0].shape[0]
        last = i == len(chunks) - 1
        sync = contextlib.nullcontext() if (no_sync is None or last) else no_sync()
        with sync, state.replayed():
            outs = _as_tuple(encode(*chunk))
            grads = [g[start:start + rows].to(o.dtype) for g, o in zip(cached, outs)]
            torch.autograd.backward(outs, grads)
        start += rows
    return loss.detach()


__all__ = ["cached_gradient_step"]
