"""The persistent compilation cache: where it goes, and that a second process hits it."""

import subprocess
import sys

import pytest

from miajax.runs import compilation_cache

CHILD = """
import sys, jax, jax.numpy as jnp
from jax._src import monitoring
from miajax.runs import compilation_cache
hits = []
monitoring.register_event_listener(
  lambda name, **kw: hits.append(name) if "cache_hits" in name else None
)
print(compilation_cache.use_compilation_cache(sys.argv[1], min_compile_seconds=0))
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
print(float(f(jnp.ones((64, 64)))), len(hits))
"""


def _child(path, env):
  out = subprocess.run(
    [sys.executable, "-c", CHILD, str(path)],
    capture_output=True,
    text=True,
    check=True,
    env=env,
  )
  return out.stdout.split()


def test_a_second_process_loads_what_the_first_compiled(tmp_path, monkeypatch):
  env = {
    k: v
    for k, v in __import__("os").environ.items()
    if k not in ("JAX_COMPILATION_CACHE_DIR", compilation_cache.ENV)
  }
  first = _child(tmp_path / "xla", env)
  assert first[0] == str(tmp_path / "xla") and first[2] == "0"
  assert any((tmp_path / "xla").iterdir())
  second = _child(tmp_path / "xla", env)
  assert second[1] == first[1] and int(second[2]) >= 1


def test_default_dir_follows_the_environment(monkeypatch, tmp_path):
  monkeypatch.setenv(compilation_cache.ENV, str(tmp_path / "c"))
  assert compilation_cache.default_cache_dir() == str(tmp_path / "c")
  for off in ("", "0"):
    monkeypatch.setenv(compilation_cache.ENV, off)
    assert compilation_cache.default_cache_dir() is None
  monkeypatch.delenv(compilation_cache.ENV)
  monkeypatch.setenv("HOME", str(tmp_path))
  assert compilation_cache.default_cache_dir() == str(
    tmp_path / ".cache" / "miajax" / "xla"
  )


def test_bad_threshold_is_refused():
  with pytest.raises(ValueError, match="min_compile_seconds"):
    compilation_cache.use_compilation_cache("/tmp/x", min_compile_seconds=-1)
