"""experiments/benchmark.py on tiny workloads: report schema, arithmetic, same training in every method."""

import builtins
import copy
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
B = importlib.import_module("benchmark")  # the command line: flags, main
from bench import art as art_lib
from bench import config, jax_peers, runner, torch_peers, workloads
from bench import flops as flops_lib
from bench import goals as goals_lib
from bench import methods as methods_lib
from bench import peak as peak_lib

TORCH = torch_peers.import_torch()[0]  # the optional `bench` extra
needs_torch = pytest.mark.skipif(
  TORCH is None, reason="PyTorch (optional `bench` extra) is not installed"
)
METHODS = (
  list(workloads.METHODS) if TORCH is not None else ["engine", "jax_loop"]
)

WIDTHS, FEATURES, CLASSES, BATCH = (24, 16), 12, 4, 16
TINY = {
  "mlp_purchase": workloads.Workload(
    "mlp_purchase",
    "mlp",
    (("activation", "tanh"), ("widths", WIDTHS)),
    (FEATURES,),
    CLASSES,
    batch_size=BATCH,
    num_models=2,
    steps=4,
    recipe_members=100,
    recipe_epochs=3,
    recipe="tiny",
  )
}


def _finite_positive(x):
  return isinstance(x, float) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
  out = tmp_path_factory.mktemp("bench")
  cfg = config.parse_config(
    workloads="all",
    methods="all",
    lira_shape="8,120,2",
    numpy_examples=6,
    memory_models=3,
    memory_examples=64,
    art=False,
    matmul_sizes="128",
    repeats=1,
    output_dir=str(out),
    table=TINY,
  )
  rep = runner.run(cfg, table=TINY, log=lambda s: None)
  return out, rep


@pytest.mark.slow
def test_report_schema_and_arithmetic(tiny_report):
  out, rep = tiny_report
  on_disk = json.loads((out / "report.json").read_text())
  assert set(on_disk) >= {
    "device",
    "matmul_peak_gflops",
    "workloads",
    "art",
    "lira",
    "memory",
    "goals",
    "config",
  }
  assert on_disk["art"] is None and on_disk["config"]["art"] is False
  assert (
    on_disk["config"]["workloads"] == ["mlp_purchase"]
    and on_disk["config"]["repeats"] == 1
  )
  d = on_disk["device"]
  assert (
    d["backend"] == "cpu"
    and d["cpu_count"] == os.cpu_count()
    and d["device_count"] >= 1
  )
  assert d["torch_threads"] == (None if TORCH is None else os.cpu_count())
  peak = on_disk["matmul_peak_gflops"]
  peaks = [
    max(on_disk["matmul"][lib].values())
    for lib in ("jax", "torch")
    if on_disk["matmul"][lib]
  ]
  assert (
    _finite_positive(peak)
    and peak == max(peaks)
    and len(peaks) == (1 if TORCH is None else 2)
  )
  assert on_disk["matmul_peak_gflops_by_source"][on_disk["peak_source"]] == peak

  w = on_disk["workloads"]["mlp_purchase"]
  s = w["setup"]
  assert s["methods"] == METHODS
  macs = FEATURES * WIDTHS[0] + WIDTHS[0] * WIDTHS[1] + WIDTHS[1] * CLASSES
  assert s["flops_per_example_analytic"] == 6 * macs
  # XLA skips the input gradient of the first layer but counts elementwise work: near 6 x MACs, not 6x off.
  assert (
    0.5 < s["flops_per_example_xla"] / s["flops_per_example_analytic"] < 1.5
  )
  assert s["flops_per_example"] == s["flops_per_example_xla"]
  recipe_examples = math.ceil(100 / BATCH) * BATCH * 3
  for method in METHODS:
    r = w[method]
    for key in (
      "examples_per_s",
      "models_per_hour",
      "models_per_hour_timed",
      "gflops",
      "fraction_of_peak",
      "seconds",
    ):
      assert _finite_positive(r[key]), (method, key, r[key])
    assert (
      r["steps"] == 4 and r["models"] == 2 and r["examples"] == 2 * 4 * BATCH
    )
    assert r["examples_per_s"] == pytest.approx(
      r["examples"] / r["seconds"], rel=1e-9
    )
    assert r["models_per_hour"] == pytest.approx(
      3600 * r["examples_per_s"] / recipe_examples, rel=1e-9
    )
    assert r["models_per_hour_timed"] == pytest.approx(
      3600 * 2 / r["seconds"], rel=1e-9
    )
    assert r["gflops"] == pytest.approx(
      r["examples_per_s"] * s["flops_per_example"] / 1e9, rel=1e-9
    )
    assert r["fraction_of_peak"] == pytest.approx(r["gflops"] / peak, rel=1e-9)
  assert w["ratios"]["engine/jax_loop"] == pytest.approx(
    w["engine"]["examples_per_s"] / w["jax_loop"]["examples_per_s"], rel=1e-9
  )
  # The tiny MLP's step is small: the CPU lowering vmaps it and times no micro-batches.
  assert (
    s["lowering"]["backend"] == "cpu" and s["lowering"]["model_axis"] == "vmap"
  )
  assert (
    s["microbatch_size"] == s["lowering"]["microbatch"] == BATCH
    and s["microbatch_timings_s"] is None
  )
  assert (
    s["num_models"] == 2
    and s["loop_models"] == 2
    and s["models_source"] == "fixed"
  )
  if TORCH is not None:
    assert set(w["ratios"]) >= {
      "engine/torch_loop",
      "engine/jax_loop",
      "engine/torch_vmap",
    }

  lira = on_disk["lira"]
  assert lira["shape"] == [8, 120, 2] and lira["numpy_subset_examples"] == 6
  assert lira["speedup"] == pytest.approx(
    lira["numpy_extrapolated_s"] / lira["miajax_warm_s"]
  )
  assert (
    lira["max_abs_diff_on_subset"] < 1e-3
  )  # the numpy loop computes the same scores

  mem = on_disk["memory"]
  assert mem["models"] == 3 and 1 <= mem["models_per_step"] <= 3
  assert mem["chunks"] == math.ceil(3 / mem["models_per_step"])
  assert (
    0.05 < mem["self_peak_rss_gib"] <= mem["peak_rss_gib"] < 64
    and mem["finite_loss"]
  )

  goals = {g["name"]: g for g in on_disk["goals"]}
  assert len(goals) == 9
  assert goals["mlp_purchase: engine / torch_loop"]["goal"] == 1.3
  assert goals["mlp_digits: engine / torch_loop"]["goal"] == 3.0
  assert goals["cnn_small: engine / torch_loop"]["goal"] == 1.2
  # The measured values reach their goals; the verdicts themselves are checked against known
  # answers in test_goals_pass_and_miss_on_constructed_measurements.
  frac_goal = goals["mlp_purchase: engine fraction of matmul peak"]
  assert (
    frac_goal["goal"] == 0.6
    and frac_goal["value"] == w["engine"]["fraction_of_peak"]
  )
  assert on_disk["peak_source"] in frac_goal["detail"]
  g = goals["mlp_purchase: engine / jax_loop"]
  assert g["value"] == pytest.approx(w["ratios"]["engine/jax_loop"])
  mem_goal = [g for name, g in goals.items() if "memory" in name][0]
  assert mem_goal["value"] == mem["peak_rss_gib"] and mem_goal["kind"] == "<"
  for goal in (frac_goal, g, mem_goal):
    assert isinstance(goal["met"], bool), goal
  # Not measured: --art=false, and the digits workload was not run.
  assert [g["met"] for name, g in goals.items() if "ART" in name] == [None]
  assert goals["mlp_digits: engine / jax_loop"]["met"] is None

  md = (out / "report.md").read_text()
  assert (
    "| mlp_purchase | engine | 2 | 4 | 16 |" in md
    and f"| mlp_purchase | {METHODS[-1]} |" in md
  )
  assert (
    f"peak_source: {on_disk['peak_source']}" in md
    and "models/hour (timed)" in md
  )
  assert md.count("| pass |") + md.count("| MISSED |") == sum(
    g["met"] is not None for g in goals.values()
  )


