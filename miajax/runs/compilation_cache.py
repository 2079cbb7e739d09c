"""A persistent XLA compilation cache shared by every miajax process.

A shadow-model run compiles the same programs every time it starts (the
engine's init, epoch order, training step and predict for one configuration
and shape); on a CPU that is seconds per process, most of it JAX's threefry
random bits in the initialiser. JAX can keep compiled executables on disk
(``jax_compilation_cache_dir``); a later process with the same program,
backend and devices loads them instead of compiling. The scripts in
``experiments/`` turn it on first thing; library users call
:func:`use_compilation_cache` themselves, or set JAX's own options.
"""

from __future__ import annotations

import os
import pathlib

import jax

__all__ = ["default_cache_dir", "use_compilation_cache"]

ENV = "MIAJAX_COMPILATION_CACHE"


def default_cache_dir() -> str | None:
  """``$MIAJAX_COMPILATION_CACHE`` if set ("" or "0" turns the cache off), else ``~/.cache/miajax/xla``."""
  value = os.environ.get(ENV)
  if value is not None:
    return None if value.strip() in ("", "0") else value
  return str(pathlib.Path.home() / ".cache" / "miajax" / "xla")


def use_compilation_cache(
  path: str | os.PathLike | None = "default", min_compile_seconds: float = 0.1
) -> str | None:
  """Keeps compiled programs under ``path`` for later processes; returns the directory used.

  Args:
    path: the cache directory; ``"default"`` means :func:`default_cache_dir`;
      ``None`` leaves JAX's settings alone. An explicit
      ``JAX_COMPILATION_CACHE_DIR`` (or a directory set earlier in this
      process) wins.
    min_compile_seconds: programs that compiled faster are not stored (the
      engine's small helpers compile in tens of milliseconds).

  Must run before the first compilation of the process: JAX reads the
  setting once.
  """
  if isinstance(min_compile_seconds, bool) or not (
    isinstance(min_compile_seconds, (int, float)) and min_compile_seconds >= 0
  ):
    raise ValueError(
      f"min_compile_seconds must be a number >= 0, got {min_compile_seconds!r}"
    )
  current = jax.config.jax_compilation_cache_dir
  if current:
    return current
  if isinstance(path, str) and path == "default":
    path = default_cache_dir()
  if path is None:
    return None
  path = pathlib.Path(path).expanduser()
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError:
    return None  # read-only home, etc.: compile as usual
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update(
    "jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds)
  )
  return str(path)
