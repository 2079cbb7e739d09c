"""Membership-inference attacks on shadow-model scores: LiRA, global threshold, RMIA.

LiRA: N. Carlini, S. Chien, M. Nasr, S. Song, A. Terzis, F. Tramèr,
"Membership Inference Attacks From First Principles", IEEE S&P 2022.
RMIA: S. Zarifzadeh, P. Liu, P. Cheng, R. Shokri, "Low-Cost High-Power
Membership Inference Attacks", ICML 2024.

Every function takes per-model scores, never models, in two layers.

Cores: pure `jax.numpy` functions that check only shapes (static under
tracing), so they work under `jax.jit`, `jax.vmap` and inside a caller's own
compiled code. A fit is computed once from the shadow (reference) models; a
score function scores one target model, `[examples, queries] -> [examples]`,
and `jax.vmap` over targets scores many:

  fit = lira_fit(shadow_scores, keep, fix_variance=False)  # a LiraFit
  lira_online_score(fit, target_scores), lira_offline_score(fit, target_scores)
  fit = rmia_fit(ref_probs, keep, population_probs, a=0.3, offline=False)
  rmia_score(fit, target_probs, target_population_probs, gamma=2.0)

They implement `variant="miajax"` below and do not check values: an example
with too few IN or OUT shadow scores gets the floored std (huge, finite
scores) and non-finite inputs give non-finite scores. `LiraFit.n_in` and
`n_out` hold the counts for a caller who wants to check them.

Wrappers (`lira_online`, `lira_offline`, `rmia`, `global_threshold`,
`leave_one_out`): `shadow_scores float[models, examples, queries]` with
`shadow_keep bool[models, examples]` (which shadow model trained on which
example) and `target_scores float[targets, examples, queries]`, returning
`float[targets, examples]`, higher = more likely a member. They check their
inputs eagerly (shapes, dtypes, finiteness, IN/OUT counts, naming the bad
argument) and then call the cores, so they need concrete arrays; ragged IN/OUT
counts are handled with masks.

LiRA, `variant="miajax"` (default) versus `variant="reference"`
-----------------------------------------------------------------
`variant="reference"` reproduces the evaluation of tensorflow/privacy
`research/mi_lira_2021/plot.py`; `variant="miajax"` is the statistically sound
version. Per example and query, LiRA fits a Gaussian to the IN scores (shadows
trained on the example) and one to the OUT scores. The differences:

1. **No truncation.** miajax uses all IN and all OUT scores of every example.
   The reference cuts every example's IN (OUT) list to the first `n` in model
   order, `n` being the smallest IN (OUT) count over all examples, which throws
   data away whenever the membership design is ragged (random keep masks).
2. **Mean and unbiased std** (ddof=1) instead of median and population std
   (ddof=0). They are the Gaussian's own estimators (the median has ~64% of the
   mean's efficiency for Gaussian data), ddof=1 removes the downward bias of
   the scale that makes the test over-confident with few shadow models, and
   mean/variance can be down-dated exactly, which is what makes leave-one-out
   cheap (below).
3. **Correct fixed variance.** With `fix_variance=True` the IN fit uses the
   pooled IN variance and the OUT fit the pooled OUT variance, per query:
   `sum_i sum_{m in IN_i} (x_mi - mean_i)^2 / sum_i (n_i - 1)`, i.e. the
   spread around each example's own mean. The reference uses one number for
   both fits, the std of all IN scores around their global mean, which mixes
   in the spread of the per-example means and ignores the OUT scores.
4. **One-sided offline test**, as in the LiRA paper, on the log-odds of the
   OUT fit's CDF: `log Phi(z) - log Phi(-z)` with `z = (x - mean_out) /
   std_out`, averaged over queries. It is a monotone function of the paper's
   `log Phi(z)` (equal to it up to `log(1 - Phi(z))`, below 1e-3 once
   z < -3), but `log Phi(z)` itself rounds to -0.0 in float32 once z is
   above ~13 (and in float64 above ~38), so strong members tied at 0; the
   log-odds, computed as two `log_ndtr` calls that are each accurate on
   their own side, keeps resolution in both tails (z = 40 gives 804.6). A
   score far *below* the OUT distribution is evidence against membership;
   the reference's negated two-sided log density ranks it as a likely
   member.
5. **Scale floor.** The std is floored at `1e-6 * (1 + |mean|)` (around float32
   resolution) so constant shadow scores give large finite log-likelihoods,
   never inf or nan. The reference adds 1e-30 to the std.
6. **Counts.** Each example needs >= 2 IN (online only) and >= 2 OUT shadow
   scores for per-example variances, >= 1 with `fix_variance=True` (the
   pooled variance needs only some example with two). Fewer raises a
   ValueError naming how many examples fail and the first one. The reference
   variant applies the same rule (with one score its std is 0 and the
   original code returns +-1e59-sized numbers).
7. **float32, numerically careful.** Scores are centred per example and
   query on one model's score before any sum, fits use per-example means
   first and then sums of squared deviations, and leave-one-out removes a
   model with the exact (Welford) down-date, switching to a directly
   computed fit when the removed model is the one outlier that dominates the
   spread (the only case where the down-date cancels). Leave-one-out agrees
   with refitting on the remaining models to ~1e-5 relative.

Both variants average the per-query log-likelihoods (ratios) over queries.

Leave-one-out (`leave_one_out`): every model in turn is the target and the
others its shadows; the pooled ROC uses `keep` as labels. For
`variant="miajax"` it is *balanced* by default: for target t, each example's
fit of the group t is not in also leaves out one model, drawn uniformly from
that group with a fixed seed (`leave_one_out_partners`). Leaving out only the
target gives its own group one model fewer than the other at every example,
and a Gaussian fitted on fewer models predicts a fresh score worse, so under
the null members score lower: with 8 models (4 IN / 4 OUT) a null check gives
AUC 0.42 and TPR@1%FPR 0.1% for plain leave-one-out, 0.50 and ~0.9% balanced;
the gap is gone by 64 models. The dropped model is random rather than, say,
the next one in model order because designs have structure: in `paired_keep`
model t+1 is t's complement, and always dropping it biases a null check on
real models (AUC 0.48 with 8 digits models). Balancing keeps the null exact
for designs where every example is IN for the same number of models
(`lira_keep`, `paired_keep`); in a ragged design the fit sizes still vary with
an example's IN count, which also sets its share of members in the pooled
ROC, so small-M ragged designs are not exactly calibrated (use equal counts).
`balanced=False` gives the plain version (all other models as shadows). Per-example counts, means and sums of squared deviations are
computed once and the removed models are subtracted in O(1) per (target,
example), so all M targets cost about as much as one M-shadow fit plus the
scoring, not M fits. Targets are processed in chunks (`lax.map` with a batch
size) so memory stays a few times the input. `variant="reference"` re-runs
the reference fit (with its median and its truncation recomputed on the M-1
other models, which in a design with equal IN counts equalises the two groups
by itself) for each target in float64, M times the single-target cost: a
reproduction path where exactness wins over speed. RMIA's leave-one-out
subtracts the target's share from per-example sums of the reference
probabilities (the mean over the other models is not biased by their number).
Leaving models out needs one more shadow per group: online LiRA needs 3 IN and
3 OUT models per example (2 with `fix_variance=True`), offline only the OUT.

The reference variant computes in float64 (inside `jax.enable_x64(True)`,
without changing the global setting) and returns a float64 numpy array; the
miajax variant returns a float32 jax array.

RMIA (`rmia`, `rmia_fit`, `rmia_score`)
---------------------------------------
Zarifzadeh et al. (ICML 2024) on true-label probabilities `p_y`:
`p(x|theta)` is the target's probability averaged over queries; `Pr(x)` is the
mean of the reference (shadow) models' probabilities, over all of them online,
and `((1 + a) * mean_OUT + (1 - a)) / 2` over the OUT ones offline;
`ratio(x) = p(x|theta) / Pr(x)`; the score is the fraction of population
samples z with `ratio(x) / ratio(z) > gamma`. It is computed by sorting the
target's `ratio(z)` once and binary-searching `ratio(x) / gamma`:
O((N + Z) log Z) time and O(N + Z) memory per target instead of a dense
N x Z comparison. When no population is given the examples themselves stand in
for it (their ratios under the same target, members included), the cheapest
proxy when no held-out data exists; pass real non-member samples when you have
them. Defaults: `gamma = 2`, about the value the paper's experiments use
(Privacy Meter hard-codes 1; for one target every gamma ranks the examples the
same way up to ties, it only moves which population quantile a score reports,
so it matters for pooled ROCs and for the size of the ties at 0), and
`a = 0.3`, the CIFAR-10 value of the research code (tune it per dataset on a
pair of reference models for the offline attack).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

VARIANTS = ("miajax", "reference")
ATTACKS = (
  "lira_online",
  "lira_offline",
  "global_threshold",
  "rmia",
  "rmia_offline",
)

# Floor on a fitted std relative to the location's size: about 8 float32 ulps.
_STD_FLOOR = 1e-6
# Elements of one [chunk, examples, queries] temporary: bounds the memory of
# the per-target scoring to a few tens of MB whatever the number of targets.
_CHUNK_ELEMENTS = 1 << 21
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
# p_y and probabilities below it are treated as this value in RMIA's Pr(x).
_TINY = float(np.finfo(np.float32).tiny)


# ---------------------------------------------------------------- validation


def _as_real(x: Any, name: str, ndim: int) -> np.ndarray:
  arr = np.asarray(x)
  if arr.dtype == np.bool_ or not (
    np.issubdtype(arr.dtype, np.floating)
    or np.issubdtype(arr.dtype, np.integer)
  ):
    raise ValueError(
      f"{name} must be a real-valued (float) array, got dtype {arr.dtype}"
    )
  if arr.ndim != ndim:
    raise ValueError(f"{name} must have {ndim} axes, got shape {arr.shape}")
  if not np.all(np.isfinite(arr)):
    bad = np.argwhere(~np.isfinite(arr))[0]
    raise ValueError(
      f"{name} must be finite; {int(np.sum(~np.isfinite(arr)))} entries are nan/inf "
      f"(first at index {tuple(int(i) for i in bad)})"
    )
  return arr


def _as_keep(keep: Any, name: str, shape: tuple[int, int]) -> np.ndarray:
  arr = np.asarray(keep)
  if arr.dtype != np.bool_:
    raise ValueError(
      f"{name} must be a bool array [models, examples], got dtype {arr.dtype}"
    )
  if arr.shape != tuple(shape):
    raise ValueError(
      f"{name} must have shape {tuple(shape)} [models, examples], got {arr.shape}"
    )
  return arr


def _check_variant(variant: str) -> None:
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


def _check_shadow_target(shadow_scores, shadow_keep, target_scores, names=None):
  s_name, k_name, t_name = names or (
    "shadow_scores",
    "shadow_keep",
    "target_scores",
  )
  shadow = _as_real(shadow_scores, s_name, 3)
  if shadow.shape[0] < 1 or shadow.shape[1] < 1 or shadow.shape[2] < 1:
    raise ValueError(
      f"{s_name} must be non-empty [models, examples, queries], got {shadow.shape}"
    )
  keep = _as_keep(shadow_keep, k_name, shadow.shape[:2])
  target = _as_real(target_scores, t_name, 3)
  if target.shape[1:] != shadow.shape[1:]:
    raise ValueError(
      f"{t_name} must have shape [targets, {shadow.shape[1]}, {shadow.shape[2]}] to match "
      f"{s_name} [models, examples, queries] = {shadow.shape}, got {target.shape}"
    )
  return shadow, keep, target


def _check_counts(
  counts: np.ndarray,
  need: int,
  what: str,
  context: str,
  hint: str,
  keep_name: str = "shadow_keep",
) -> None:
  """Raise if any example has fewer than `need` shadow scores of one kind."""
  bad = np.flatnonzero(counts < need)
  if bad.size:
    i = int(bad[0])
    raise ValueError(
      f"{context} needs at least {need} {what} shadow score(s) per example; {bad.size} of "
      f"{counts.size} examples have fewer in {keep_name} (first: example {i} has {int(counts[i])}). {hint}"
    )


def _lira_need(fix_variance: bool) -> int:
  return 1 if fix_variance else 2


def _check_lira_counts(
  n_in, n_out, *, offline, fix_variance, context, keep_name="shadow_keep"
):
  need = _lira_need(fix_variance)
  hint = (
    "Train more shadow models (or use a design where every example is IN for half of them)"
    + ("" if fix_variance else ", or use fix_variance=True, which needs only 1")
    + "."
  )
  if not offline:
    _check_counts(n_in, need, "IN", context, hint, keep_name)
  _check_counts(n_out, need, "OUT", context, hint, keep_name)
  if fix_variance:
    # The pooled variance needs at least one degree of freedom overall.
    for counts, what in (
      [(n_out, "OUT")] if offline else [(n_in, "IN"), (n_out, "OUT")]
    ):
      if np.sum(np.maximum(counts - 1, 0)) < 1:
        raise ValueError(
          f"{context} with fix_variance=True needs some example with at least 2 {what} "
          f"shadow scores in {keep_name} to estimate the pooled variance."
        )


# ------------------------------------------------------------ LiRA (miajax)
#
# Scores are first centred per (example, query) on the first model's score, so
# sums never carry a large common offset. A group's fit is kept as count, mean
# and sum of squared deviations (m2). Leaving one model out is the exact
# Welford down-date m2' = m2 - d^2 n / (n - 1), d = its deviation, which
# cancels badly only when that model dominates m2; then (the remaining
# scores sit within a fraction of its deviation) it must be the model with
# the largest |deviation|, so each group also keeps its fit without that model,
# computed directly.


class _Stats(NamedTuple):
  n: jax.Array  # float[examples]
  mean: jax.Array  # float[examples, queries], centred
  m2: jax.Array  # float[examples, queries]
  top: jax.Array  # int[examples, queries]: the model with the largest |deviation|, -1 if tied
  mean_top_out: jax.Array  # mean and m2 without model `top`
  m2_top_out: jax.Array


def _moments(y_t, mask_t):
  """Count, mean, m2 and masked deviations of the masked models.

  Model-minor arrays because reductions over the last, contiguous axis are
  several times faster on CPU than over the first. y_t float[examples,
  queries, models] (centred), mask_t bool[examples, models].
  """
  w = mask_t[:, None, :]
  n = jnp.sum(mask_t, axis=-1).astype(y_t.dtype)
  mean = jnp.sum(jnp.where(w, y_t, 0), axis=-1) / jnp.maximum(n, 1)[:, None]
  dev = jnp.where(w, y_t - mean[..., None], 0)
  m2 = jnp.sum(jnp.square(dev), axis=-1)
  return n, mean, m2, dev


def _group_stats(y_t, mask_t) -> _Stats:
  """`_moments` plus the fit without the model of largest |deviation|."""
  models = y_t.shape[-1]
  w = mask_t[:, None, :]
  n, mean, m2, dev = _moments(y_t, mask_t)
  # Members' deviations straddle 0, so the masked zeros change neither max nor min.
  dev_max, dev_min = jnp.max(dev, axis=-1), jnp.min(dev, axis=-1)
  dev_top = jnp.where(dev_max >= -dev_min, dev_max, dev_min)
  at_top = w & (dev == dev_top[..., None])
  model = jnp.arange(models)
  top = jnp.min(jnp.where(at_top, model, models), axis=-1)
  # A tied top cannot dominate m2 alone; only a unique one needs the direct fit.
  top = jnp.where(jnp.sum(at_top, axis=-1) == 1, top, -1)
  mean_top_out = mean - dev_top / jnp.maximum(n - 1, 1)[:, None]
  rest = w & (model != top[..., None])
  m2_top_out = jnp.sum(
    jnp.where(rest, jnp.square(y_t - mean_top_out[..., None]), 0), axis=-1
  )
  return _Stats(n, mean, m2, top, mean_top_out, m2_top_out)


def _centred(scores):
  """Model 0's scores and the centred float[examples, queries, models]."""
  center = scores[0]
  return center, jnp.transpose(scores - center, (1, 2, 0))


