"""Eager input checks of the attack wrappers, naming the bad argument.

The wrappers run these on concrete arrays before calling a core; the
jit-able cores check shapes only and share just `_as_float`, the dtype
promotion.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax.numpy as jnp
import numpy as np

VARIANTS = ("miajax", "reference")
# What a wrapper does with an example that has too few shadow scores.
TOO_FEW_SHADOWS = ("raise", "nan")


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


def _nan_for_too_few(too_few_shadows) -> bool:
  """True for "nan" (score what can be scored), False for "raise"."""
  if isinstance(too_few_shadows, str) and too_few_shadows in TOO_FEW_SHADOWS:
    return too_few_shadows == "nan"
  raise ValueError(
    f"too_few_shadows must be one of {TOO_FEW_SHADOWS}, got {too_few_shadows!r}"
  )


def _lira_scorable(n_in, n_out, *, offline, fix_variance) -> np.ndarray:
  """bool[examples]: where `_check_lira_counts` would pass, example by example.

  With fix_variance the pooled variance of the scorable examples also needs
  a degree of freedom; without one no example is scorable.
  """
  need = _lira_need(fix_variance)
  groups = [n_out] if offline else [n_in, n_out]
  ok = np.logical_and.reduce([c >= need for c in groups])
  if fix_variance and any(np.sum(np.maximum(c[ok] - 1, 0)) < 1 for c in groups):
    ok[:] = False
  return ok


def _on_columns(ok, score, targets: int, reference: bool = False):
  """`score(columns)` of the examples where ok, NaN at the others.

  ok: None (every example, `score(None)` as is) or bool[examples].
  score(columns): float[targets, len(columns)] on those examples only, so
  nothing of an unscorable example (not even its data in a pooled
  variance or as RMIA's population) reaches the others' scores.
  Returns float[targets, examples]: numpy float64 when `reference`, else
  jax (float32 when nothing is scorable).
  """
  if ok is None or ok.all():
    return score(None)
  shape = (targets, ok.size)
  if not ok.any():
    return (
      np.full(shape, np.nan)
      if reference
      else jnp.full(shape, jnp.nan, jnp.result_type(float))
    )
  columns = np.flatnonzero(ok)
  got = score(columns)
  if isinstance(got, np.ndarray):
    out = np.full(shape, np.nan, got.dtype)
    out[:, columns] = got
    return out
  return jnp.full(shape, jnp.nan, got.dtype).at[:, columns].set(got)


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


def _check_seed(seed) -> int:
  if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
    raise ValueError(f"seed must be an int, got {type(seed).__name__}")
  if seed < 0:
    raise ValueError(f"seed must be >= 0, got {seed}")
  return int(seed)


def _as_float(x):
  x = jnp.asarray(x)
  # Integer and half-precision scores are computed in (at least) float32.
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _align_target(target, shape: tuple, name: str = "target_scores"):
  """One target's scores as ``float[examples, queries]`` like a fit's ``shape`` (1-D if one query)."""
  target = _as_float(target)
  if target.shape == shape:
    return target
  if shape[1] == 1 and target.shape == shape[:1]:
    return target[:, None]
  raise ValueError(
    f"{name} must be float{list(shape)} [examples, queries] like the fit "
    f"(one target; jax.vmap for several), got shape {target.shape}"
  )
