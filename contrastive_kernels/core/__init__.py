"""The core op: its contract (``contract``), its fake + autograd registration
(``autograd``) and its public entry (``lse``)."""

from .contract import (BACKWARD_SCHEMA, FORWARD_SCHEMA, NAMESPACE, CoreOptions, accumulate_dtype,
                       active_labels)
from .lse import lse

__all__ = ["lse", "CoreOptions", "accumulate_dtype", "active_labels", "FORWARD_SCHEMA",
           "BACKWARD_SCHEMA", "NAMESPACE"]
