"""What tests and benchmarks share: the oracle losses (``reference_losses``), the
parameter tables (``core_cases``, ``loss_cases``, ``supcon_cases``), the oracle check of a
core-op backend (``core_check``) and the tolerance rule (``tolerance``)."""


def emulated_backends() -> list:
    """Backends whose GPU kernels can run on CPU tensors through an emulation this build
    holds (``cuda`` under CONTRASTIVE_KERNELS_CUDA_EMULATE=1, which tests/conftest.py sets
    for cases parametrized with backend="cuda")."""
    from .. import _extension

    return ["cuda"] if _extension.emulated_ops is not None else []


def fused_backends(device: str = "cpu") -> list:
    """Registry backends other than the oracle that can run fp32 calls on ``device`` here,
    in "auto" order (the Triton backend counts on CPU when it runs interpreted)."""
    import torch

    from ..backends import registry
    from ..core.contract import CoreOptions

    out = []
    for name in registry.names():
        backend = registry.loaded(name)
        if backend is None or name == "reference":
            continue
        if not backend.not_supported_reasons(torch.device(device), torch.float32, 8,
                                             CoreOptions()):
            out.append(name)
    order = {name: backend_rank for backend_rank, name in enumerate(registry.auto_order())}
    return sorted(out, key=lambda n: order.get(n, len(order)))
