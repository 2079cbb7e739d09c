"""The whole job as a workload: experiments/lira.py in a child process, each phase against the benchmark's peak.

The training workloads time one piece (a training step) under controlled
conditions; a pipeline times what a user runs, end to end: training,
queries and label-only views, the attacks and the null check.  The job
reports its own phase times and XLA's FLOP counts (``timing_s`` and
``efficiency`` in its report.json); here they are read back and divided by
the benchmark's best matmul peak, the one every training workload divides by.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import pathlib
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Callable

LIRA_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "lira.py"
# Lines of the job's stderr an error quotes: absl's usage errors and tracebacks end there.
STDERR_TAIL_LINES = 40

# What each phase of the table holds, in the report's order; ``None`` FLOPs: not counted (no matmul
# work XLA's cost analysis is asked about, so those seconds only lower the job's efficiency).
PHASES = {
  "train": "training (train_models' steps)",
  "inference": "inference: queries + label-only views of every candidate and the test set",
  "other": "the rest of train + predict: loading the data, planning chunks, merging the run's files",
  "attacks": "every attack, leave-one-out",
  "null_check": "the attacks again on an independent random keep mask",
}


class PipelineError(RuntimeError):
  """The job failed or wrote no usable report; the message quotes its stderr's tail."""


@dataclasses.dataclass(frozen=True)
class Pipeline:
  """One whole job: ``experiments/lira.py`` on ``dataset`` with ``num_models`` models."""

  name: str
  dataset: str
  num_models: int
  models_per_step: int
  flags: tuple[str, ...] = ()  # more lira.py flags, e.g. ("--epochs=2",)
  what: str = ""

  def command(self, output_dir, num_models: int | None = None) -> list:
    """The child's argv; ``num_models`` (the benchmark's ``--num_models``) overrides the pipeline's."""
    models = self.num_models if num_models is None else int(num_models)
    return [
      sys.executable,
      str(LIRA_SCRIPT),
      f"--dataset={self.dataset}",
      f"--num_models={models}",
      f"--models_per_step={min(self.models_per_step, models)}",
      *self.flags,
      f"--output_dir={output_dir}",
    ]


# Not part of --workloads=all: 6-20 minutes on a 2-core CPU.
PIPELINES = {
  "pipeline_fashion_mnist": Pipeline(
    "pipeline_fashion_mnist",
    "fashion_mnist",
    num_models=64,
    models_per_step=16,
    what="The LiRA job's MLPs (784-256-128-10) on Fashion-MNIST, every attack leave-one-out "
    "(docs/fashion_mnist.md)",
  ),
}


def _run_child(cmd: list, workdir: pathlib.Path, name: str, log) -> float:
  """Runs ``cmd``, forwarding its stderr (progress, logs) to ``log``; returns its wall seconds."""
  tail = collections.deque(maxlen=STDERR_TAIL_LINES)
  t = time.perf_counter()
  # stdout (the attack table) goes to a file: only stderr is piped, so neither pipe can fill up
  # while the other is read.
  with open(workdir / "stdout.txt", "w") as stdout:
    proc = subprocess.Popen(
      cmd, stdout=stdout, stderr=subprocess.PIPE, text=True, bufsize=1
    )
    for line in proc.stderr:
      line = line.rstrip("\n")
      tail.append(line)
      log(f"  {name}: {line}")
    rc = proc.wait()
  wall = time.perf_counter() - t
  if rc != 0:
    raise PipelineError(
      f"{name}: the job exited with status {rc} after {wall:.1f} s: {shlex.join(cmd)}\n"
      f"last {len(tail)} lines of its stderr:\n" + "\n".join(tail)
    )
  return wall


def _gflops(flops, seconds):
  return None if flops is None or not seconds else flops / seconds / 1e9


def _sum(values):
  values = [v for v in values if v is not None]
  return float(sum(values)) if values else None


def summarise(pipe: Pipeline, job: dict, command: list, wall: float) -> dict:
  """The pipeline's row from the job's report.json: seconds, FLOPs and GFLOP/s by phase and for the job.

  The fractions of the peak come later (:func:`apply_peak`): the benchmark's
  peak is final only at its end.
  """
  eff = job.get("efficiency")
  if not eff:
    raise PipelineError(
      f"{pipe.name}: the job's report.json has no 'efficiency' section (it trains nothing "
      "when it reuses a run, and only a job that trained reports its FLOPs)"
    )
  t, f = job["timing_s"], eff["flops"]
  null_s = t.get("null_check") or 0.0
  phases = {
    "train": dict(seconds=t["train"], flops=f.get("train")),
    "inference": dict(
      seconds=t["predict"],
      flops=_sum([f.get("queries"), f.get("views")]),
      flops_by_part={"queries": f.get("queries"), "views": f.get("views")},
    ),
    "other": dict(
      seconds=t["train_and_predict_wall"] - t["train"] - t["predict"],
      flops=None,
    ),
    "attacks": dict(seconds=t["attacks"], flops=None),
    "null_check": dict(seconds=null_s, flops=None),
  }
  for name, p in phases.items():
    p["what"] = PHASES[name]
    p["gflops"] = _gflops(p["flops"], p["seconds"])
  # The job's wall from its first training step to the end of the null check: the seconds the
  # job's own efficiency divides by (what it spends on the report and plot afterwards is left out).
  seconds = t["train_and_predict_wall"] + t["attacks"] + null_s
  total = _sum(f.values())
  return dict(
    pipeline=dataclasses.asdict(pipe),
    command=command,
    what=pipe.what,
    models=int(job["protocol"]["models"]),
    examples=int(job["protocol"]["examples"]),
    phases=phases,
    job=dict(
      seconds=seconds,
      flops=total,
      gflops=_gflops(total, seconds),
      what="total FLOPs / (train + predict wall + attacks + null check)",
    ),
    process_wall_seconds=wall,
    target=job.get("target"),
    # The job's own view: its FLOPs over its wall x JAX's matmul peak measured at its end.
    job_report=dict(timing_s=t, efficiency=eff),
  )


def apply_peak(row: dict, peak_gflops: float) -> dict:
  """Sets ``fraction_of_peak`` of every phase and of the job: GFLOP/s / ``peak_gflops``."""
  for part in (*row["phases"].values(), row["job"]):
    g = part["gflops"]
    part["fraction_of_peak"] = (
      None if g is None or not peak_gflops else g / peak_gflops
    )
  row["peak_gflops"] = peak_gflops
  return row


def run_pipeline(
  pipe: Pipeline,
  *,
  num_models: int | None = None,
  log: Callable[[str], None] = print,
) -> dict:
  """Runs the job in a temporary directory (removed after) and returns its row (:func:`summarise`).

  Raises :class:`PipelineError` quoting the tail of the job's stderr when it
  fails or writes no usable report.
  """
  with tempfile.TemporaryDirectory(prefix=f"miajax-{pipe.name}-") as tmp:
    work = pathlib.Path(tmp)
    cmd = pipe.command(work / "job", num_models)
    log(f"{pipe.name}: {shlex.join(cmd)}")
    wall = _run_child(cmd, work, pipe.name, log)
    try:
      job = json.loads((work / "job" / "report.json").read_text())
    except (OSError, ValueError) as e:
      raise PipelineError(
        f"{pipe.name}: the job exited 0 but left no readable report.json ({e})"
      ) from None
  return summarise(pipe, job, cmd, wall)
