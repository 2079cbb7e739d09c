"""PEP 562 lazy packages: a public name imports its module the first time it is used.

Keeps ``import miajax.metrics`` (or ``miajax.runs.io``) from loading Flax,
optax or the engine through a package ``__init__``.
"""

from __future__ import annotations

import importlib

__all__ = ["attach"]


def attach(package: str, submodules, exports: dict, removed: dict = None):
  """``(__getattr__, __dir__, __all__)`` for ``package``.

  ``submodules``: names imported as ``package.<name>``; ``exports``: public
  name -> the submodule (relative to ``package``) that defines it;
  ``removed``: old names -> where they live now (said in the error).
  """
  removed = removed or {}
  names = sorted(set(submodules) | set(exports))

  def __getattr__(name):
    if name in submodules:
      return importlib.import_module(f"{package}.{name}")
    if name in exports:
      module = importlib.import_module(f"{package}.{exports[name]}")
      value = getattr(module, name)
      # Later lookups skip __getattr__.
      setattr(importlib.import_module(package), name, value)
      return value
    if name in removed:
      raise AttributeError(
        f"module {package!r} has no attribute {name!r}: it is "
        f"{removed[name]} now"
      )
    raise AttributeError(f"module {package!r} has no attribute {name!r}")

  def __dir__():
    return names

  return __getattr__, __dir__, names
