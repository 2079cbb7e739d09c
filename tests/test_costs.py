"""miajax.engine.costs and miajax.runs.cost: XLA's FLOP counts against hand counts, and a job's efficiency."""

import numpy as np
import pytest

import miajax
from miajax import runs
from miajax.attacks import label_only
from miajax.engine import costs


def _mlp(widths=(256, 128), batch=64):
  return miajax.TrainConfig(
    model_kwargs={"widths": widths, "activation": "relu"}, batch_size=batch
  )


def test_flops_of_the_fashion_mnist_mlp_match_a_hand_count():
  # 784-256-128-10: forward 2 x MACs (+ biases and ReLUs); a training example
  # 3 x that, less the input gradient of the first layer, never computed.
  first, rest = 784 * 256, 256 * 128 + 128 * 10
  fwd = costs.forward_flops_per_example(_mlp(), (28, 28, 1), 10)
  train = costs.train_flops_per_example(_mlp(), (28, 28, 1), 10)
  assert fwd == pytest.approx(2 * (first + rest), rel=0.01)
  assert train == pytest.approx(6 * (first + rest) - 2 * first, rel=0.02)
  assert fwd / 1e6 == pytest.approx(0.47, abs=0.005)  # the figures
  assert train / 1e6 == pytest.approx(1.01, abs=0.01)


def test_efficiency_arithmetic():
  eff = costs.efficiency(
    {"train": 3e12, "views": None, "queries": 1e12}, 40.0, 200.0
  )
  assert eff["total_flops"] == 4e12
  assert eff["seconds_at_peak"] == pytest.approx(20.0)
  assert eff["fraction_of_peak"] == pytest.approx(0.5)
  assert eff["achieved_gflops"] == pytest.approx(100.0)
  assert eff["flops"]["views"] is None
  peak = costs.matmul_peak_gflops(sizes=(256,), repeats=1)
  assert peak["gflops"] > 0 and set(peak["per_size"]) == {"256"}


def test_run_flops_counts_every_step_query_and_view():
  q = label_only.LabelOnlyQueries(shift=1, sigmas=(0.2,), copies=3)
  cfg = _mlp(widths=(32,), batch=32)
  spec = runs.RunSpec(
    dataset="digits", num_examples=100, num_models=4, train=cfg, label_only=q
  )
  ds = runs.load_dataset(spec)
  keep = np.zeros((4, 100), bool)
  keep[:, :50] = True
  keep[0, 50:70] = True  # 70 members: ceil(70 / 32) = 3 steps for every model
  flops = runs.run_flops(spec, ds, keep)
  fwd = costs.forward_flops_per_example(cfg, (8, 8, 1), 10)
  train = costs.train_flops_per_example(cfg, (8, 8, 1), 10)
  assert flops["train"] == pytest.approx(train * 4 * cfg.epochs * 3 * 32)
  n_test = ds.x_test.shape[0]
  assert flops["queries"] == pytest.approx(fwd * 4 * (100 + n_test))
  assert flops["views"] == pytest.approx(fwd * 4 * 100 * 21)