def _centred_stats(scores, keep):
  """Centre on model 0's scores; IN and OUT stats of scores float[models, examples, queries]."""
  center, y_t = _centred(scores)
  return center, _group_stats(y_t, keep.T), _group_stats(y_t, ~keep.T)


def _leave_out(stats: _Stats, y, r, drop):
  """(n, mean, m2) of a group once model r[i] with centred scores y float[examples, queries]
  leaves it at every example i where drop bool[examples] is set."""
  n_new = stats.n - drop.astype(stats.n.dtype)
  n1 = jnp.maximum(n_new, 1)[:, None]
  d = y - stats.mean
  is_top = stats.top == r[:, None]
  mean = jnp.where(is_top, stats.mean_top_out, stats.mean - d / n1)
  m2 = jnp.where(
    is_top, stats.m2_top_out, stats.m2 - jnp.square(d) * (stats.n[:, None] / n1)
  )
  dq = drop[:, None]
  return (
    n_new,
    jnp.where(dq, mean, stats.mean),
    jnp.where(dq, jnp.maximum(m2, 0), stats.m2),
  )


@jax.jit
def _partners(keep):
  models, examples = keep.shape
  model = jnp.arange(models, dtype=jnp.int32)
  # One integer sort per example lists IN models first, then OUT models, each
  # in model order (XLA's CPU sort is fast on a single integer operand).
  members = (
    jax.lax.sort(jnp.where(keep.T, model, models + model), dimension=1) % models
  )
  n_in = jnp.sum(keep, axis=0)
  n_other = jnp.where(keep, models - n_in, n_in)
  u = jax.random.uniform(jax.random.key(0), keep.shape)
  rank = jnp.minimum(
    (u * n_other).astype(jnp.int32), jnp.maximum(n_other - 1, 0)
  )
  slot = jnp.where(keep, n_in + rank, rank)
  return jnp.take_along_axis(members, slot.T, axis=1).T


