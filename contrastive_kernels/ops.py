"""The core ops' public names (``ck.ops.lse``); the contract is
:mod:`contrastive_kernels.core.contract`."""

from .core.autograd import define_core_ops, register_core_ops  # noqa: F401
from .core.contract import (BACKWARD_SCHEMA, FORWARD_SCHEMA, NAMESPACE,  # noqa: F401
                            accumulate_dtype)
from .core.lse import lse  # noqa: F401
