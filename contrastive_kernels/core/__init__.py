"""The contract of the op family, stated once: the op specs (``ops``), the shared rules
(``contract``), the call's problem object (``problem``), fake + autograd registration
derived from the specs (``autograd``), gradients in their inputs' layout (``layout``) and
the torch.func path (``transforms``). The dispatching entries sit above the backends, in
:mod:`contrastive_kernels.ops`."""

from .contract import (BACKWARD_SCHEMA, FORWARD_SCHEMA, NAMESPACE, CoreOptions, accumulate_dtype,
                       active_labels)
from .ops import SPECS, OpSpec
from .problem import PairProblem

__all__ = ["CoreOptions", "accumulate_dtype", "active_labels", "FORWARD_SCHEMA",
           "BACKWARD_SCHEMA", "NAMESPACE", "SPECS", "OpSpec", "PairProblem"]
