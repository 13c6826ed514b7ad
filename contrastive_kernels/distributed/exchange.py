"""Point-to-point exchanges with gradient, for the losses that pass key blocks between
ranks instead of gathering them (SigLIP's ``dist_impl`` ``shift`` / ``bidir`` / ``reduce``).

Each exchange is an autograd function whose backward runs the mirror exchange: a block
received from the left returns its gradient to the left, so the owner of a block ends up
with the sum of the gradients every rank computed for it (what DDP then averages), with
per-rank memory O(one block) instead of the gathered batch. Every rank must call every
exchange in the same order with blocks of one shape (the losses check the row counts once
per call first: a mismatch raises instead of hanging inside the backend).
"""

from __future__ import annotations

import torch


def _p2p(sends, recvs) -> None:
    """Post every send / receive of one step together and wait for them (NCCL pairs
    them by posting order, so every rank posts the same sequence)."""
    import torch.distributed as dist

    ops = [dist.P2POp(dist.isend, t, peer) for t, peer in sends]
    ops += [dist.P2POp(dist.irecv, t, peer) for t, peer in recvs]
    for req in dist.batch_isend_irecv(ops):
        req.wait()


def _exchange(to_left, to_right, left: int, right: int):
    """(from_right, from_left): ``to_left`` goes to rank ``left`` and ``to_right`` to rank
    ``right`` (either may be None: not sent, nothing received from that side)."""
    from_right = None if to_left is None else torch.empty_like(to_left)
    from_left = None if to_right is None else torch.empty_like(to_right)
    sends, recvs = [], []
    if to_left is not None:
        sends.append((to_left.contiguous(), left))
        recvs.append((from_right, right))
    if to_right is not None:
        sends.append((to_right.contiguous(), right))
        recvs.append((from_left, left))
    _p2p(sends, recvs)
    return from_right, from_left


class _Shift(torch.autograd.Function):
    """The block from the left neighbour (ours goes right); backward: the reverse."""

    @staticmethod
    def forward(ctx, x, left, right):
        ctx.peers = (left, right)
        return _exchange(None, x, left, right)[1]

    @staticmethod
    def backward(ctx, grad):
        left, right = ctx.peers
        # the gradient of what came from the left goes back left; ours comes from the right
        return _exchange(grad.contiguous(), None, left, right)[0], None, None


class _Bidir(torch.autograd.Function):
    """(from_right, from_left) of one bidirectional step; backward: the reverse step."""

    @staticmethod
    def forward(ctx, to_left, to_right, left, right):
        ctx.peers = (left, right)
        return _exchange(to_left, to_right, left, right)

    @staticmethod
    def backward(ctx, grad_from_right, grad_from_left):
        left, right = ctx.peers
        # what came from the right returns right, what came from the left returns left
        grad_to_right, grad_to_left = _exchange(grad_from_left.contiguous(),
                                                grad_from_right.contiguous(), left, right)
        return grad_to_left, grad_to_right, None, None


def shift(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """The left neighbour's block (``x`` goes to the right), with gradient."""
    if not x.requires_grad:
        return _exchange(None, x, left, right)[1]
    return _Shift.apply(x, left, right)


def bidir(to_left: torch.Tensor, to_right: torch.Tensor, left: int, right: int):
    """(from_right, from_left) of one bidirectional step, with gradient."""
    if not (to_left.requires_grad or to_right.requires_grad):
        return _exchange(to_left, to_right, left, right)
    return _Bidir.apply(to_left, to_right, left, right)


class _Broadcast(torch.autograd.Function):
    """Rank ``src``'s block on every rank; backward: the sum of every rank's gradient of
    it, to ``src`` (zero elsewhere: the others' inputs were not used)."""

    @staticmethod
    def forward(ctx, x, src):
        import torch.distributed as dist

        ctx.src = src
        out = x.detach().clone().contiguous()
        dist.broadcast(out, src)
        return out

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.reduce(grad, ctx.src, op=dist.ReduceOp.SUM)
        if dist.get_rank() != ctx.src:
            grad = torch.zeros_like(grad)
        return grad, None


def broadcast(x: torch.Tensor, src: int) -> torch.Tensor:
    """Rank ``src``'s ``x`` on every rank (every rank passes a tensor of that shape), with
    gradient back to ``src``."""
    if not x.requires_grad:
        import torch.distributed as dist

        out = x.detach().clone().contiguous()
        dist.broadcast(out, src)
        return out
    return _Broadcast.apply(x, src)
