"""miajax.cpu.use_all_cores: one CPU device per core, only before JAX starts, never overriding the user."""

import os
import pathlib
import subprocess
import sys

import pytest

from miajax.engine.cpu import devices as cpu

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(code, **env_extra):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(env_extra)
  out = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    timeout=300,
    env=env,
    cwd=ROOT,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  return out


def test_splits_the_cpu_into_one_device_per_core_up_to_the_cap():
  cores = len(os.sched_getaffinity(0))
  out = _run(
    "import jax, miajax; n = miajax.use_all_cores(max_devices=3); print(n, len(jax.devices('cpu')))"
  )
  n, devices = map(int, out.stdout.split())
  assert n == devices == min(cores, 3)


def test_too_late_changes_nothing_and_says_so():
  out = _run(
    "import jax, jax.numpy as jnp; jnp.ones(2).sum().block_until_ready(); import miajax; "
    "print(miajax.use_all_cores(), len(jax.devices('cpu')))"
  )
  assert out.stdout.split() == ["1", "1"]
  assert "already started" in out.stderr


def test_an_explicit_xla_flag_wins():
  out = _run(
    "import jax, miajax; print(miajax.use_all_cores(), len(jax.devices('cpu')))",
    XLA_FLAGS="--xla_force_host_platform_device_count=3",
  )
  assert out.stdout.split() == ["3", "3"]


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "4"])
def test_rejects_a_bad_cap(bad):
  with pytest.raises(ValueError, match="max_devices"):
    cpu.use_all_cores(max_devices=bad)
