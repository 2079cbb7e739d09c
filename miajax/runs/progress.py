"""Training progress a person can read.

On a terminal one line is redrawn in place (``\\r``): a bar, models done of
the total, the chunk's epoch, examples/s and the time left. Anywhere else
(a log file, a pipe, CI) every epoch gives one plain line instead.

Examples/s leave compilation out: the first epoch a chunk runs may include
compiling the step (the first call of a freshly compiled function), so the
rate is measured over the epochs after each chunk's first, and the extra
time of the very first epoch is reported once as the compile time.

The time left counts every phase of the job (:func:`job_eta`): the training
left (model-epochs, in examples, over that rate), the queries of the models
not yet queried (seconds per model measured on finished chunks, told through
``Progress.chunk_done``) and a fixed estimate of what follows training (a
caller's attacks). Until a chunk's queries were timed the query part is
unknown and left out: the ETA then ends in ``+`` ("and the queries").
"""

from __future__ import annotations

import math
import sys
from typing import Callable, TextIO

from absl import logging as absl_logging

__all__ = [
  "Progress",
  "Rate",
  "bar",
  "eta_seconds",
  "format_duration",
  "format_line",
  "job_eta",
  "query_seconds_per_model",
]


# absl names the file and line a log call came from: let that be the caller of
# Progress.log, not Progress.log itself.
absl_logging.ABSLLogger.register_frame_to_skip(__file__, "log")


def format_duration(seconds: float | None) -> str:
  """``"45s"``, ``"3m05s"``, ``"2h07m"``; ``"?"`` when unknown."""
  if seconds is None or not math.isfinite(seconds) or seconds < 0:
    return "?"
  s = int(round(seconds))
  if s < 60:
    return f"{s}s"
  if s < 3600:
    return f"{s // 60}m{s % 60:02d}s"
  return f"{s // 3600}h{s % 3600 // 60:02d}m"


def eta_seconds(
  remaining_examples: float, examples_per_s: float | None
) -> float | None:
  """Seconds to train ``remaining_examples`` (None: no rate yet)."""
  if remaining_examples <= 0:
    return 0.0
  if not examples_per_s or examples_per_s <= 0:
    return None
  return remaining_examples / examples_per_s


def query_seconds_per_model(
  chunks: list[tuple[int, float]],
) -> float | None:
  """Query seconds per model from finished chunks' ``(models, seconds)``.

  The first chunk's queries may include compiling the forward pass, so it
  is left out once a later chunk was timed; with only the first, it is used
  as it is (an overestimate by the compile time). None: no chunk timed.
  """
  later = chunks[1:] or chunks[:1]
  models = sum(m for m, _ in later)
  return sum(s for _, s in later) / models if models > 0 else None


def job_eta(
  *,
  train_examples: float,
  examples_per_s: float | None,
  query_models: float = 0,
  query_s_per_model: float | None = None,
  after_s: float = 0.0,
) -> tuple[float | None, bool]:
  """``(seconds, complete)``: the time left of a job of three phases.

  Training: ``train_examples`` left over ``examples_per_s``. Queries:
  ``query_models`` not yet queried times ``query_s_per_model``. After:
  ``after_s``, an estimate of the work after training (e.g. attacks), added
  as it is. ``seconds`` is None while the training rate is unknown and
  training is left. ``complete`` is False when queries are left whose rate
  is unknown: ``seconds`` leaves them out, so it is a lower bound.
  """
  train = eta_seconds(train_examples, examples_per_s)
  if train is None:
    return None, False
  if query_models <= 0:
    return train + after_s, True
  if query_s_per_model is None:
    return train + after_s, False
  return train + query_models * query_s_per_model + after_s, True


def bar(fraction: float, width: int = 24) -> str:
  """``[#########.........]`` filled to ``fraction`` (clipped to [0, 1])."""
  fraction = min(max(float(fraction), 0.0), 1.0)
  filled = int(fraction * width + 1e-9)
  return "[" + "#" * filled + "." * (width - filled) + "]"


class Rate:
  """Examples per second over the epochs that did not compile.

  ``add(examples, seconds, first)``: one epoch; ``first`` marks a chunk's
  first epoch, which may include compilation: it is kept out of the rate
  while epochs after a first one have been timed. With one epoch per chunk
  there are none; then every chunk's first epoch but the run's very first
  counts (the compiled step is reused across chunks of one size).
  """

  def __init__(self):
    self.first: tuple[float, float] | None = None  # the run's first epoch
    self._steady = [0.0, 0.0]  # examples, seconds of epochs after a first
    self._later_firsts = [0.0, 0.0]  # of first epochs but the run's first

  def add(self, examples: float, seconds: float, first: bool) -> None:
    if first and self.first is None:
      self.first = (float(examples), float(seconds))
      return
    acc = self._later_firsts if first else self._steady
    acc[0] += examples
    acc[1] += seconds

  @property
  def per_s(self) -> float | None:
    """Examples/s without compilation; None until such an epoch was timed."""
    for examples, seconds in (self._steady, self._later_firsts):
      if seconds > 0:
        return examples / seconds
    return None

  @property
  def compile_seconds(self) -> float | None:
    """The first epoch's time beyond what the rate predicts (None: unknown)."""
    if self.first is None or self.per_s is None:
      return None
    examples, seconds = self.first
    return max(0.0, seconds - examples / self.per_s)


