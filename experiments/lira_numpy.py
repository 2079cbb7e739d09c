"""A straightforward numpy LiRA leave-one-out, the baseline for miajax's speed.

It computes what `miajax.attacks.leave_one_out(..., variant="miajax")` computes
for "lira_online" and "lira_offline" (balanced leave-one-out, per-example mean
and ddof=1 std, std floor, one-sided offline test, log-likelihoods averaged
over queries), the way one writes it first: a Python loop over examples and,
inside, over targets, refitting the IN/OUT Gaussians from the remaining models
every time (float64).

Run as a script to time both on [256 models, 50,000 examples, 2 queries]:

    python experiments/lira_numpy.py                # miajax on all, numpy on a subset
    python experiments/lira_numpy.py --examples=5000 --numpy_examples=100

The numpy loop's cost is the same for every example (each does M targets x M
models of work), so its time on a subset of examples is scaled linearly to
the full count.
"""

from __future__ import annotations

import resource
import time

import numpy as np
from absl import app, flags
from scipy.special import log_ndtr

_STD_FLOOR = 1e-6  # same floor as miajax.attacks


def _fit(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """values float[n, queries] -> mean, std (ddof=1, floored), each float[queries]."""
  mean = values.mean(axis=0)
  std = values.std(axis=0, ddof=1)
  return mean, np.maximum(std, _STD_FLOOR * (1 + np.abs(mean)))


def _logpdf(x, mean, std):
  return -0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)


def lira_loo_numpy(
  scores: np.ndarray, keep: np.ndarray, partners: np.ndarray, examples=None
):
  """LiRA online and offline leave-one-out with a loop over examples and targets.

  Args:
    scores: float[models, examples, queries].
    keep: bool[models, examples].
    partners: int[models, examples], the model that balanced leave-one-out also
      leaves out (`miajax.attacks.leave_one_out_partners(keep)`).
    examples: indices of the examples to score (default: all).

  Returns:
    (online, offline), each float64[models, len(examples)], higher = member.
  """
  scores = np.asarray(scores, dtype=np.float64)
  keep = np.asarray(keep, dtype=bool)
  models = scores.shape[0]
  examples = (
    np.arange(scores.shape[1]) if examples is None else np.asarray(examples)
  )
  online = np.empty((models, len(examples)))
  offline = np.empty((models, len(examples)))
  for col, j in enumerate(examples):
    x_j, k_j = scores[:, j, :], keep[:, j]
    for t in range(models):
      others = np.arange(models) != t
      others[partners[t, j]] = False
      mu_in, sd_in = _fit(x_j[others & k_j])
      mu_out, sd_out = _fit(x_j[others & ~k_j])
      x = x_j[t]
      online[t, col] = np.mean(
        _logpdf(x, mu_in, sd_in) - _logpdf(x, mu_out, sd_out)
      )
      z = (x - mu_out) / sd_out
      offline[t, col] = np.mean(log_ndtr(z) - log_ndtr(-z))
  return online, offline


def synthetic(models: int, examples: int, queries: int, seed: int = 0):
  """Random float32 scores [models, examples, queries] and a LiRA-style keep [models, examples]."""
  rng = np.random.default_rng(seed)
  keep = rng.random((models, examples)).argsort(0) < models // 2
  scores = rng.normal(size=(models, examples, queries)) + keep[..., None]
  return scores.astype(np.float32), keep


def _peak_rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def benchmark(
  models=256, examples=50_000, queries=2, numpy_examples=200, seed=0
):
  """Times miajax leave-one-out (online + offline, compile included) on all examples
  and the numpy loop on `numpy_examples` of them, scaled to all. Returns a dict."""
  import jax

  from miajax import attacks

  scores, keep = synthetic(models, examples, queries, seed)
  start = time.perf_counter()
  online = attacks.leave_one_out(scores, keep, attack="lira_online")
  offline = attacks.leave_one_out(scores, keep, attack="lira_offline")
  jax.block_until_ready((online, offline))
  miajax_s = time.perf_counter() - start

  start = time.perf_counter()
  online2 = attacks.leave_one_out(scores, keep, attack="lira_online")
  offline2 = attacks.leave_one_out(scores, keep, attack="lira_offline")
  jax.block_until_ready((online2, offline2))
  miajax_warm_s = time.perf_counter() - start
  peak = _peak_rss_gib()

  subset = np.arange(min(numpy_examples, examples))
  start = time.perf_counter()
  partners = np.asarray(attacks.leave_one_out_partners(keep))
  np_online, np_offline = lira_loo_numpy(scores, keep, partners, subset)
  numpy_subset_s = time.perf_counter() - start
  diff = max(
    float(np.max(np.abs(np_online - np.asarray(online)[:, subset]))),
    float(np.max(np.abs(np_offline - np.asarray(offline)[:, subset]))),
  )
  return {
    "shape": [models, examples, queries],
    "miajax_s": miajax_s,
    "miajax_warm_s": miajax_warm_s,
    "peak_rss_gib_after_miajax": peak,
    "numpy_subset_examples": len(subset),
    "numpy_subset_s": numpy_subset_s,
    "numpy_extrapolated_s": numpy_subset_s * examples / len(subset),
    "max_abs_diff_on_subset": diff,
  }


def define_flags():
  flags.DEFINE_integer("models", 256, "Models (targets and shadows).")
  flags.DEFINE_integer("examples", 50_000, "Examples scored by miajax.")
  flags.DEFINE_integer("queries", 2, "Queries (augmentations) per example.")
  flags.DEFINE_integer(
    "numpy_examples", 200, "Examples the numpy loop scores (scaled to all)."
  )
  flags.DEFINE_integer("seed", 0, "Seed of the synthetic scores.")


def main(argv):
  # Imported here: tests load this file by path as a library, without
  # experiments/ on sys.path.
  import harness

  # Only the argument check of harness.start: its CPU split and compilation
  # cache would change what this script times.
  harness.no_arguments(argv)
  f = flags.FLAGS
  for name in ("models", "examples", "queries", "numpy_examples"):
    if f[name].value < 1:
      raise app.UsageError(f"--{name} must be >= 1, got {f[name].value}")
  r = benchmark(f.models, f.examples, f.queries, f.numpy_examples, f.seed)
  m, n, q = r["shape"]
  print(
    f"LiRA leave-one-out online + offline on [{m} models, {n} examples, {q} queries]"
  )
  print(
    f"  miajax (jit, incl. compile): {r['miajax_s']:8.2f} s   (warm: {r['miajax_warm_s']:.2f} s, "
    f"peak RSS {r['peak_rss_gib_after_miajax']:.2f} GiB)"
  )
  print(
    f"  numpy loop, {r['numpy_subset_examples']} examples:  {r['numpy_subset_s']:8.2f} s"
    f"  -> {r['numpy_extrapolated_s']:.0f} s for all {n} (linear in examples)"
  )
  print(
    f"  max |miajax - numpy| on the subset: {r['max_abs_diff_on_subset']:.2e}"
  )


if __name__ == "__main__":
  import harness

  define_flags()
  harness.run(main)
