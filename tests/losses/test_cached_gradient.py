"""contrastive_kernels.cached_gradient_step: in float64, the parameter gradients of a
chunked step equal the plain step's.

- Without dropout, SupCon with labels equals the plain full-batch step, for a chunk size
  that does not divide the batch. So does CLIP's two towers (open_clip ClipLoss's form).
- With dropout, the step equals the plain step over the same chunks with their random
  states: the second pass replays the first pass's masks. Without the replay the masks
  would differ and so would the gradients, and the test checks that they do.
- A GradScaler's scale reaches the parameters once, and bad arguments raise by name.
"""

import pytest
import torch

import contrastive_kernels as ck
from contrastive_kernels import cached_gradient_step

D_IN, D_OUT, B = 6, 5, 22


def _model(dropout: float):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(D_IN, 16), torch.nn.Tanh(),
                               torch.nn.Dropout(dropout), torch.nn.Linear(16, D_OUT)).double()


def _batch():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(B, 2, D_IN, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 4, (B,), generator=gen)
    return x, labels


def _supcon(feats, labels):
    return ck.SupConLoss(temperature=0.2, normalize=True, backend="torch")(
        feats.view(-1, 2, D_OUT), labels)


def _grads(model):
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    return grads


def _close(a, b):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-11, atol=1e-13)


def test_cached_step_gradients_equal_the_plain_step():
    x, labels = _batch()
    rows = x.reshape(-1, D_IN)  # sample-major: sample i's two views are rows 2i, 2i + 1

    model = _model(0.0)
    plain = _supcon(model(rows), labels)
    plain.backward()
    want = _grads(model)
    loss = cached_gradient_step(model, rows, lambda f: _supcon(f, labels), chunk_size=9)
    torch.testing.assert_close(loss, plain.detach(), rtol=1e-13, atol=0)
    _close(_grads(model), want)

    # dropout: the plain step over the same chunks, each from the state the step saw
    model = _model(0.3)
    torch.manual_seed(7)
    cached_gradient_step(model, rows, lambda f: _supcon(f, labels), chunk_size=9)
    got = _grads(model)
    torch.manual_seed(7)
    _supcon(torch.cat([model(c) for c in rows.split(9)]), labels).backward()
    _close(got, _grads(model))
    torch.manual_seed(8)  # other masks: other gradients (the check above can fail)
    _supcon(torch.cat([model(c) for c in rows.split(9)]), labels).backward()
    assert not torch.allclose(got[0], _grads(model)[0])

    # two towers (CLIP), several inputs split together
    image, text = _model(0.0), torch.nn.Linear(D_IN, D_OUT).double()
    clip = ck.ClipLoss(backend="torch")
    scale = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    img_x, txt_x = x[:, 0], x[:, 1]
    clip(image(img_x), text(txt_x), scale).backward()
    want = _grads(image) + _grads(text) + [scale.grad.clone()]
    scale.grad = None
    cached_gradient_step(lambda a, b: (image(a), text(b)), (img_x, txt_x),
                         lambda i, t: clip(i, t, scale), chunk_size=5)
    _close(_grads(image) + _grads(text) + [scale.grad], want)

    # a GradScaler (enabled on the CPU): the parameters get the scaled gradient once
    model = _model(0.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    cached_gradient_step(model, rows, lambda f: _supcon(f, labels), chunk_size=9,
                         scaler=scaler)
    scaled = _grads(model)
    cached_gradient_step(model, rows, lambda f: _supcon(f, labels), chunk_size=9)
    _close(scaled, [8.0 * g for g in _grads(model)])

    for bad, match in ((dict(chunk_size=0), "chunk_size must be an int >= 1"),
                       (dict(chunk_size=4, inputs=(rows, rows[:3])), r"inputs\[1\] must be")):
        kw = dict(dict(inputs=rows), **bad)
        with pytest.raises(ValueError, match=match):
            cached_gradient_step(model, kw.pop("inputs"), lambda f: f.sum(), **kw)
    with pytest.raises(ValueError, match="loss_fn must return a scalar"):
        cached_gradient_step(model, rows, lambda f: f, chunk_size=8)
