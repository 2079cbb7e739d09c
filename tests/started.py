"""A script started in its own process at a module's start, collected by a later test."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


class Started:
  """A subprocess started now and collected later; its output goes to files (a pipe that
  nobody reads yet could fill and stall it)."""

  def __init__(self, args, log_dir):
    self.out, self.err = log_dir / "stdout.txt", log_dir / "stderr.txt"
    with open(self.out, "w") as out, open(self.err, "w") as err:
      self.proc = subprocess.Popen(
        [sys.executable, *args],
        stdout=out,
        stderr=err,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        cwd=ROOT,
      )

  def collect(self, timeout=600):
    """(exit status, stdout, stderr) once it has finished."""
    self.proc.wait(timeout=timeout)
    return self.proc.returncode, self.out.read_text(), self.err.read_text()

  def stop(self):
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait()
