"""Shared parameter table for SupCon tests: shapes x positives x modes x normalization."""

import dataclasses
import itertools

import torch

# (bsz, n_views, d): bsz 1, 3, 97; d 1, 3, 130; a single view (rows without positives).
LAYOUTS = [(1, 2, 3), (3, 3, 1), (3, 1, 130), (97, 2, 130), (97, 2, 3), (97, 1, 3)]
POSITIVES = ["labels", "mask", "none"]
MODES = ["all", "one"]


@dataclasses.dataclass(frozen=True)
class SupConCase:
    bsz: int
    n_views: int
    d: int
    positives: str
    contrast_mode: str
    normalize: bool
    temperature: float = 0.1
    base_temperature: float = 0.07  # != temperature: the T / base_T scaling is exercised

    @property
    def id(self):
        return (f"{self.bsz}x{self.n_views}x{self.d}-{self.positives}-{self.contrast_mode}"
                f"{'-norm' if self.normalize else ''}")

    def inputs(self, dtype, seed=0):
        """features (in dtype) and the labels / mask keyword arguments."""
        gen = torch.Generator().manual_seed(seed)
        feats = torch.randn(self.bsz, self.n_views, self.d, generator=gen, dtype=torch.float64)
        if not self.normalize:  # the original expects L2-normalized rows
            feats = feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        kw = {}
        if self.positives == "labels":
            labels = torch.randint(0, max(1, self.bsz // 3), (self.bsz,), generator=gen)
            labels[0] = 10_000  # a class of its own: no positive when n_views == 1
            kw["labels"] = labels
        elif self.positives == "mask":
            mask = (torch.rand(self.bsz, self.bsz, generator=gen) < 0.3).double()
            mask[0] = 0.0  # an anchor without positives
            kw["mask"] = mask
        return feats.to(dtype), kw


CASES = [SupConCase(b, v, d, p, m, n)
         for (b, v, d), p, m, n in itertools.product(LAYOUTS, POSITIVES, MODES, (False, True))]
