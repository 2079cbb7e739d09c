"""experiments/benchmark.py on tiny workloads: report schema, arithmetic, same training in every method."""

import builtins
import dataclasses
import importlib
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
B = importlib.import_module("benchmark")
TORCH = B.import_torch()[0]  # the optional `bench` extra
needs_torch = pytest.mark.skipif(TORCH is None, reason="PyTorch (optional `bench` extra) is not installed")
METHODS = list(B.METHODS) if TORCH is not None else ["engine", "jax_loop"]

WIDTHS, FEATURES, CLASSES, BATCH = (24, 16), 12, 4, 16
TINY = {"mlp_purchase": B.Workload(
    "mlp_purchase", "mlp", (("activation", "tanh"), ("widths", WIDTHS)), (FEATURES,), CLASSES,
    batch_size=BATCH, num_models=2, steps=4, recipe_members=100, recipe_epochs=3, recipe="tiny")}


def _finite_positive(x):
  return isinstance(x, float) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
  out = tmp_path_factory.mktemp("bench")
  cfg = B.parse_config(workloads="all", methods="all", lira_shape="8,120,2", numpy_examples=6,
                       memory_models=3, memory_examples=64, matmul_sizes="128", repeats=1,
                       output_dir=str(out), table=TINY)
  rep = B.run(cfg, table=TINY, log=lambda s: None)
  return out, rep


def test_report_schema_and_arithmetic(tiny_report):
  out, rep = tiny_report
  on_disk = json.loads((out / "report.json").read_text())
  assert set(on_disk) >= {"device", "matmul_peak_gflops", "workloads", "lira", "memory", "goals", "config"}
  assert on_disk["config"]["workloads"] == ["mlp_purchase"] and on_disk["config"]["repeats"] == 1
  d = on_disk["device"]
  assert d["backend"] == "cpu" and d["cpu_count"] == os.cpu_count() and d["device_count"] >= 1
  assert d["torch_threads"] == (None if TORCH is None else os.cpu_count())
  peak = on_disk["matmul_peak_gflops"]
  assert _finite_positive(peak) and peak == max(on_disk["matmul"]["jax"].values())

  w = on_disk["workloads"]["mlp_purchase"]
  s = w["setup"]
  assert s["methods"] == METHODS
  macs = FEATURES * WIDTHS[0] + WIDTHS[0] * WIDTHS[1] + WIDTHS[1] * CLASSES
  assert s["flops_per_example_analytic"] == 6 * macs
  # XLA skips the input gradient of the first layer but counts elementwise work: near 6 x MACs, not 6x off.
  assert 0.5 < s["flops_per_example_xla"] / s["flops_per_example_analytic"] < 1.5
  assert s["flops_per_example"] == s["flops_per_example_xla"]
  recipe_examples = math.ceil(100 / BATCH) * BATCH * 3
  for method in METHODS:
    r = w[method]
    for key in ("examples_per_s", "models_per_hour", "gflops", "fraction_of_peak", "seconds"):
      assert _finite_positive(r[key]), (method, key, r[key])
    assert r["steps"] == 4 and r["models"] == 2 and r["examples"] == 2 * 4 * BATCH
    assert r["examples_per_s"] == pytest.approx(r["examples"] / r["seconds"], rel=1e-9)
    assert r["models_per_hour"] == pytest.approx(3600 * r["examples_per_s"] / recipe_examples, rel=1e-9)
    assert r["gflops"] == pytest.approx(r["examples_per_s"] * s["flops_per_example"] / 1e9, rel=1e-9)
    assert r["fraction_of_peak"] == pytest.approx(r["gflops"] / peak, rel=1e-9)
  assert w["ratios"]["engine/jax_loop"] == pytest.approx(
      w["engine"]["examples_per_s"] / w["jax_loop"]["examples_per_s"], rel=1e-9)
  if TORCH is not None:
    assert set(w["ratios"]) >= {"engine/torch_loop", "engine/jax_loop", "engine/torch_vmap"}

  lira = on_disk["lira"]
  assert lira["shape"] == [8, 120, 2] and lira["numpy_subset_examples"] == 6
  assert lira["speedup"] == pytest.approx(lira["numpy_extrapolated_s"] / lira["miajax_warm_s"])
  assert lira["max_abs_diff_on_subset"] < 1e-3  # the numpy loop computes the same scores

  mem = on_disk["memory"]
  assert mem["models"] == 3 and 1 <= mem["models_per_step"] <= 3
  assert mem["chunks"] == math.ceil(3 / mem["models_per_step"])
  assert 0.05 < mem["self_peak_rss_gib"] <= mem["peak_rss_gib"] < 64 and mem["finite_loss"]

  goals = {g["name"]: g for g in on_disk["goals"]}
  assert len(goals) == 8
  g = goals["mlp_purchase: engine / jax_loop"]
  assert g["value"] == pytest.approx(w["ratios"]["engine/jax_loop"]) and g["met"] == (g["value"] >= 1.0)
  assert goals["mlp_digits: engine / jax_loop"]["met"] is None  # workload not run
  mem_goal = [g for name, g in goals.items() if "memory" in name][0]
  assert mem_goal["met"] == (mem["peak_rss_gib"] < 8.0) and mem_goal["kind"] == "<"

  md = (out / "report.md").read_text()
  assert "| mlp_purchase | engine | 2 | 4 | 16 |" in md and f"| mlp_purchase | {METHODS[-1]} |" in md
  assert md.count("| pass |") + md.count("| MISSED |") == sum(g["met"] is not None for g in goals.values())