def leave_one_out_partners(keep):
  """The model each target's balanced leave-one-out also leaves out, per example.

  Args:
    keep: bool[models, examples].

  Returns:
    int32[models, examples]: for target t and example i, a model of the group t
    is not in at i (OUT if t trained on i, else IN), drawn uniformly with a fixed
    seed. Uniform so that structure in the design (e.g. `paired_keep`'s
    complementary pairs) cannot bias the null; the same for every call. Entries
    for an example whose other group is empty are meaningless.
  """
  if np.ndim(keep) != 2:
    raise ValueError(
      f"keep must be a bool array [models, examples], got shape {np.shape(keep)}"
    )
  return _partners(jnp.asarray(_as_keep(keep, "keep", np.shape(keep))))


def offline_log_odds(z):
  """One-sided offline LiRA score `log Phi(z) - log Phi(-z)` of standardised scores `z`.

  Carlini et al., "Membership Inference Attacks From First Principles"
  (S&P 2022), offline test: a monotone function of `log Phi(z)` that keeps
  float32 resolution in both tails (`log Phi(z)` rounds to -0.0 above z ~ 13).

  Args:
    z: float[...], `(score - mean_out) / std_out`.

  Returns:
    float[...], same shape; higher = member.
  """
  return log_ndtr(z) - log_ndtr(-z)


def _floored_std(var, mean):
  return jnp.maximum(
    jnp.sqrt(jnp.maximum(var, 0)), _STD_FLOOR * (1 + jnp.abs(mean))
  )