@pytest.mark.slow
def test_engine_and_jax_loop_train_the_same_model():
  # Full-batch steps (one batch = all members) make the batch order irrelevant; the engine's
  # starting point is read back by training with a zero learning rate.
  wl = dataclasses.replace(TINY["mlp_purchase"], learning_rate=0.3)
  data = workloads.make_data(wl, 1, 1, seed=3)
  data.update(epochs=8, steps=8)
  assert data["steps_per_epoch"] == 1 and data["keep"].sum() == BATCH
  start = methods_lib.run_engine(
    wl, data, 3, learning_rates=np.zeros(1, np.float32), warmup=False
  )["variables"]
  engine = methods_lib.run_engine(wl, data, 3, warmup=False)["loss"][0]
  loop = jax_peers.run_jax_loop(
    wl, data, 3, init_variables=start, warmup=False
  )["loss"][0]
  assert engine.shape == loop.shape == (8,)
  assert engine[-1] < engine[0] - 0.2  # it really trains
  np.testing.assert_allclose(loop, engine, rtol=1e-5, atol=1e-6)


@needs_torch
def test_torch_loop_and_torch_vmap_train_the_same_models():
  torch = TORCH
  wl = TINY["mlp_purchase"]
  data = workloads.make_data(wl, 2, 4, seed=0)
  a = torch_peers.run_torch_loop(torch, wl, data, 0, warmup=False)["loss"]
  b = torch_peers.run_torch_vmap(torch, wl, data, 0, warmup=False)["loss"]
  assert a.shape == b.shape == (2, 4)
  np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


@needs_torch
@pytest.mark.parametrize(
  "name", ["mlp_purchase", "mlp_digits", "cnn_small", "wrn16-4"]
)
def test_torch_architectures_match_flax_parameter_counts(name):
  import jax
  import jax.numpy as jnp
  from miajax import models

  torch = TORCH
  wl = workloads.WORKLOADS[name]
  flax_model = models.get_model(
    wl.model, wl.num_classes, **dict(wl.model_kwargs)
  )
  shapes = jax.eval_shape(
    lambda k: flax_model.init(k, jnp.zeros((1,) + wl.input_shape), train=False),
    jax.random.PRNGKey(0),
  )
  net = torch_peers.torch_model(torch, wl)
  assert sum(p.numel() for p in net.parameters()) == models.count_params(
    shapes["params"]
  )
  x = np.zeros((2,) + wl.input_shape, np.float32)
  xt = torch.from_numpy(
    x if wl.model == "mlp" else x.transpose(0, 3, 1, 2).copy()
  )
  assert tuple(net(xt).shape) == (2, wl.num_classes)


