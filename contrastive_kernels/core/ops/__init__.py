"""The op vocabulary of the family, as data: one :class:`~.spec.OpSpec` per op.

Adding an op: a spec module here, one line in :data:`SPECS`, the same row in the C++ table
(``csrc/common/contract.h``), the oracle in ``backends/reference.py`` and one reduction
per backend.
"""

from .lse import LSE
from .pairwise_sigmoid import PAIRWISE_SIGMOID
from .spec import (GRADIENTS, NEEDS, PAIR_NAMES, PAIR_PREFIX, WITH_BIAS_GRADIENT, OpSpec, Output,
                   accumulate_dtype)
from .two_sided_lse import TWO_SIDED_LSE

SPECS = {spec.name: spec for spec in (LSE, TWO_SIDED_LSE, PAIRWISE_SIGMOID)}

__all__ = ["LSE", "TWO_SIDED_LSE", "PAIRWISE_SIGMOID", "SPECS", "OpSpec", "Output", "PAIR_PREFIX", "PAIR_NAMES",
           "GRADIENTS", "NEEDS", "WITH_BIAS_GRADIENT", "accumulate_dtype"]
