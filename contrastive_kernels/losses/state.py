"""Module state that survives ``state_dict()`` / ``load_state_dict()``.

Buffers that start empty (a class prior not yet computed, a memory bank not yet drawn)
take the saved shape on load, so a reloaded module gives the same next loss. Buffers made
under ``torch.inference_mode`` are inference tensors that a later training step could not
update in place: they are copied out of inference mode before use.

Module casts (``.half()``, ``.double()``, ``.to(dtype)``) follow the published modules:
a buffer there follows them (lightly's memory bank), a plain tensor attribute does not
(PaCo's class prior, ``torch.Tensor(cls_num_list) / sum``): buffers named in
``_keeps_dtype`` move with the module's device but keep their dtype.
"""

from __future__ import annotations

import torch
from torch import nn


class ResizableBuffers(nn.Module):
    """An nn.Module whose buffers named in ``_resizable`` accept any saved shape."""

    _resizable: tuple = ()
    _keeps_dtype: tuple = ()

    def _apply(self, fn, recurse=True):
        kept = {name: self._buffers[name] for name in self._keeps_dtype
                if self._buffers.get(name) is not None}
        for name in kept:
            self._buffers[name] = None  # skipped by nn.Module._apply
        try:
            out = super()._apply(fn, recurse)
        finally:
            for name, buf in kept.items():
                # where fn sends a tensor (a device move), without its dtype cast
                target = fn(torch.empty(0, dtype=buf.dtype, device=buf.device)).device
                self._buffers[name] = buf.to(target)
        return out

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in self._resizable:
            saved = state_dict.get(prefix + name)
            current = getattr(self, name)
            if saved is not None and current is not None and saved.shape != current.shape:
                setattr(self, name, torch.empty_like(saved, device=current.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _usable_outside_inference(self):
        """Replace inference-tensor buffers by ordinary copies (outside inference mode)."""
        if torch.is_inference_mode_enabled():
            return
        for name in self._resizable:
            buf = getattr(self, name)
            if buf is not None and buf.is_inference():
                setattr(self, name, buf.clone())