def test_torch_rows_absent_with_a_note_when_torch_is_missing(
  monkeypatch, tmp_path, tiny_report
):
  real_import = builtins.__import__

  def no_torch(name, *args, **kwargs):
    if name == "torch" or name.startswith("torch."):
      raise ModuleNotFoundError(f"No module named {name!r}")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", no_torch)
  assert torch_peers.import_torch()[0] is None
  cfg = config.parse_config(
    workloads="mlp_purchase",
    methods="engine,torch_loop,torch_vmap",
    lira=False,
    memory_models=0,
    matmul_sizes="128",
    repeats=1,
    output_dir=str(tmp_path),
    table=TINY,
  )
  rep = runner.run(cfg, table=TINY, log=lambda s: None)
  w = rep["workloads"]["mlp_purchase"]
  assert (
    w["setup"]["methods"] == ["engine"]
    and "torch_loop" not in w
    and "torch_vmap" not in w
  )
  assert w["ratios"] == {} and rep["device"]["torch_threads"] is None
  assert rep["matmul"]["torch"] is None and rep["peak_source"] == "jax"
  assert any(
    "PyTorch not installed" in n for n in rep["notes"] + w["setup"]["notes"]
  )
  goals = {g["name"]: g for g in rep["goals"]}
  assert goals["mlp_purchase: engine / torch_loop"]["met"] is None
  assert "PyTorch not installed" in (tmp_path / "report.md").read_text()
  # ART runs on PyTorch, so its comparison goes too, with its own note.
  assert rep["art"] is None and any(
    "ART comparison skipped" in n for n in rep["notes"]
  )


@pytest.mark.parametrize("jax_gflops, torch_gflops", [(2.0, 5.0), (7.0, 3.0)])
def test_fraction_of_peak_uses_the_higher_of_jax_and_torch(
  monkeypatch, tmp_path, jax_gflops, torch_gflops
):
  if TORCH is None:
    pytest.skip("PyTorch (optional `bench` extra) is not installed")
  # Fixed peaks, different per size and between the start and the end of the run: per library the
  # best per size counts, then the higher library.
  calls = {"jax": 0, "torch": 0}

  def fake_jax(sizes, repeats=5):
    calls["jax"] += 1
    per_size = {
      "64": jax_gflops / 2,
      "128": jax_gflops if calls["jax"] == 2 else jax_gflops / 4,
    }
    return {"gflops": max(per_size.values()), "per_size": per_size}

  def fake_torch(torch, sizes, repeats=3, device="cpu"):
    calls["torch"] += 1
    return {
      "64": torch_gflops if calls["torch"] == 1 else 0.1,
      "128": torch_gflops / 3,
    }

  monkeypatch.setattr(peak_lib, "matmul_peak", fake_jax)
  monkeypatch.setattr(peak_lib, "torch_matmul", fake_torch)
  cfg = config.parse_config(
    workloads="mlp_purchase",
    methods="engine,torch_loop",
    steps=2,
    lira=False,
    memory_models=0,
    art=False,
    matmul_sizes="64,128",
    repeats=1,
    output_dir=str(tmp_path),
    table=TINY,
  )
  rep = runner.run(cfg, table=TINY, log=lambda s: None)
  assert calls == {"jax": 2, "torch": 2}
  assert rep["matmul"]["jax"] == {"64": jax_gflops / 2, "128": jax_gflops}
  assert rep["matmul"]["torch"] == {"64": torch_gflops, "128": torch_gflops / 3}
  peak, source = max((jax_gflops, "jax"), (torch_gflops, "torch"))
  assert rep["matmul_peak_gflops"] == peak and rep["peak_source"] == source
  assert rep["matmul_peak_gflops_by_source"] == {
    "jax": jax_gflops,
    "torch": torch_gflops,
  }
  w = rep["workloads"]["mlp_purchase"]
  for method in ("engine", "torch_loop"):
    assert w[method]["fraction_of_peak"] == pytest.approx(
      w[method]["gflops"] / peak, rel=1e-12
    )
  goal = [
    g
    for g in rep["goals"]
    if g["name"] == "mlp_purchase: engine fraction of matmul peak"
  ][0]
  assert (
    goal["value"] == w["engine"]["fraction_of_peak"]
    and f"(here: {source})" in goal["detail"]
  )
  md = (tmp_path / "report.md").read_text()
  assert f"**{peak:.1f} GFLOP/s (peak_source: {source})**" in md


def _accelerator_tiny_table():
  """The accelerator preset's workloads at CPU-test size: same models, tiny widths and images."""
  base = config.PRESETS["accelerator"]["table"]
  small_image = dict(input_shape=(8, 8, 3), batch_size=8)
  return {
    "cnn_small": dataclasses.replace(
      base["cnn_small"], model_kwargs=(("width", 4),), **small_image
    ),
    # "wrn16-4" fixes depth and width; the registry's "wrn" takes them.
    "wrn16-4": dataclasses.replace(
      base["wrn16-4"],
      model="wrn",
      model_kwargs=(("depth", 10), ("width", 1)),
      **small_image,
    ),
    "mlp_purchase": dataclasses.replace(
      base["mlp_purchase"],
      model_kwargs=(("activation", "tanh"), ("widths", WIDTHS)),
      input_shape=(FEATURES,),
      num_classes=CLASSES,
      batch_size=BATCH,
    ),
  }