def _scale(n, mean, m2, center, fix_variance):
  """Floored std float[examples, queries]: per example (ddof=1) or pooled.

  fix_variance: a Python bool picks one branch; a traced bool (a core under
  the caller's jit) computes both and selects.
  """
  per_example = m2 / jnp.maximum(n - 1, 1)[:, None]
  dof = jnp.sum(jnp.maximum(n - 1, 0))
  pooled = jnp.sum(m2, axis=0, keepdims=True) / jnp.maximum(dof, 1)
  if isinstance(fix_variance, bool):
    var = pooled if fix_variance else per_example
  else:
    var = jnp.where(fix_variance, pooled, per_example)
  return _floored_std(var, center + mean)


def _online_llr(y, mean_in, std_in, mean_out, std_out):
  """Mean over queries of log N(y; IN) - log N(y; OUT): float[..., examples]."""
  z_out = (y - mean_out) / std_out
  z_in = (y - mean_in) / std_in
  llr = (
    0.5 * (jnp.square(z_out) - jnp.square(z_in))
    + jnp.log(std_out)
    - jnp.log(std_in)
  )
  return jnp.mean(llr, axis=-1)


def _offline_llr(y, mean_out, std_out):
  """Mean over queries of the OUT fit's CDF log-odds: float[..., examples]."""
  return jnp.mean(offline_log_odds((y - mean_out) / std_out), axis=-1)


class LiraFit(NamedTuple):
  """Per-example Gaussian fits of IN and OUT shadow scores (`lira_fit`).

  All score arrays are float[examples, queries]. Means are stored relative to
  `center` (model 0's shadow scores): scores that share a large offset (say
  300 +- 0.01) keep their float32 resolution. The IN Gaussian of example i,
  query q is N(center + mean_in, std_in^2), likewise OUT.

  Attributes:
    center: float[examples, queries], the reference the means are taken from.
    mean_in: float[examples, queries], IN mean minus `center`.
    std_in: float[examples, queries], floored IN std (ddof=1, or pooled).
    mean_out: float[examples, queries], OUT mean minus `center`.
    std_out: float[examples, queries], floored OUT std.
    n_in: int32[examples], IN shadow scores per example.
    n_out: int32[examples], OUT shadow scores per example.
  """

  center: jax.Array
  mean_in: jax.Array
  std_in: jax.Array
  mean_out: jax.Array
  std_out: jax.Array
  n_in: jax.Array
  n_out: jax.Array


def _as_float(x):
  x = jnp.asarray(x)
  # Integer and half-precision scores are computed in (at least) float32.
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


@jax.jit
def lira_fit(shadow_scores, keep, *, fix_variance=False) -> LiraFit:
  """Fit LiRA's per-example IN and OUT Gaussians once for all targets.

  Carlini, Chien, Nasr, Song, Terzis, Tramèr, "Membership Inference Attacks
  From First Principles", IEEE S&P 2022 (the `variant="miajax"` estimators:
  mean, ddof=1 std floored at `1e-6 * (1 + |mean|)`, all shadow scores; see
  the module docstring). Pure `jax.numpy`: jit-able (`fix_variance` may be
  traced) and vmap-able; no value checks.

  Args:
    shadow_scores: float[models, examples, queries], e.g. `logit_scaled`.
    keep: bool[models, examples], True where the shadow model trained on the
      example.
    fix_variance: False: per-example variances (needs >= 2 IN and >= 2 OUT
      scores per example). True: one pooled variance per query and group,
      the spread around each example's own mean, `sum_i m2_i / sum_i (n_i -
      1)`; better with few shadow models.

  Returns:
    A `LiraFit` of float[examples, queries] arrays (counts int32[examples]).
  """
  shadow = _as_float(shadow_scores)
  keep = jnp.asarray(keep)
  if shadow.ndim != 3:
    raise ValueError(
      "shadow_scores must be float[models, examples, queries], got shape "
      f"{shadow.shape}"
    )
  if keep.dtype != jnp.bool_ or keep.shape != shadow.shape[:2]:
    raise ValueError(
      f"keep must be bool[models, examples] = {shadow.shape[:2]}, got "
      f"{keep.dtype}{list(keep.shape)}"
    )
  center, y_t = _centred(shadow)
  fits = []
  for mask in (keep.T, ~keep.T):
    n, mean, m2, _ = _moments(y_t, mask)
    fits += [mean, _scale(n, mean, m2, center, fix_variance)]
  counts = jnp.sum(keep, axis=0, dtype=jnp.int32)
  return LiraFit(center, *fits, counts, keep.shape[0] - counts)


def _align(fit: LiraFit, target_scores):
  """target_scores as float[examples, queries] (1-D if there is one query)."""
  target = _as_float(target_scores)
  shape = fit.center.shape
  if target.shape == shape:
    return target
  if shape[1] == 1 and target.shape == shape[:1]:
    return target[:, None]
  raise ValueError(
    f"target_scores must be float{list(shape)} [examples, queries] like the "
    f"fit (one target; jax.vmap for several), got shape {target.shape}"
  )


@jax.jit
def lira_online_score(fit: LiraFit, target_scores) -> jax.Array:
  """LiRA online score of one target model: the IN/OUT likelihood ratio.

  Carlini et al., "Membership Inference Attacks From First Principles"
  (S&P 2022), online attack: log N(x; IN fit) - log N(x; OUT fit), averaged
  over queries. Jit- and vmap-able; `jax.vmap(lira_online_score, in_axes=(None,
  0))(fit, targets)` scores float[targets, examples, queries].

  Args:
    fit: from `lira_fit`.
    target_scores: float[examples, queries] (or float[examples] with one
      query), the target model's scores in the fit's signal.

  Returns:
    float[examples], higher = member.
  """
  y = _align(fit, target_scores) - fit.center
  return _online_llr(y, fit.mean_in, fit.std_in, fit.mean_out, fit.std_out)


@jax.jit
def lira_offline_score(fit: LiraFit, target_scores) -> jax.Array:
  """LiRA offline score of one target model, against the OUT fit only.

  Carlini et al., "Membership Inference Attacks From First Principles"
  (S&P 2022), offline attack, one-sided: `offline_log_odds((x - mean_out) /
  std_out)` = log Phi(z) - log Phi(-z), averaged over queries (a monotone
  function of the paper's log Phi(z) without its float32 ties at 0). Only
  the OUT half of `fit` is used. Jit- and vmap-able like `lira_online_score`.

  Args:
    fit: from `lira_fit`.
    target_scores: float[examples, queries] (or float[examples]).

  Returns:
    float[examples], higher = member.
  """
  y = _align(fit, target_scores) - fit.center
  return _offline_llr(y, fit.mean_out, fit.std_out)


