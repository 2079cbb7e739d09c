"""What every experiment script does first and last: its prologue and its report tail.

Defines no flags: a script that uses ``--output_dir`` defines it itself.

A usage error (a bad flag value, an unknown flag, an ``app.UsageError`` from
``main``, an output directory that cannot be written) ends the script with
exit status 2 (``USAGE_ERROR_STATUS``, as argparse; absl's own is 1) and two
short lines on stderr, without absl's help text::

  train_models.py: error: --epochs=abc: expected an integer
  see train_models.py --help

Status 1 stays what an unexpected exception (a bug, a crash) exits with.
"""

from __future__ import annotations

import errno
import functools
import logging as py_logging
import os
import pathlib
import re
import sys
import tempfile
from typing import NoReturn

from absl import app, flags
from absl import logging as absl_logging

import miajax
from miajax import report

FLAGS = flags.FLAGS

USAGE_ERROR_STATUS = 2


def usage_error(message: str) -> NoReturn:
  """Exits with ``USAGE_ERROR_STATUS`` after ``<script>: error: <message>`` and a pointer to --help."""
  prog = os.path.basename(sys.argv[0]) if sys.argv else "script"
  # One line whatever the message: a wrapped exception text must not look
  # like several errors.
  line = " ".join(str(message).split())
  sys.stderr.write(f"{prog}: error: {line}\nsee {prog} --help\n")
  sys.exit(USAGE_ERROR_STATUS)


def _expected(flag) -> str:
  """What a flag takes, in words (``""``: absl's own text says it better)."""
  parser = flag.parser
  values = getattr(parser, "enum_values", None)
  if values:
    return "one of " + ", ".join(map(str, values))
  if isinstance(parser, flags.BooleanParser):
    return "true or false"
  return parser.syntactic_help or ""


def flag_error_message(error: flags.Error) -> str:
  """absl's flag-parsing error as ``--flag...: what was expected``."""
  text = " ".join(str(error).split())
  if isinstance(error, flags.UnrecognizedFlagError):
    hint = re.search(r"Did you mean: (.*?) \?$", text)
    also = ""
    if hint:
      names = [n.strip() for n in hint.group(1).split(",") if n.strip()]
      also = "; did you mean " + " or ".join(f"--{n}" for n in names) + "?"
    return f"--{error.flagname}: unknown flag{also}"
  m = re.match(r"flag --(\w+)=(.*?): (.*)$", text)
  if m and m.group(1) in FLAGS:
    name, value, detail = m.groups()
    flag = FLAGS[name]
    try:
      flag.parser.parse(value)
    except (ValueError, TypeError):
      # The value itself does not parse: say what the flag takes.
      expected = _expected(flag)
      if expected:
        return f"--{name}={value}: expected {expected}"
    # It parses but a bound or validator refused it: its own words.
    return f"--{name}={value}: {detail}"
  m = re.match(r"Missing value for flag --(\w+)$", text)
  if m:
    return f"--{m.group(1)}: missing value (--{m.group(1)}=<value>)"
  if isinstance(error, flags.CantOpenFlagFileError):
    return "--flagfile: " + re.sub(r"^ERROR:+\s*", "", text)
  return text


def _parse_flags(argv):
  try:
    return FLAGS(argv)
  except flags.Error as e:
    usage_error(flag_error_message(e))


def _one_line_usage_errors(main):
  @functools.wraps(main)
  def run_main(argv):
    try:
      return main(argv)
    except app.UsageError as e:
      usage_error(str(e))
    except flags.Error as e:  # a flag set or validated inside main
      usage_error(flag_error_message(e))

  return run_main


def run(main, argv=None) -> NoReturn:
  """``app.run(main)`` whose usage errors are one line and exit status 2, not absl's help text.

  Every script's ``__main__`` block calls this instead of ``app.run``.
  """
  app.run(_one_line_usage_errors(main), argv=argv, flags_parser=_parse_flags)


def no_arguments(argv) -> None:
  """Refuses positional arguments: every input of a script is a flag."""
  if len(argv) > 1:
    raise app.UsageError(
      f"unexpected arguments {argv[1:]}: every input is a --flag"
    )