def test_accelerator_preset_defaults_and_overrides():
  cfg = config.parse_config(preset="accelerator")
  assert cfg.preset == "accelerator" and cfg.workloads == (
    "cnn_small",
    "wrn16-4",
    "mlp_purchase",
  )
  assert cfg.methods == ("engine", "jax_loop", "torch_loop") and cfg.plan_models
  assert not cfg.lira and cfg.memory_models == 0 and not cfg.art
  assert (
    cfg.num_models is None and cfg.steps is None and cfg.loop_models is None
  )
  table = config.PRESETS["accelerator"]["table"]
  assert {name: wl.num_models for name, wl in table.items()} == dict.fromkeys(
    cfg.workloads, 256
  )
  for name in (
    cfg.workloads
  ):  # the same architectures and data shapes as the CPU preset's workloads
    cpu_wl = workloads.WORKLOADS[name]
    assert (
      table[name].model,
      table[name].model_kwargs,
      table[name].input_shape,
      table[name].num_classes,
      table[name].batch_size,
    ) == (
      cpu_wl.model,
      cpu_wl.model_kwargs,
      cpu_wl.input_shape,
      cpu_wl.num_classes,
      cpu_wl.batch_size,
    )
    assert 1 <= table[name].loop_models < 256
  assert (
    table["cnn_small"].input_shape == (32, 32, 3)
    and table["cnn_small"].num_classes == 10
  )
  assert dict(table["mlp_purchase"].model_kwargs)["widths"] == (
    1024,
    512,
    256,
    128,
  )
  # Explicit values win over the preset's.
  cfg = config.parse_config(
    preset="accelerator",
    lira=True,
    methods="engine",
    repeats=1,
    plan_models=False,
  )
  assert (
    cfg.lira
    and cfg.methods == ("engine",)
    and cfg.repeats == 1
    and not cfg.plan_models
  )
  with pytest.raises(ValueError, match="preset"):
    config.parse_config(preset="tpu-pod")
  with pytest.raises(ValueError, match="loop_models"):
    config.parse_config(preset="accelerator", loop_models=0)


def test_command_line_flags_override_the_preset(tmp_path):
  flag_values = B.flags.FlagValues()
  # A private copy of the flags config_from_flags reads: parsing it leaves the shared FLAGS alone.
  for name in [*B.DEFAULTS, "preset", "output_dir"]:
    flag_values[name] = copy.deepcopy(B.FLAGS[name])
  flag_values(
    [
      "benchmark.py",
      "--preset=accelerator",
      "--steps=3",
      "--lira",
      "--repeats=2",
      f"--output_dir={tmp_path}",
    ]
  )
  cfg = B.config_from_flags(flag_values)
  assert (
    cfg.preset == "accelerator"
    and cfg.steps == 3
    and cfg.lira
    and cfg.output_dir == str(tmp_path)
  )
  assert (
    cfg.workloads == ("cnn_small", "wrn16-4", "mlp_purchase")
    and cfg.memory_models == 0
  )
  flag_values.unparse_flags()
  flag_values(
    ["benchmark.py", f"--output_dir={tmp_path}"]
  )  # no preset: the CPU defaults
  assert B.config_from_flags(flag_values) == config.parse_config(
    output_dir=str(tmp_path)
  )


def test_accelerator_preset_trains_for_real_on_cpu_at_tiny_size(tmp_path):
  # One real workload through the preset's path (planner sizing, loops on fewer models); the three
  # workloads' arithmetic is checked below without training (XLA:CPU compiles conv nets slowly).
  tiny = _accelerator_tiny_table()
  cfg = config.parse_config(
    preset="accelerator",
    workloads="mlp_purchase",
    num_models=2,
    steps=2,
    loop_models=1,
    matmul_sizes="128",
    repeats=1,
    output_dir=str(tmp_path),
    table=tiny,
  )
  rep = runner.run(cfg, table=tiny, log=lambda s: None)
  on_disk = json.loads((tmp_path / "report.json").read_text())
  assert (
    on_disk["preset"] == "accelerator"
    and on_disk["config"]["preset"] == "accelerator"
  )
  assert (
    on_disk["lira"] is None
    and on_disk["memory"] is None
    and on_disk["art"] is None
  )
  w = on_disk["workloads"]["mlp_purchase"]
  s = w["setup"]
  methods = ["engine", "jax_loop"] + (
    ["torch_loop"] if TORCH is not None else []
  )
  assert s["methods"] == methods and s["steps"] == 2
  # The planner allows more than 2 tiny models per step, so the cap (--num_models) decides.
  assert (
    s["num_models"] == 2
    and s["models_source"].startswith("planner")
    and s["loop_models"] == 1
  )
  assert s["models_per_step"] == 2 and s["lowering"]["model_axis"] == "vmap"
  for method in methods:
    r = w[method]
    assert r["models"] == (2 if method == "engine" else 1), method
    assert r["models_per_hour_timed"] == pytest.approx(
      r["models"] / r["seconds"] * 3600, rel=1e-12
    )
    assert r["fraction_of_peak"] == pytest.approx(
      r["gflops"] / on_disk["matmul_peak_gflops"], rel=1e-12
    )
    assert np.isfinite(r["mean_final_epoch_loss"])
  assert (
    rep["workloads"]["mlp_purchase"]["engine"]["seconds"]
    == w["engine"]["seconds"]
  )
  md = (tmp_path / "report.md").read_text()
  assert "Preset: accelerator." in md and "timed on 1 of the 2 models" in md