def format_line(
  *,
  models_done: int,
  total_models: int,
  epoch: int,
  epochs: int,
  examples_per_s: float | None,
  eta: float | None,
  fraction: float | None = None,
  width: int = 24,
  eta_complete: bool = True,
) -> str:
  """One progress line; with ``fraction``, led by a bar of ``width``.

  ``eta_complete=False`` marks ``eta`` a lower bound with a trailing ``+``.
  """
  rate = (
    "-- examples/s"
    if examples_per_s is None
    else f"{examples_per_s:,.0f} examples/s"
  )
  line = (
    f"models {models_done}/{total_models}  chunk epoch {epoch}/{epochs}  "
    f"{rate}  ETA {format_duration(eta)}"
  )
  if not eta_complete and eta is not None:
    line += "+"
  return line if fraction is None else f"{bar(fraction, width)} {line}"


class Progress:
  """Shows the engine's per-epoch dicts (see the module docstring).

  Args:
    total_models: the models of the run.
    done_models: how many are already done when training starts.
    epochs: epochs per model.
    log: receives the plain lines (no terminal) and the compile-time line.
    stream: where the redrawn line goes when it is a terminal (default
      ``sys.stderr`` at call time); not a terminal: plain lines to ``log``.
    queries: the caller queries every model after its chunk trains and
      passes each chunk's query seconds to :meth:`chunk_done`: the ETA then
      counts the queries left (``+`` until a chunk's were timed).
    after_s: estimated seconds of the job's work after training (e.g. the
      attacks), counted into the ETA as it is.
  """

  def __init__(
    self,
    *,
    total_models: int,
    done_models: int,
    epochs: int,
    log: Callable[[str], None] = print,
    stream: TextIO | None = None,
    width: int = 24,
    queries: bool = False,
    after_s: float = 0.0,
  ):
    self.total_models = int(total_models)
    self.done = int(done_models)
    self.epochs = int(epochs)
    self._log = log
    self.stream = sys.stderr if stream is None else stream
    isatty = getattr(self.stream, "isatty", None)
    self.tty = bool(isatty and isatty())
    self.width = width
    self.rate = Rate()
    self.queries = bool(queries)
    self.after_s = float(after_s)
    self.query_chunks: list[tuple[int, float]] = []  # (models, seconds)
    self._chunk = (0, 0)  # models and epoch of the chunk in flight
    self._drawn = 0  # characters of the line on screen
    self._compile_logged = False

  def __call__(self, p: dict) -> None:
    self.rate.add(
      p["epoch_examples"],
      p["epoch_seconds"],
      p["epoch"] == p["start_epoch"] + 1,
    )
    self._chunk = (p["chunk_models"], p["epoch"])
    per_model_epoch = p["epoch_examples"] / max(p["chunk_models"], 1)
    remaining = self.total_models * self.epochs - self._work_done()
    rate = self.rate.per_s
    eta, complete = job_eta(
      train_examples=remaining * per_model_epoch,
      examples_per_s=rate,
      query_models=self.total_models - self.done if self.queries else 0,
      query_s_per_model=query_seconds_per_model(self.query_chunks),
      after_s=self.after_s,
    )
    finished = p["chunk_models"] if p["epoch"] == p["epochs"] else 0
    line = format_line(
      models_done=self.done + finished,
      total_models=self.total_models,
      epoch=p["epoch"],
      epochs=p["epochs"],
      examples_per_s=rate,
      eta=eta,
      fraction=self._fraction() if self.tty else None,
      width=self.width,
      eta_complete=complete,
    )
    if not self._compile_logged and self.rate.compile_seconds is not None:
      self._compile_logged = True
      self.log(
        f"  compiling took about {self.rate.compile_seconds:.1f} s "
        "(left out of examples/s)"
      )
    if self.tty:
      self._draw(line)
    else:
      self._log("  " + line)

  def chunk_done(self, models: int, query_seconds: float | None = None) -> None:
    """``models`` more are done (queried, their outputs written).

    ``query_seconds``: how long their queries took, from which the ETA's
    query part is measured.
    """
    self.done += int(models)
    if query_seconds is not None:
      self.query_chunks.append((int(models), float(query_seconds)))
    self._chunk = (0, 0)

  def log(self, message: str) -> None:
    """``log(message)`` without tearing the redrawn line."""
    if self.tty and self._drawn:
      self.stream.write("\r" + " " * self._drawn + "\r")
      self.stream.flush()
      self._drawn = 0
    self._log(message)

  def close(self) -> None:
    """Ends the redrawn line (call once training is over)."""
    if self.tty and self._drawn:
      self.stream.write("\n")
      self.stream.flush()
      self._drawn = 0

  def _work_done(self) -> int:
    models, epoch = self._chunk
    return self.done * self.epochs + models * epoch

  def _fraction(self) -> float:
    total = self.total_models * self.epochs
    return self._work_done() / total if total else 1.0

  def _draw(self, line: str) -> None:
    pad = " " * max(0, self._drawn - len(line))
    self.stream.write("\r" + line + pad)
    self.stream.flush()
    self._drawn = len(line)