def _batch_size(targets: int, examples: int, queries: int) -> int:
  """Targets per vectorised chunk: bounded by _CHUNK_ELEMENTS, preferably a divisor
  of `targets` (a remainder chunk costs a second compiled body)."""
  bound = max(1, min(targets, _CHUNK_ELEMENTS // max(1, examples * queries)))
  divisor = max(d for d in range(1, bound + 1) if targets % d == 0)
  return divisor if 2 * divisor >= bound else bound


@functools.partial(
  jax.jit, static_argnames=("offline", "fix_variance", "batch_size")
)
def _lira_miajax(shadow, keep, target, *, offline, fix_variance, batch_size):
  fit = lira_fit(shadow, keep, fix_variance=fix_variance)
  score = lira_offline_score if offline else lira_online_score
  # Chunks of targets bound the [chunk, examples, queries] temporaries.
  return jax.lax.map(lambda x: score(fit, x), target, batch_size=batch_size)


@functools.partial(
  jax.jit, static_argnames=("offline", "fix_variance", "balanced", "batch_size")
)
def _lira_miajax_loo(
  scores, keep, *, offline, fix_variance, balanced, batch_size
):
  center, stats_in, stats_out = _centred_stats(scores, keep)
  examples = jnp.arange(scores.shape[1])

  def one_target(args):
    x, k, t, r_in, r_out = args
    y = x - center
    if balanced:
      # Both groups lose one model: the target its own, its partner the other.
      drop_in = drop_out = jnp.ones_like(k)
      y_in = scores[r_in, examples] - center
      y_out = scores[r_out, examples] - center
    else:
      drop_in, drop_out, y_in, y_out = k, ~k, y, y
    fit_out = _leave_out(stats_out, y_out, r_out, drop_out)
    s_out = _scale(*fit_out, center, fix_variance)
    if offline:
      return _offline_llr(y, fit_out[1], s_out)
    fit_in = _leave_out(stats_in, y_in, r_in, drop_in)
    s_in = _scale(*fit_in, center, fix_variance)
    return _online_llr(y, fit_in[1], s_in, fit_out[1], s_out)

  targets = jnp.arange(scores.shape[0])
  if balanced:
    partner = _partners(keep)
    own = targets[:, None]
    r_in, r_out = jnp.where(keep, own, partner), jnp.where(keep, partner, own)
  else:
    r_in = r_out = jnp.broadcast_to(targets[:, None], keep.shape)
  return jax.lax.map(
    one_target, (scores, keep, targets, r_in, r_out), batch_size=batch_size
  )


# --------------------------------------------------------- LiRA (reference)


def _reference_fit(x, mask):
  """The reference's truncated fit of one group (float64).

  x float[models, examples, queries], mask bool[models, examples] -> median
  and ddof=0 std float[examples, queries] of the first n masked models of
  each example in model order (n = smallest masked count over examples), and
  the ddof=0 std of all those selected scores pooled (a scalar).
  """
  n = jnp.min(jnp.sum(mask, axis=0))
  rank = jnp.cumsum(mask, axis=0) - 1
  sel = (mask & (rank < n))[..., None]
  ordered = jnp.sort(jnp.where(sel, x, jnp.inf), axis=0)
  median = 0.5 * (ordered[(n - 1) // 2] + ordered[n // 2])
  nf = n.astype(x.dtype)
  mean = jnp.sum(jnp.where(sel, x, 0), axis=0) / nf
  std = jnp.sqrt(jnp.sum(jnp.where(sel, jnp.square(x - mean), 0), axis=0) / nf)
  total = nf * x.shape[1] * x.shape[2]
  pooled_mean = jnp.sum(jnp.where(sel, x, 0)) / total
  pooled_std = jnp.sqrt(
    jnp.sum(jnp.where(sel, jnp.square(x - pooled_mean), 0)) / total
  )
  return median, std, pooled_std


def _gauss_logpdf(x, loc, scale):
  return -0.5 * jnp.square((x - loc) / scale) - jnp.log(scale) - _HALF_LOG_2PI


def _reference_score(shadow, in_mask, out_mask, target, offline, fix_variance):
  """target float[..., examples, queries] -> float[..., examples]."""
  med_out, std_out, pooled_out = _reference_fit(shadow, out_mask)
  if offline:
    s_out = (pooled_out if fix_variance else std_out) + 1e-30
    return -jnp.mean(_gauss_logpdf(target, med_out, s_out), axis=-1)
  med_in, std_in, pooled_in = _reference_fit(shadow, in_mask)
  if fix_variance:
    # The released code uses the pooled IN std for both fits.
    s_in = s_out = pooled_in + 1e-30
  else:
    s_in, s_out = std_in + 1e-30, std_out + 1e-30
  llr = _gauss_logpdf(target, med_in, s_in) - _gauss_logpdf(
    target, med_out, s_out
  )
  return jnp.mean(llr, axis=-1)


@functools.partial(jax.jit, static_argnames=("offline", "fix_variance"))
def _lira_reference(shadow, keep, target, *, offline, fix_variance):
  return _reference_score(shadow, keep, ~keep, target, offline, fix_variance)


@functools.partial(jax.jit, static_argnames=("offline", "fix_variance"))
def _lira_reference_loo(scores, keep, *, offline, fix_variance):
  models = jnp.arange(scores.shape[0])

  def one_target(t):
    shadow = (models != t)[:, None]
    return _reference_score(
      scores, keep & shadow, ~keep & shadow, scores[t], offline, fix_variance
    )

  return jax.lax.map(one_target, models)


def _run_reference(fn, *arrays, **kwargs) -> np.ndarray:
  with jax.enable_x64(True):
    args = [
      jnp.asarray(np.asarray(a, np.float64) if a.dtype != np.bool_ else a)
      for a in arrays
    ]
    return np.asarray(fn(*args, **kwargs), dtype=np.float64)


# ---------------------------------------------------------------- LiRA API


def _lira(
  shadow_scores,
  shadow_keep,
  target_scores,
  *,
  offline,
  fix_variance,
  variant,
  name,
):
  _check_variant(variant)
  shadow, keep, target = _check_shadow_target(
    shadow_scores, shadow_keep, target_scores
  )
  _check_lira_counts(
    keep.sum(0),
    (~keep).sum(0),
    offline=offline,
    fix_variance=fix_variance,
    context=f"{name}(variant={variant!r}, fix_variance={fix_variance})",
  )
  if variant == "reference":
    return _run_reference(
      _lira_reference,
      shadow,
      keep,
      target,
      offline=offline,
      fix_variance=bool(fix_variance),
    )
  return _lira_miajax(
    jnp.asarray(shadow, dtype=float),
    jnp.asarray(keep),
    jnp.asarray(target, dtype=float),
    offline=offline,
    fix_variance=bool(fix_variance),
    batch_size=_batch_size(*target.shape),
  )


def lira_online(
  shadow_scores,
  shadow_keep,
  target_scores,
  *,
  fix_variance=False,
  variant="miajax",
):
  """LiRA online: Gaussian likelihood ratio of IN versus OUT shadow scores.

  Carlini, Chien, Nasr, Song, Terzis, Tramèr, "Membership Inference Attacks
  From First Principles", IEEE S&P 2022. Checks the inputs, then (variant
  "miajax") `lira_fit` once and `lira_online_score` for every target.

  Args:
    shadow_scores: float[models, examples, queries], e.g. `scores.logit_scaled`.
    shadow_keep: bool[models, examples], True where the shadow model trained on the example.
    target_scores: float[targets, examples, queries], the attacked models' scores.
    fix_variance: use one pooled variance per query (and per IN/OUT fit) for all
      examples instead of per-example variances; better with few shadow models.
    variant: "miajax" (sound version, module docstring) or "reference"
      (tensorflow/privacy plot.py semantics, float64).

  Returns:
    float[targets, examples]: mean over queries of log N(x; IN fit) - log N(x; OUT fit);
    higher = member. float32 jax array ("miajax") or float64 numpy array ("reference").

  Raises:
    ValueError: bad shapes/dtypes, non-finite scores, or an example with fewer than
      2 IN or 2 OUT shadow scores (1 with fix_variance=True).
  """
  return _lira(
    shadow_scores,
    shadow_keep,
    target_scores,
    offline=False,
    fix_variance=fix_variance,
    variant=variant,
    name="lira_online",
  )


def lira_offline(
  shadow_scores,
  shadow_keep,
  target_scores,
  *,
  fix_variance=False,
  variant="miajax",
):
  """LiRA offline: a test against the OUT shadow scores only.

  Carlini et al., IEEE S&P 2022 (see `lira_online`). Checks the inputs,
  then (variant "miajax") `lira_fit` once and `lira_offline_score` for
  every target.

  Args: as `lira_online` (`shadow_keep` only selects the OUT scores).

  Returns:
    float[targets, examples], higher = member: for "miajax" the one-sided
    mean over queries of log Phi((x - mean_out) / std_out); for "reference" the
    negated mean over queries of the two-sided Gaussian log density of the OUT fit.

  Raises:
    ValueError: as `lira_online`, counting OUT shadow scores only.
  """
  return _lira(
    shadow_scores,
    shadow_keep,
    target_scores,
    offline=True,
    fix_variance=fix_variance,
    variant=variant,
    name="lira_offline",
  )


def global_threshold(target_scores):
  """The global-threshold baseline: the score itself, averaged over queries.

  Args:
    target_scores: float[targets, examples, queries].

  Returns:
    float[targets, examples], higher = member (same as the reference's
    negated prediction).
  """
  target = _as_real(target_scores, "target_scores", 3)
  return _mean_queries(jnp.asarray(target, dtype=float))


@jax.jit
def _mean_queries(x):
  return jnp.mean(x, axis=-1)


# ------------------------------------------------------------------- RMIA


def _pr_offline(mean_out, a):
  return 0.5 * ((1 + a) * mean_out + (1 - a))


def _rank_1d(ratio_x, ratio_z, gamma):
  """Fraction of z with ratio(x) / ratio(z) > gamma, i.e. ratio(z) < ratio(x) / gamma.

  ratio_x float[examples], ratio_z float[population] -> float[examples].
  """
  # Ratios are >= 0 and never nan; there (abs turns -0.0 into +0.0) the IEEE bit
  # patterns read as signed integers keep the order, and XLA's CPU sort is
  # several times faster on integers than on floats.
  key = jnp.dtype(f"int{8 * ratio_z.dtype.itemsize}")
  ordered = jax.lax.sort(jax.lax.bitcast_convert_type(jnp.abs(ratio_z), key))
  queries = jax.lax.bitcast_convert_type(
    jnp.abs(ratio_x / gamma).astype(ratio_z.dtype), key
  )
  below = jnp.searchsorted(ordered, queries, side="left")
  return below.astype(ratio_x.dtype) / ratio_z.shape[-1]


# [targets, examples] and [targets, population] -> [targets, examples].
_rank_against_population = jax.vmap(_rank_1d, in_axes=(0, 0, None))


class RmiaFit(NamedTuple):
  """RMIA's reference-model averages (`rmia_fit`).

  Attributes:
    pr_x: float[examples], Pr(x): the reference models' mean probability
      (online) or `((1 + a) * mean_OUT + (1 - a)) / 2` (offline).
    pr_z: float[population], Pr(z) of the population samples, or None when
      the examples themselves serve as the population.
  """

  pr_x: jax.Array
  pr_z: jax.Array | None


def _check_probs_3d(x, name, models=None):
  x = _as_float(x)
  if x.ndim != 3 or (models is not None and x.shape[0] != models):
    want = "models" if models is None else str(models)
    raise ValueError(
      f"{name} must be float[{want}, examples, queries], got shape {x.shape}"
    )
  return x


@jax.jit
def rmia_fit(
  ref_probs, keep=None, population_probs=None, *, a=0.3, offline=False
) -> RmiaFit:
  """Fit RMIA's Pr(x) (and Pr(z)) once from the reference models.

  Zarifzadeh, Liu, Cheng, Shokri, "Low-Cost High-Power Membership Inference
  Attacks", ICML 2024. Probabilities are averaged over queries first. Pure
  `jax.numpy`: jit- and vmap-able (`a` and `offline` may be traced); no
  value checks.

  Args:
    ref_probs: float[models, examples, queries], the reference models'
      true-label probabilities p_y (e.g. `scores.confidence`).
    keep: bool[models, examples], True where a reference model trained on the
      example; needed offline (may be None otherwise).
    population_probs: None (the examples stand in for the population) or
      float[models, population, queries], the same reference models'
      probabilities on samples none of them trained on. Pr(z) is their mean
      over all models (offline: with the same `a` correction).
    a: offline correction, Pr(x) = ((1 + a) * mean_OUT + (1 - a)) / 2.
    offline: use only the OUT reference models for Pr(x).

  Returns:
    An `RmiaFit`.
  """
  p = jnp.mean(_check_probs_3d(ref_probs, "ref_probs"), axis=-1)
  pr_all = jnp.mean(p, axis=0)
  if keep is None:
    if not (isinstance(offline, bool) and not offline):
      raise ValueError(
        "rmia_fit needs keep unless offline is the Python value False "
        "(offline=True, or offline traced by jit)"
      )
    pr_x = pr_all
  else:
    keep = jnp.asarray(keep)
    if keep.dtype != jnp.bool_ or keep.shape != p.shape:
      raise ValueError(
        f"keep must be bool[models, examples] = {p.shape}, got "
        f"{keep.dtype}{list(keep.shape)}"
      )
    out = ~keep
    # max(., 1): an example without OUT models is only valid online.
    mean_out = jnp.sum(jnp.where(out, p, 0), axis=0) / jnp.maximum(
      jnp.sum(out, axis=0), 1
    )
    pr_x = jnp.where(offline, _pr_offline(mean_out, a), pr_all)
  pr_z = None
  if population_probs is not None:
    pz = _check_probs_3d(population_probs, "population_probs", p.shape[0])
    pr_z = jnp.mean(jnp.mean(pz, axis=-1), axis=0)
    pr_z = jnp.where(offline, _pr_offline(pr_z, a), pr_z)
  return RmiaFit(pr_x, pr_z)


def _mean_target_probs(x, size, name, what):
  x = _as_float(x)
  if x.ndim == 1:
    x = x[:, None]
  if x.ndim != 2 or x.shape[0] != size:
    raise ValueError(
      f"{name} must be float[{size}, queries] [{what}, queries] (one target; "
      f"jax.vmap for several), got shape {x.shape}"
    )
  return jnp.mean(x, axis=-1)


@jax.jit
def rmia_score(
  fit: RmiaFit, target_probs, target_population_probs=None, *, gamma=2.0
) -> jax.Array:
  """RMIA score of one target: the fraction of population samples it dominates.

  Zarifzadeh, Liu, Cheng, Shokri, "Low-Cost High-Power Membership Inference
  Attacks", ICML 2024: with ratio(x) = p(x|theta) / Pr(x), the fraction of
  population samples z with ratio(x) / ratio(z) > gamma; computed by sorting
  ratio(z) once and binary-searching ratio(x) / gamma (O((N + Z) log Z)).
  Jit- and vmap-able: `jax.vmap(rmia_score, in_axes=(None, 0, 0))(fit,
  targets, target_populations)` scores many targets (vmap maps keyword
  arguments, so bind `gamma` with `functools.partial` there).

  Args:
    fit: from `rmia_fit`.
    target_probs: float[examples, queries] (or float[examples]), the target
      model's true-label probabilities; averaged over queries.
    target_population_probs: float[population, queries], the target's
      probabilities on the population samples; None exactly when the fit has
      no population (the examples' own ratios are the population then).
    gamma: a sample z counts when ratio(x) / ratio(z) > gamma.

  Returns:
    float[examples] in [0, 1], higher = member.
  """
  p_x = _mean_target_probs(
    target_probs, fit.pr_x.shape[0], "target_probs", "examples"
  )
  ratio_x = p_x / jnp.maximum(fit.pr_x, _TINY)
  if (fit.pr_z is None) != (target_population_probs is None):
    raise ValueError(
      "target_population_probs must be given exactly when rmia_fit got "
      "population_probs"
    )
  if fit.pr_z is None:
    ratio_z = ratio_x
  else:
    p_z = _mean_target_probs(
      target_population_probs,
      fit.pr_z.shape[0],
      "target_population_probs",
      "population",
    )
    ratio_z = p_z / jnp.maximum(fit.pr_z, _TINY)
  return _rank_1d(ratio_x, ratio_z, gamma)


@jax.jit
def _rmia_targets(fit, p_target, pz_target, gamma):
  axes = (None, 0, None if pz_target is None else 0)
  score = functools.partial(rmia_score, gamma=gamma)
  return jax.vmap(score, in_axes=axes)(fit, p_target, pz_target)


@functools.partial(jax.jit, static_argnames=("offline",))
def _rmia_loo_core(p, keep, pz, a, gamma, *, offline):
  models = p.shape[0]
  if offline:
    out = (~keep).astype(p.dtype)
    sum_out = jnp.sum(p * out, axis=0)
    n_out = jnp.sum(out, axis=0)
    pr_x = _pr_offline((sum_out - p * out) / jnp.maximum(n_out - out, 1), a)
  else:
    pr_x = (jnp.sum(p, axis=0) - p) / (models - 1)
  ratio_x = p / jnp.maximum(pr_x, _TINY)
  if pz is None:
    ratio_z = ratio_x
  else:
    pr_z = (jnp.sum(pz, axis=0) - pz) / (models - 1)
    if offline:
      pr_z = _pr_offline(pr_z, a)
    ratio_z = pz / jnp.maximum(pr_z, _TINY)
  return _rank_against_population(ratio_x, ratio_z, gamma)


def _as_prob(x, name):
  arr = _as_real(x, name, 3)
  if arr.size and (arr.min() < 0 or arr.max() > 1 + 1e-6):
    raise ValueError(
      f"{name} must hold true-label probabilities in [0, 1] (e.g. scores.confidence), "
      f"got values in [{arr.min():.4g}, {arr.max():.4g}]"
    )
  return arr


def _check_rmia_params(a, gamma):
  if not 0 <= a <= 1:
    raise ValueError(f"a must be in [0, 1], got {a}")
  if not gamma > 0:
    raise ValueError(f"gamma must be > 0, got {gamma}")


def rmia(
  shadow_conf,
  shadow_keep,
  target_conf,
  *,
  a=0.3,
  gamma=2.0,
  population_conf=None,
  offline=False,
):
  """RMIA on true-label probabilities: checks, then `rmia_fit`, `rmia_score`.

  Zarifzadeh, Liu, Cheng, Shokri, "Low-Cost High-Power Membership Inference
  Attacks", ICML 2024.

  Args:
    shadow_conf: float[models, examples, queries], reference models' p_y in [0, 1]
      (e.g. `scores.confidence`); averaged over queries.
    shadow_keep: bool[models, examples]; used offline (OUT models only).
    target_conf: float[targets, examples, queries], the attacked models' p_y.
    a: offline approximation Pr(x) = ((1 + a) * mean_OUT + (1 - a)) / 2.
    gamma: a population sample z counts when ratio(x) / ratio(z) > gamma.
    population_conf: None (the examples themselves are the population) or a pair
      (float[models, population, queries] of the reference models,
      float[targets, population, queries] of the targets) on samples that no
      model trained on; their Pr(z) is the mean over all reference models
      (with the same offline approximation when offline=True).
    offline: use only OUT reference models for Pr(x).

  Returns:
    float[targets, examples] in [0, 1]: fraction of population samples the
    example dominates; higher = member. float32 jax array.

  Raises:
    ValueError: bad shapes/dtypes, probabilities outside [0, 1], non-finite values,
      or (offline) an example without OUT reference models.
  """
  _check_rmia_params(a, gamma)
  shadow, keep, target = _check_shadow_target(
    shadow_conf,
    shadow_keep,
    target_conf,
    names=("shadow_conf", "shadow_keep", "target_conf"),
  )
  shadow = _as_prob(shadow, "shadow_conf")
  target = _as_prob(target, "target_conf")
  if offline:
    _check_counts(
      (~keep).sum(0),
      1,
      "OUT",
      "rmia(offline=True)",
      "Train more reference models or use offline=False.",
    )
  pz_shadow = pz_target = None
  if population_conf is not None:
    if (
      not isinstance(population_conf, (tuple, list))
      or len(population_conf) != 2
    ):
      raise ValueError(
        "population_conf must be a pair (reference probabilities "
        "[models, population, queries], target probabilities "
        "[targets, population, queries])"
      )
    zs = _as_prob(population_conf[0], "population_conf[0]")
    zt = _as_prob(population_conf[1], "population_conf[1]")
    if (
      zs.shape[0] != shadow.shape[0]
      or zs.shape[2] != shadow.shape[2]
      or zs.shape[1] < 1
    ):
      raise ValueError(
        f"population_conf[0] must have shape [{shadow.shape[0]}, population, "
        f"{shadow.shape[2]}], got {zs.shape}"
      )
    if zt.shape != (target.shape[0],) + zs.shape[1:]:
      raise ValueError(
        f"population_conf[1] must have shape "
        f"{(target.shape[0],) + zs.shape[1:]}, got {zt.shape}"
      )
    pz_shadow = jnp.asarray(zs, dtype=float)
    pz_target = jnp.asarray(zt, dtype=float)
  fit = rmia_fit(
    jnp.asarray(shadow, dtype=float),
    jnp.asarray(keep),
    pz_shadow,
    a=float(a),
    offline=bool(offline),
  )
  return _rmia_targets(
    fit, jnp.asarray(target, dtype=float), pz_target, float(gamma)
  )


# ---------------------------------------------------------- leave-one-out


def leave_one_out(
  scores,
  keep,
  *,
  attack="lira_online",
  fix_variance=False,
  variant="miajax",
  balanced=True,
  a=0.3,
  gamma=2.0,
  population=None,
):
  """Every model in turn is the target, all the other models its shadows.

  Args:
    scores: float[models, examples, queries]: LiRA scores (e.g. `logit_scaled`) for the
      LiRA attacks and global_threshold, true-label probabilities for the RMIA ones.
    keep: bool[models, examples]; also the membership labels of the pooled ROC.
    attack: one of "lira_online", "lira_offline", "global_threshold", "rmia",
      "rmia_offline".
    fix_variance: LiRA only (see `lira_online`).
    variant: "miajax" or "reference" (LiRA; global_threshold is the same in both;
      RMIA has only "miajax").
    balanced: LiRA with variant="miajax" only. True (default): for target t each
      example's other group (OUT if t trained on it, else IN) also leaves out one
      model (`leave_one_out_partners`), so the IN and OUT fits lose one model each
      and a design with equal IN counts stays balanced. False: all other
      models are shadows, and the fit of the target's own group always has one
      model fewer, which biases the test against members under the null (module
      docstring).
    a, gamma: RMIA parameters (see `rmia`).
    population: RMIA only: None (the examples stand in for the population) or
      float[models, population, queries], every model's probabilities on samples
      that no model trained on.

  Returns:
    float[models, examples], row t = the attack on model t with the others as
    shadows; higher = member. Pool it with `keep` for one ROC.

  Raises:
    ValueError: bad arguments, or an example left with too few IN/OUT shadow
      scores once a target is removed (LiRA: 2, or 1 with fix_variance; so an
      example needs 3 IN models if any model trained on it).
  """
  if attack not in ATTACKS:
    raise ValueError(f"attack must be one of {ATTACKS}, got {attack!r}")
  _check_variant(variant)
  x = _as_real(scores, "scores", 3)
  if x.shape[0] < 2:
    raise ValueError(
      f"leave_one_out needs at least 2 models, got scores of shape {x.shape}"
    )
  k = _as_keep(keep, "keep", x.shape[:2])
  is_lira = attack.startswith("lira")
  if fix_variance and not is_lira:
    raise ValueError(
      f"fix_variance applies to the LiRA attacks only, not {attack!r}"
    )
  if population is not None and not attack.startswith("rmia"):
    raise ValueError(
      f"population applies to the RMIA attacks only, not {attack!r}"
    )

  if attack == "global_threshold":
    return global_threshold(x)

  n_in, n_out = k.sum(0), (~k).sum(0)
  # The fewest IN (OUT) shadows any target leaves an example with.
  loo_in, loo_out = n_in - (n_in > 0), n_out - (n_out > 0)
  if is_lira:
    offline = attack == "lira_offline"
    _check_lira_counts(
      loo_in,
      loo_out,
      offline=offline,
      fix_variance=fix_variance,
      context=f"leave_one_out({attack!r}, variant={variant!r}, fix_variance={fix_variance}) "
      "after removing the target,",
      keep_name="keep",
    )
    if variant == "reference":
      return _run_reference(
        _lira_reference_loo,
        x,
        k,
        offline=offline,
        fix_variance=bool(fix_variance),
      )
    return _lira_miajax_loo(
      jnp.asarray(x, dtype=float),
      jnp.asarray(k),
      offline=offline,
      fix_variance=bool(fix_variance),
      balanced=bool(balanced),
      batch_size=_batch_size(*x.shape),
    )

  if variant != "miajax":
    raise ValueError(f"{attack} has only variant='miajax', got {variant!r}")
  _check_rmia_params(a, gamma)
  x = _as_prob(x, "scores")
  offline = attack == "rmia_offline"
  if offline:
    _check_counts(
      loo_out,
      1,
      "OUT",
      f"leave_one_out({attack!r}) after removing the target,",
      "Train more models.",
      keep_name="keep",
    )
  pz = None
  if population is not None:
    z = _as_prob(population, "population")
    if z.shape[0] != x.shape[0] or z.shape[2] != x.shape[2] or z.shape[1] < 1:
      raise ValueError(
        f"population must have shape [{x.shape[0]}, population, "
        f"{x.shape[2]}], got {z.shape}"
      )
    pz = jnp.mean(jnp.asarray(z, dtype=float), axis=-1)
  return _rmia_loo_core(
    jnp.mean(jnp.asarray(x, dtype=float), axis=-1),
    jnp.asarray(k),
    pz,
    float(a),
    float(gamma),
    offline=offline,
  )
