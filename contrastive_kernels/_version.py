"""The package version: the one place it is written (setup.py and pyproject.toml read it).

A build names its torch and CUDA in a local version label (``0.1.0+cu130torch2.14``,
setup.py). Where this source is the one installed, ``__version__`` is the installed
distribution's version, label included, so that it reads as ``pip`` reports it.
"""

__version__ = "0.1.0"


def _installed(base: str) -> str:
    """The installed distribution's version when it is this release (its base before any
    local label equals ``base``), else ``base`` (a source tree that is not installed)."""
    try:
        from importlib import metadata

        installed = metadata.version("contrastive_kernels")
    except Exception:  # noqa: BLE001 - not installed, or metadata unreadable
        return base
    return installed if installed.split("+")[0] == base else base


__version__ = _installed(__version__)