# Hand-computed from the mocked inputs below, not by the report's code.  Every workload: the engine
# trains 2 models, the loops time 1, each 3 steps; the peak is 50 GFLOP/s (the JAX peak, above the
# mocked PyTorch one, so the same with or without PyTorch).
#   examples/s          = models x 3 steps x batch / seconds
#   models/hour (timed) = models / seconds x 3600
#   models/hour recipe  = examples/s x 3600 / recipe examples
#                         (cnn_small, wrn16-4 at batch 8: ceil(25,000 / 8) x 8 x 100 = 2,500,000;
#                          the MLP at batch 16: ceil(20,000 / 16) x 16 x 30 = 600,000)
#   GFLOP/s             = examples/s x FLOPs per example / 1e9;  fraction = GFLOP/s / 50
# cnn_small engine: 2 x 3 x 8 = 48 examples in 2 s = 24/s; 3600 models/hour; 24 x 3600 / 2.5e6 =
# 0.03456; 24 x 5e7 / 1e9 = 1.2 GFLOP/s = 0.024 of 50.
ARITHMETIC_SECONDS = {"engine": 2.0, "jax_loop": 0.5, "torch_loop": 0.25}
ARITHMETIC_FLOPS = {"cnn_small": 5e7, "wrn16-4": 2e8, "mlp_purchase": 1e6}
ARITHMETIC_EXPECTED = {
  # (workload, method): (examples/s, models/hour timed, models/hour recipe, GFLOP/s, fraction)
  ("cnn_small", "engine"): (24.0, 3600.0, 0.03456, 1.2, 0.024),
  ("cnn_small", "jax_loop"): (48.0, 7200.0, 0.06912, 2.4, 0.048),
  ("cnn_small", "torch_loop"): (96.0, 14400.0, 0.13824, 4.8, 0.096),
  ("wrn16-4", "engine"): (24.0, 3600.0, 0.03456, 4.8, 0.096),
  ("wrn16-4", "jax_loop"): (48.0, 7200.0, 0.06912, 9.6, 0.192),
  ("wrn16-4", "torch_loop"): (96.0, 14400.0, 0.13824, 19.2, 0.384),
  ("mlp_purchase", "engine"): (48.0, 3600.0, 0.288, 0.048, 0.00096),
  ("mlp_purchase", "jax_loop"): (96.0, 7200.0, 0.576, 0.096, 0.00192),
  ("mlp_purchase", "torch_loop"): (192.0, 14400.0, 1.152, 0.192, 0.00384),
}


def _fake_method(method):
  """What a method returns (see bench.methods) for fixed seconds and a constant loss of 1."""

  def run_method(*args, **kwargs):
    wl = next(a for a in args if isinstance(a, workloads.Workload))
    data = next(a for a in args if isinstance(a, dict))
    m = data["keep"].shape[0]
    seconds = ARITHMETIC_SECONDS[method]
    r = dict(
      seconds=seconds,
      all_seconds=[seconds],
      steps=data["steps"],
      epochs=data["epochs"],
      models=m,
      examples=m * data["steps"] * wl.batch_size,
      loss=np.ones((m, data["steps"])),
    )
    if method == "engine":
      r.update(
        models_per_step=m,
        microbatch_size=wl.batch_size,
        microbatch_timings=None,
        lowering=dict(
          backend="cpu",
          model_axis="vmap",
          conv_impl="patches",
          microbatch=wl.batch_size,
          steps_per_call=None,
          compute_dtype="float32",
        ),
      )
    return r

  return run_method