def test_engine_and_jax_loop_train_the_same_model():
  # Full-batch steps (one batch = all members) make the batch order irrelevant; the engine's
  # starting point is read back by training with a zero learning rate.
  wl = dataclasses.replace(TINY["mlp_purchase"], learning_rate=0.3)
  data = B.make_data(wl, 1, 1, seed=3)
  data.update(epochs=8, steps=8)
  assert data["steps_per_epoch"] == 1 and data["keep"].sum() == BATCH
  start = B.run_engine(wl, data, 3, learning_rates=np.zeros(1, np.float32), warmup=False)["variables"]
  engine = B.run_engine(wl, data, 3, warmup=False)["loss"][0]
  loop = B.run_jax_loop(wl, data, 3, init_variables=start, warmup=False)["loss"][0]
  assert engine.shape == loop.shape == (8,)
  assert engine[-1] < engine[0] - 0.2  # it really trains
  np.testing.assert_allclose(loop, engine, rtol=1e-5, atol=1e-6)


@needs_torch
def test_torch_loop_and_torch_vmap_train_the_same_models():
  torch = TORCH
  wl = TINY["mlp_purchase"]
  data = B.make_data(wl, 2, 4, seed=0)
  a = B.run_torch_loop(torch, wl, data, 0, warmup=False)["loss"]
  b = B.run_torch_vmap(torch, wl, data, 0, warmup=False)["loss"]
  assert a.shape == b.shape == (2, 4)
  np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


@needs_torch
@pytest.mark.parametrize("name", ["mlp_purchase", "mlp_digits", "cnn_small", "wrn16-4"])
def test_torch_architectures_match_flax_parameter_counts(name):
  import jax
  import jax.numpy as jnp
  from miajax import models
  torch = TORCH
  wl = B.WORKLOADS[name]
  flax_model = models.get_model(wl.model, wl.num_classes, **dict(wl.model_kwargs))
  shapes = jax.eval_shape(lambda k: flax_model.init(k, jnp.zeros((1,) + wl.input_shape), train=False),
                          jax.random.PRNGKey(0))
  net = B.torch_model(torch, wl)
  assert sum(p.numel() for p in net.parameters()) == models.count_params(shapes["params"])
  x = np.zeros((2,) + wl.input_shape, np.float32)
  xt = torch.from_numpy(x if wl.model == "mlp" else x.transpose(0, 3, 1, 2).copy())
  assert tuple(net(xt).shape) == (2, wl.num_classes)


def test_torch_rows_absent_with_a_note_when_torch_is_missing(monkeypatch, tmp_path, tiny_report):
  real_import = builtins.__import__

  def no_torch(name, *args, **kwargs):
    if name == "torch" or name.startswith("torch."):
      raise ModuleNotFoundError(f"No module named {name!r}")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", no_torch)
  assert B.import_torch()[0] is None
  cfg = B.parse_config(workloads="mlp_purchase", methods="engine,torch_loop,torch_vmap", lira=False,
                       memory_models=0, matmul_sizes="128", repeats=1, output_dir=str(tmp_path), table=TINY)
  rep = B.run(cfg, table=TINY, log=lambda s: None)
  w = rep["workloads"]["mlp_purchase"]
  assert w["setup"]["methods"] == ["engine"] and "torch_loop" not in w and "torch_vmap" not in w
  assert w["ratios"] == {} and rep["device"]["torch_threads"] is None
  assert any("PyTorch not installed" in n for n in rep["notes"] + w["setup"]["notes"])
  goals = {g["name"]: g for g in rep["goals"]}
  assert goals["mlp_purchase: engine / torch_loop"]["met"] is None
  assert "PyTorch not installed" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("kwargs, words", [
    (dict(workloads="mlp_purchase,resnet"), ["workloads", "resnet"]),
    (dict(methods="engine,keras"), ["methods", "keras"]),
    (dict(num_models=0), ["num_models", ">= 1"]),
    (dict(steps=-3), ["steps"]),
    (dict(lira_shape="256,50000"), ["lira_shape", "3"]),
    (dict(lira_shape="4,100,2"), ["lira_shape", ">= 6 models"]),
    (dict(numpy_examples=0), ["numpy_examples"]),
    (dict(memory_models=-1), ["memory_models"]),
    (dict(matmul_sizes="big"), ["matmul_sizes", "integers"]),
    (dict(repeats=0), ["repeats"]),
])
def test_bad_values_raise_naming_the_flag(kwargs, words):
  with pytest.raises(ValueError) as e:
    B.parse_config(**kwargs)
  assert all(w in str(e.value) for w in words), str(e.value)


def test_command_line_rejects_a_bad_flag_before_running(tmp_path):
  proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "benchmark.py"),
                         f"--output_dir={tmp_path}", "--workloads=mlp_purchase,vgg"],
                        capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert proc.returncode != 0
  assert "workloads" in proc.stderr and "vgg" in proc.stderr
  assert not (tmp_path / "report.json").exists()