def check_writable(path, flag: str) -> None:
  """Raises a usage error unless ``path`` is, or can be created as, a writable directory.

  Probes by creating (and removing) a temporary file where the first
  directory would go: ``os.access`` says yes to root on a read-only
  filesystem or under /proc, where the first write then fails deep inside a
  run.  Leaves nothing behind, not even ``path`` itself.
  """
  target = pathlib.Path(path)
  where = f"{flag} {str(target)!r}"
  existing = target
  while not os.path.lexists(existing) and existing.parent != existing:
    existing = existing.parent
  if not existing.is_dir():
    if existing == target:
      raise app.UsageError(f"{where} is not a directory")
    raise app.UsageError(
      f"{where} cannot be created: {str(existing)!r} is a file, not a directory"
    )
  try:
    with tempfile.NamedTemporaryFile(dir=existing, prefix=".miajax-probe-"):
      pass
  except OSError as e:
    verb = "cannot be written" if existing == target else "cannot be created"
    if e.errno == errno.EROFS:
      why = f"{str(existing)!r} is on a read-only filesystem"
    elif e.errno in (errno.EACCES, errno.EPERM):
      why = f"permission denied in {str(existing)!r}"
    else:  # procfs, sysfs and the like: the kernel's own words
      why = f"cannot create files in {str(existing)!r} ({e.strerror or e})"
    raise app.UsageError(f"{where} {verb}: {why}") from None


def require_output_dir() -> None:
  """``--output_dir`` given, and a directory this process can write (checked, not created)."""
  if not FLAGS.output_dir:
    raise app.UsageError("--output_dir is required")
  check_writable(FLAGS.output_dir, "--output_dir")


class LibraryChatter(py_logging.Filter):
  """Drops the libraries' own INFO lines at absl's default verbosity.

  orbax logs every step of every checkpoint save (through absl's logger,
  from files under its package), and JAX that it found no TPU ("Unable to
  initialize backend 'tpu'"): dozens of lines that bury the run's own.
  Warnings and errors still pass, except JAX's warning that a platform is
  experimental (nothing a user of a script can act on);
  ``--verbosity=1`` (debug) shows everything.
  """

  _EXPERIMENTAL = "is experimental and not all JAX functionality"

  def filter(self, record: py_logging.LogRecord) -> bool:
    if absl_logging.get_verbosity() >= absl_logging.DEBUG:
      return True
    if record.name == "jax" or record.name.startswith("jax."):
      return (
        record.levelno >= py_logging.WARNING
        and self._EXPERIMENTAL not in record.getMessage()
      )
    if f"{os.sep}orbax{os.sep}" in record.pathname:
      return record.levelno >= py_logging.WARNING
    return True


def quiet_libraries() -> None:
  """Installs :class:`LibraryChatter` on absl's handler (which every logger's lines reach), once."""
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, LibraryChatter) for f in handler.filters):
    handler.addFilter(LibraryChatter())


def start(argv, *, output_dir: bool = True) -> None:
  """The scripts' prologue: no positional arguments, the CPU set up, ``--output_dir`` given and writable.

  The CPU is split into one device per core and the persistent compilation
  cache turned on before any JAX computation: the first sets how the engine
  lays out its models, the second lets a later run of the same recipe load its
  compiled programs instead of compiling them.  ``output_dir=False`` for a
  mode that writes nothing (benchmark.py's memory child).  An unwritable
  ``--output_dir`` is refused here, before any data is loaded or model
  trained; nothing is created yet (a later usage error leaves no directory).
  The libraries' INFO chatter is silenced first (:class:`LibraryChatter`).
  """
  quiet_libraries()
  no_arguments(argv)
  if output_dir:
    require_output_dir()
  miajax.use_all_cores()
  miajax.use_compilation_cache()


def make_output_dir() -> pathlib.Path:
  """Creates ``--output_dir`` or raises a usage error saying why it cannot be used."""
  check_writable(FLAGS.output_dir, "--output_dir")
  out = pathlib.Path(FLAGS.output_dir)
  try:
    out.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise app.UsageError(
      f"--output_dir {str(out)!r} cannot be created: {e.strerror or e}"
    ) from None
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