def test_accelerator_preset_report_arithmetic(monkeypatch, tmp_path):
  """All three workloads through run(), with training, FLOP counts and peaks replaced by fixed values."""
  tiny = _accelerator_tiny_table()
  monkeypatch.setattr(methods_lib, "run_engine", _fake_method("engine"))
  monkeypatch.setattr(jax_peers, "run_jax_loop", _fake_method("jax_loop"))
  monkeypatch.setattr(torch_peers, "run_torch_loop", _fake_method("torch_loop"))
  monkeypatch.setattr(
    jax_peers, "compile_jax_step", lambda wl, data: (None, None, None)
  )
  monkeypatch.setattr(
    flops_lib,
    "analytic_flops_per_example",
    lambda wl: ARITHMETIC_FLOPS[wl.name],
  )
  monkeypatch.setattr(
    peak_lib,
    "matmul_peak",
    lambda sizes, repeats=5: {"gflops": 50.0, "per_size": {"128": 50.0}},
  )
  monkeypatch.setattr(
    peak_lib,
    "torch_matmul",
    lambda torch, sizes, repeats=3, device="cpu": {"128": 40.0},
  )
  cfg = config.parse_config(
    preset="accelerator",
    num_models=2,
    steps=3,
    loop_models=1,
    matmul_sizes="128",
    repeats=1,
    output_dir=str(tmp_path),
    table=tiny,
  )
  rep = runner.run(cfg, table=tiny, log=lambda s: None)
  assert list(rep["workloads"]) == ["cnn_small", "wrn16-4", "mlp_purchase"]
  assert rep["matmul_peak_gflops"] == 50.0 and rep["peak_source"] == "jax"
  methods_run = ["engine", "jax_loop"] + (
    ["torch_loop"] if TORCH is not None else []
  )
  keys = (
    "examples_per_s",
    "models_per_hour_timed",
    "models_per_hour",
    "gflops",
    "fraction_of_peak",
  )
  for name, w in rep["workloads"].items():
    s = w["setup"]
    assert s["methods"] == methods_run
    assert (s["num_models"], s["loop_models"]) == (2, 1)
    # No compiled one-model step here, so every workload uses the (mocked) analytic count.
    assert (
      s["flops_source"] == "analytic" and s["flops_per_example_xla"] is None
    )
    assert s["flops_per_example"] == ARITHMETIC_FLOPS[name]
    for method in methods_run:
      got = tuple(w[method][k] for k in keys)
      assert got == pytest.approx(
        ARITHMETIC_EXPECTED[name, method], rel=1e-12
      ), (name, method)
      assert (w[method]["models"], w[method]["steps"]) == (
        2 if method == "engine" else 1,
        3,
      )
    # Per-model rates: 2 models in 2 s against 1 model in 0.5 s (0.25 s for PyTorch).
    assert w["ratios"]["engine/jax_loop"] == pytest.approx(0.5, rel=1e-12)
    if TORCH is not None:
      assert w["ratios"]["engine/torch_loop"] == pytest.approx(0.25, rel=1e-12)
      assert w["ratios"]["jax_loop/torch_loop"] == pytest.approx(0.5, rel=1e-12)
  md = (tmp_path / "report.md").read_text()
  # The rows as printed: examples/s to 0 decimals, models/hour to 1 and 2, GFLOP/s and % to 1.
  for row in (
    "| cnn_small | engine | 2 | 3 | 8 | 24 | 3600.0 | 0.03 | 1.2 | 2.4 | 2.00 | 2.00 "
    "| 1.000 -> 1.000 |",
    "| wrn16-4 | jax_loop | 1 | 3 | 8 | 48 | 7200.0 | 0.07 | 9.6 | 19.2 | 0.50 | 0.50 "
    "| 1.000 -> 1.000 |",
    "| mlp_purchase | engine | 2 | 3 | 16 | 48 | 3600.0 | 0.29 | 0.0 | 0.1 | 2.00 "
    "| 2.00 | 1.000 -> 1.000 |",
  ):
    assert row in md, row


def _goals_report(backend="cpu", **sections):
  """A report holding only what goals() reads: every workload's ratios and fractions, LiRA, ART and
  memory, as given."""
  rep = dict(
    device={"backend": backend},
    workloads={},
    peak_source="torch",
    lira=None,
    art=None,
    memory=None,
  )
  rep.update(sections)
  return rep


def _by_name(rep):
  return {g["name"]: g for g in goals_lib.goals(rep)}


def test_goals_pass_and_miss_on_constructed_measurements():
  w = {
    "mlp_purchase": {
      # 1.2 < 1.3: missed; 1.0 == 1.0: met (the goal is >=).
      "ratios": {"engine/torch_loop": 1.2, "engine/jax_loop": 1.0},
      "engine": {"fraction_of_peak": 0.55},  # below 0.6: missed
      "torch_loop": {"fraction_of_peak": 0.5},  # ceiling 1 / 0.5 = 2x
      "setup": {},
    },
    "mlp_digits": {
      "ratios": {"engine/torch_loop": 4.5, "engine/jax_loop": 0.9},
      "setup": {},
    },
    "cnn_small": {
      "ratios": {"engine/torch_loop": 1.2},  # exactly at the goal: met
      "setup": {"microbatch_size": 16},
    },
  }
  rep = _goals_report(
    workloads=w,
    lira={"speedup": 49.0},  # below 50: missed
    art={"speedup": 3.5, "shadows": 64},
    memory={"peak_rss_gib": 8.0, "models": 256},  # < 8 GiB needed: missed
  )
  g = _by_name(rep)
  assert len(g) == 9
  verdicts = {name: goal["met"] for name, goal in g.items()}
  assert verdicts == {
    "mlp_purchase: engine / torch_loop": False,
    "mlp_purchase: engine / jax_loop": True,
    "mlp_digits: engine / torch_loop": True,
    "mlp_digits: engine / jax_loop": False,
    "mlp_purchase: engine fraction of matmul peak": False,
    "cnn_small: engine / torch_loop": True,
    "LiRA leave-one-out: miajax / numpy": False,
    "miajax / ART end to end (64 digits shadows, CPU)": True,
    "engine peak host memory, 256 mlp_purchase models (GiB)": False,
  }
  purchase = g["mlp_purchase: engine / torch_loop"]
  assert (purchase["value"], purchase["goal"], purchase["kind"]) == (
    1.2,
    1.3,
    ">=",
  )
  assert purchase["ratio_to_goal"] == pytest.approx(1.2 / 1.3)
  assert "ceiling at 100 % of the measured peak: 2.00x" in purchase["detail"]
  assert g["mlp_digits: engine / torch_loop"]["detail"] == "examples/s ratio"
  assert (
    "micro-batch picked automatically (16)"
    in (g["cnn_small: engine / torch_loop"]["detail"])
  )
  assert (
    "(here: torch)"
    in (g["mlp_purchase: engine fraction of matmul peak"]["detail"])
  )
  mem = g["engine peak host memory, 256 mlp_purchase models (GiB)"]
  assert (mem["kind"], mem["goal"], mem["ratio_to_goal"]) == ("<", 8.0, 1.0)
  assert g["LiRA leave-one-out: miajax / numpy"]["ratio_to_goal"] == 0.98


