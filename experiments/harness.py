"""What every experiment script does first and last: its prologue and its report tail.

Defines no flags: a script that uses ``--output_dir`` defines it itself.
"""

from __future__ import annotations

import os
import pathlib

from absl import app, flags

import miajax
from miajax import report

FLAGS = flags.FLAGS


def no_arguments(argv) -> None:
  """Refuses positional arguments: every input of a script is a flag."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")


def require_output_dir() -> None:
  if not FLAGS.output_dir:
    raise app.UsageError("--output_dir is required")


def start(argv, *, output_dir: bool = True) -> None:
  """The scripts' prologue: no positional arguments, the CPU set up, ``--output_dir`` given.

  The CPU is split into one device per core and the persistent compilation
  cache turned on before any JAX computation: the first sets how the engine
  lays out its models, the second lets a later run of the same recipe load its
  compiled programs instead of compiling them.  ``output_dir=False`` for a
  mode that writes nothing (benchmark.py's memory child).
  """
  no_arguments(argv)
  miajax.use_all_cores()
  miajax.use_compilation_cache()
  if output_dir:
    require_output_dir()


def make_output_dir() -> pathlib.Path:
  """Creates ``--output_dir`` or raises a usage error saying why it cannot be used."""
  out = pathlib.Path(FLAGS.output_dir)
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise app.UsageError(
      f"--output_dir {str(out)!r} cannot be created: {e}"
    ) from None
  if not os.access(out, os.W_OK):
    raise app.UsageError(f"--output_dir {str(out)!r} is not writable")
  return out


def write_report(out, rep: dict) -> pathlib.Path:
  """``<out>/report.json``, replaced atomically: a killed run leaves the old report or the new one."""
  path = pathlib.Path(out) / "report.json"
  report.write_json_atomic(path, rep)
  return path


def listing(paths) -> str:
  """``a``, ``a and b``, ``a, b and c``."""
  names = [str(p) for p in paths]
  if len(names) < 2:
    return "".join(names)
  return ", ".join(names[:-1]) + " and " + names[-1]


def finish(out, rep: dict, text: str, *, wall_s: float, also=()) -> None:
  """The report tail: writes report.json, prints ``text``, then the wall time and what was written.

  ``also``: the other files the script wrote, named after report.json.
  """
  path = write_report(out, rep)
  print(text)
  print(f"\nwall time {wall_s:.1f} s; wrote {listing([path, *also])}")
