"""The backends of the core op and the registry that picks one per call."""

from .registry import (Backend, BackendError, auto_order, available_backends, get_backend,
                       names, select)

__all__ = ["Backend", "BackendError", "available_backends", "auto_order", "get_backend",
           "names", "select"]