def test_goals_met_below_the_memory_limit_and_unjudged_when_not_measured():
  rep = _goals_report(
    memory={"peak_rss_gib": 4.2, "models": 256}, lira={"speedup": 514.0}
  )
  g = _by_name(rep)
  assert g["engine peak host memory, 256 mlp_purchase models (GiB)"]["met"]
  assert g["LiRA leave-one-out: miajax / numpy"]["met"] is True
  # Nothing else was measured: reported with no value and no verdict.
  unmeasured = [goal for goal in g.values() if "memory" not in goal["name"]]
  unmeasured = [x for x in unmeasured if "LiRA" not in x["name"]]
  assert len(unmeasured) == 7
  assert all(
    x["value"] is None and x["met"] is None and x["ratio_to_goal"] is None
    for x in unmeasured
  )
  assert "miajax / ART end to end (? digits shadows, CPU)" in g


def test_cpu_goals_are_reported_but_not_judged_on_another_backend():
  w = {
    "mlp_purchase": {
      "ratios": {"engine/torch_loop": 2.0, "engine/jax_loop": 0.5},
      "engine": {"fraction_of_peak": 0.7},
      "setup": {},
    }
  }
  g = _by_name(_goals_report("gpu", workloads=w, lira={"speedup": 10.0}))
  frac = g["mlp_purchase: engine fraction of matmul peak"]
  assert frac["value"] == 0.7 and frac["met"] is None
  assert "not judged on gpu" in frac["detail"]
  assert g["mlp_purchase: engine / torch_loop"]["value"] == 2.0
  assert g["mlp_purchase: engine / torch_loop"]["met"] is None
  assert g["mlp_purchase: engine / jax_loop"]["met"] is None  # 0.5 < 1 on a CPU
  # Not a CPU goal: judged on any backend.
  assert g["LiRA leave-one-out: miajax / numpy"]["met"] is False
  g = _by_name(_goals_report("cpu", workloads=w))
  assert g["mlp_purchase: engine fraction of matmul peak"]["met"] is True
  assert g["mlp_purchase: engine / torch_loop"]["met"] is True  # 2.0 >= 1.3
  assert g["mlp_purchase: engine / jax_loop"]["met"] is False  # 0.5 < 1.0


def _block_imports(monkeypatch, *names):
  real_import = builtins.__import__

  def blocked(name, *args, **kwargs):
    if any(name == n or name.startswith(n + ".") for n in names):
      raise ModuleNotFoundError(f"No module named {name!r}")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", blocked)


def test_art_section_absent_with_a_note_when_art_is_missing(
  monkeypatch, tmp_path
):
  _block_imports(monkeypatch, "art")
  assert art_lib.import_art()[0] is None
  cfg = config.parse_config(
    workloads="none",
    lira=False,
    memory_models=0,
    art=True,
    matmul_sizes="128",
    repeats=1,
    output_dir=str(tmp_path),
  )
  assert cfg.workloads == () and cfg.art_models == 64 and cfg.art_epochs == 30
  assert cfg.art_torch_threads == tuple(
    dict.fromkeys((1, os.cpu_count()))
  )  # ART's best of both counts
  rep = runner.run(cfg, log=lambda s: None)
  assert rep["art"] is None and rep["workloads"] == {}
  note = [n for n in rep["notes"] if "ART comparison skipped" in n]
  # The note names what is missing: ART here, or PyTorch first where torch is not installed either (CI).
  assert len(note) == 1 and ("'art'" in note[0] or "torch" in note[0])
  goal = [g for g in rep["goals"] if "ART" in g["name"]]
  assert len(goal) == 1 and goal[0]["met"] is None and goal[0]["value"] is None
  md = (tmp_path / "report.md").read_text()
  assert "ART comparison skipped" in md and "End to end against ART" not in md
  assert json.loads((tmp_path / "report.json").read_text())["art"] is None


