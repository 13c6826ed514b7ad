"""``python -m contrastive_kernels.info``: what was built, and which backends run here.

Prints the package and torch versions, what the compiled extension was built with
(torch/CUDA versions, CUDA arches, OpenMP, flags), the devices visible now, and each
backend with the reason it cannot run in this process, if any.
"""

from __future__ import annotations

import platform
import sys

import torch

from . import __version__, _extension, env
from .backends import registry


def report() -> str:
    lines = [f"contrastive_kernels {__version__}",
             f"python {platform.python_version()} on {platform.machine()}, torch {torch.__version__} "
             f"(CUDA {torch.version.cuda})"]
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        lines.append(f"CUDA devices: {names}")
    else:
        lines.append("CUDA devices: none")
    info = _extension.build_info()
    if info:
        lines.append("compiled extension _C:")
        for key in ("torch_version", "torch_cuda", "with_cuda", "cuda_arches", "no_cuda_reason",
                    "openmp", "compiler", "cxx_flags", "cpu_kernel"):
            if key in info and info[key] not in ("", None):
                lines.append(f"  {key}: {info[key]}")
    else:
        lines.append(f"compiled extension _C: not loaded ({_extension.LOAD_ERROR})")
    lines.append(f"backends (auto tries {', '.join(registry.auto_order())}; "
                 f"override with {registry.ENV_VAR}):")
    for name, reason in registry.available_backends().items():
        lines.append(f"  {name:<10} {'usable' if reason is None else 'unavailable: ' + reason}")
    lines.append("environment variables:")
    for key, what in env.VARIABLES.items():
        value = env.get(key)
        lines.append(f"  {env.name(key)}{'=' + value if value else ''}: {what}")
    return "\n".join(lines)


def main() -> int:
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
