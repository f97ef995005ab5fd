"""modelimage: pack model weights into deterministic, size-bounded OCI images.

The Python API is seven functions, the commands of the same names::

    import modelimage

    info = modelimage.inspect("./llama")                  # ModelInfo: parameters, dtypes, vram_bytes...
    planned = modelimage.plan("./llama", max_layer_size=2 * 10**9)
    built = modelimage.build("./llama", "oci:out/llama:v1")
    print(built.digest)                                   # sha256:...
    modelimage.push("oci:out/llama:v1", "registry.example.com/llama:v1")
    modelimage.pull("registry.example.com/llama:v1", "/srv/models/llama")
    assert modelimage.verify("registry.example.com/llama:v1", "/srv/models/llama").ok
    modelimage.estimate("registry.example.com/llama:v1").first.total_seconds

Their arguments, results (shapes and units: bytes, seconds, bytes/s) and
errors (one :class:`~modelimage.errors.ModelImageError` hierarchy) are
documented in :mod:`modelimage.api`, where they live. ``import modelimage``
imports nothing else: each function loads what it needs when called.

Five of the names are also modules of this package (``modelimage.inspect``,
``.plan``, ``.build``, ``.estimate``, ``.pull``). Importing one of them, as
the package itself does, binds its name here to the module, so those modules
are made callable: ``modelimage.build(...)`` calls :func:`modelimage.api.build`
whether or not the module ``modelimage.build`` was imported, and
``modelimage.build.build_image`` still names the module's function.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "build", "estimate", "inspect", "plan", "pull", "push", "verify"]

_API = ("build", "estimate", "inspect", "plan", "pull", "push", "verify")
_MODULES = ("build", "estimate", "inspect", "plan", "pull")  # the API names that are modules too

if TYPE_CHECKING:
    from .api import build, estimate, inspect, plan, pull, push, verify  # noqa: F401


def _function(name: str) -> Any:
    return getattr(importlib.import_module("modelimage.api"), name)


class _CallableModule(types.ModuleType):
    """A module of this package whose name is also an API function: calling it calls the function."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _function(self.__name__.rpartition(".")[2])(*args, **kwargs)

    @property
    def __signature__(self) -> Any:
        import inspect

        return inspect.signature(_function(self.__name__.rpartition(".")[2]))


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # the import system binds a submodule here once it is imported
        if name in _MODULES and type(value) is types.ModuleType:
            value.__class__ = _CallableModule
        super().__setattr__(name, value)


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(f"modelimage.{name}")  # binds it here, callable
    if name in _API:
        return _function(name)
    raise AttributeError(f"module 'modelimage' has no attribute {name!r}")


sys.modules[__name__].__class__ = _Package