@pytest.mark.slow
def test_art_section_times_and_checks_both_sides(tmp_path):
  pytest.importorskip("art")
  pytest.importorskip("torch")
  cfg = config.parse_config(
    workloads="none",
    lira=False,
    memory_models=0,
    art=True,
    art_models=2,
    art_epochs=2,
    art_repeats=2,
    art_torch_threads="1",
    matmul_sizes="128",
    output_dir=str(tmp_path),
  )
  rep = runner.run(cfg, log=lambda s: None)
  a = json.loads((tmp_path / "report.json").read_text())["art"]
  assert a["speedup"] == pytest.approx(rep["art"]["speedup"], rel=1e-12)
  assert (
    a["shadows"] == 2
    and a["epochs"] == 2
    and a["batch_size"] == 64
    and a["workload"] == "mlp_digits"
  )
  assert a["pool_examples"] == 1297 and a["test_examples"] == 500
  mj, art = a["miajax"], a["art"]
  for side in (mj, art):
    assert (
      len(side["all_seconds"]) == 2
      and side["seconds"] == min(side["all_seconds"]) > 0
    )
    # two epochs of the digits recipe already fit most members: both sides really train the same thing
    assert (
      0.6 < side["mean_member_accuracy"] <= 1
      and 0.6 < side["mean_test_accuracy"] <= 1
    )
    assert (
      side["min_test_accuracy"]
      <= side["mean_test_accuracy"]
      <= side["max_test_accuracy"]
    )
    assert side["steps_per_epoch"] == 11
  assert art["torch_threads"] == [1, 1] and art["best_torch_threads"] == 1
  assert abs(mj["mean_test_accuracy"] - art["mean_test_accuracy"]) < 0.15
  assert mj["first_call_seconds"] > 0 and "first_call_seconds" not in art
  assert mj["members_per_shadow"] == [648, 649] and art[
    "members_per_shadow"
  ] == [648, 648]
  assert (
    mj["queried_per_shadow"] == 1297 and art["queried_per_shadow"] == 1296
  )  # ART skips one example
  assert a["speedup"] == pytest.approx(
    art["seconds"] / mj["fresh_process_cached_seconds"], rel=1e-9
  )
  assert a["speedup_empty_cache"] == pytest.approx(
    art["seconds"] / mj["fresh_process_seconds"], rel=1e-9
  )
  assert a["speedup_first_call"] == pytest.approx(
    art["seconds"] / mj["first_call_seconds"], rel=1e-9
  )
  # The fresh processes trained the same models as this one (same seed).
  assert mj["fresh_process_pool_accuracy"][0] == pytest.approx(
    mj["fresh_process_pool_accuracy"][1], abs=1e-12
  )
  assert a["speedup_warm"] == pytest.approx(
    art["seconds"] / mj["seconds"], rel=1e-9
  )
  assert (
    rep["device"]["torch_threads"] == os.cpu_count()
  )  # restored after ART's runs
  goal = [g for g in rep["goals"] if "ART" in g["name"]]
  assert len(goal) == 1 and "(2 digits shadows" in goal[0]["name"]
  assert goal[0]["value"] == a["speedup"] and isinstance(goal[0]["met"], bool)
  md = (tmp_path / "report.md").read_text()
  assert "End to end against ART" in md and f"**{a['speedup']:.2f}x**" in md
  assert (
    "| miajax | train_models + predict" in md
    and "| ART | ShadowModels.generate_shadow_dataset" in md
  )


def test_art_template_trains_with_the_recipe_after_cloning():
  mods = art_lib.import_art()[0]
  if mods is None:
    pytest.skip("ART (optional `bench` extra) is not installed")
  torch = mods["torch"]
  wl = workloads.WORKLOADS["mlp_digits"]
  template = art_lib.art_template(mods, wl, epochs=4)
  clone = template.clone_for_refitting()  # what ShadowModels does
  assert type(clone) is type(template)
  assert clone.model is not template.model
  w = [
    m.weight for m in clone.model.modules() if isinstance(m, torch.nn.Linear)
  ]
  assert [tuple(p.shape) for p in w] == [(256, 64), (128, 256), (10, 128)]
  # Flax's scale (std 1/sqrt(fan_in)), not PyTorch's default reset (uniform, std 1/sqrt(3 fan_in))
  assert float(w[0].detach().std()) == pytest.approx(1 / 8, rel=0.05)
  assert all(
    float(m.bias.detach().abs().max()) == 0
    for m in clone.model.modules()
    if isinstance(m, torch.nn.Linear)
  )
  assert (
    clone._optimizer.defaults["lr"] == 0.1
    and clone._optimizer.defaults["momentum"] == 0.9
  )
  assert clone._optimizer.defaults["weight_decay"] == 5e-4
  rates = []
  clone._optimizer.register_step_pre_hook(
    lambda opt, args, kwargs: rates.append(opt.param_groups[0]["lr"])
  )
  rng = np.random.default_rng(0)
  clone.fit(
    rng.random((100, 8, 8, 1), dtype=np.float32), rng.integers(0, 10, 100)
  )  # ShadowModels' call
  assert len(rates) == 4 * 2  # 4 epochs of ceil(100 / 64) batches
  expected = [
    0.1 * workloads.cosine(e + 0.5, 4) for e in range(4) for _ in range(2)
  ]
  np.testing.assert_allclose(rates, expected, rtol=1e-6)


@pytest.mark.parametrize(
  "kwargs, words",
  [
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
    (dict(art_models=3), ["art_models", "even"]),
    (dict(art_models=0), ["art_models", ">= 2"]),
    (dict(art_epochs=0), ["art_epochs"]),
    (dict(art_repeats=0), ["art_repeats"]),
    (dict(art_torch_threads="1,0"), ["art_torch_threads", ">= 1"]),
    (dict(workloads="none,mlp_purchase"), ["workloads", "none"]),
  ],
)
def test_bad_values_raise_naming_the_flag(kwargs, words):
  with pytest.raises(ValueError) as e:
    config.parse_config(**kwargs)
  assert all(w in str(e.value) for w in words), str(e.value)


def test_command_line_rejects_a_bad_flag_before_running(tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      str(ROOT / "experiments" / "benchmark.py"),
      f"--output_dir={tmp_path}",
      "--workloads=mlp_purchase,vgg",
    ],
    capture_output=True,
    text=True,
    timeout=120,
    cwd=ROOT,
  )
  assert proc.returncode != 0
  assert "workloads" in proc.stderr and "vgg" in proc.stderr
  assert not (tmp_path / "report.json").exists()
