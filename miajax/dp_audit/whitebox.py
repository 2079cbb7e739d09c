"""White-box DP-SGD audit with Dirac gradient canaries (Nasr et al., USENIX Security 2023).

Threat model: the auditor crafts gradients, not inputs. Canary k is a
gradient of ``magnitude`` on one parameter coordinate, zero elsewhere;
model m's data set holds it with probability 1/2 (coins independent per
model and canary); an included canary joins a step's batch of per-example
gradients with probability ``rate`` (Poisson; 1 for full-batch DP-SGD), and
the recipe's own gradient processor (``config.defense.aggregate_grads``:
miajax's per-example clipping, summing and Gaussian noise) aggregates it
like any example's. The auditor sees the final parameters. Each coordinate
is one that no data example moves (by default a first-layer weight of an
input feature that is zero in every example), so with SGD at a constant
learning rate its final value is its initial value minus ``lr / batch``
times the sum over steps of the canary's clipped contribution plus that
coordinate's noise: the score ``theta_0 - theta_T`` is that sum, and
canaries on distinct coordinates are independent trials. With ``rate = 1``
the sum is a sufficient statistic of every step's update, so seeing the
final model costs the auditor nothing against seeing every step; with
``rate < 1`` an auditor of every step could weigh each step's likelihood
ratio, and the final sum is weaker (sound, less tight).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from miajax import hyperparams as hyperparams_lib
from miajax.defenses.training import Defense, _check_fields

__all__ = [
  "GradientCanary",
  "canary_coins",
  "gradient_canary_audit",
  "unused_input_coordinates",
]


def _leaf_name(path) -> str:
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
  return "/".join(parts)


def canary_coins(base: int, model, k: int):
  """``bool[k]``: which of the ``k`` canaries model ``model`` includes (fair coins).

  ``fold_in(PRNGKey(base), model)``: the same bits inside the training
  program (``model`` traced) and on the host, where the auditor reads them.
  """
  key = jax.random.fold_in(
    jax.random.PRNGKey(base), jnp.asarray(model, jnp.int32)
  )
  return jax.random.bernoulli(key, 0.5, (k,))


@dataclasses.dataclass(frozen=True)
class GradientCanary(Defense):
  """Adds Dirac canary gradients to the per-example gradients ``inner`` aggregates.

  Canary k is one more "example" whose gradient is ``magnitude`` at
  ``coordinates[k]`` and zero elsewhere; model m's data set holds canary k
  iff ``canary_coins(coin_base, model[m], K)[k]``, and an included canary
  is in a step's batch with probability ``rate`` (independently per canary
  and step). Canaries on distinct coordinates that no data example moves
  are independent trials: each coordinate gets its own noise.

  Fields: ``inner`` (the gradient processor audited, e.g.
  :func:`miajax.defenses.dp_sgd`), ``coordinates`` (``((leaf, flat index),
  ...)``; a leaf is its path, keys joined by ``/``, e.g. ``"w0"`` or
  ``"Dense_0/kernel"``), ``magnitude`` (before clipping), ``model`` (the
  model's index, per model), ``coin_base`` (seed of the coins), ``rate``.
  ``accounting`` is ``inner``'s.
  """

  inner: Defense
  coordinates: tuple
  magnitude: float
  model: float
  coin_base: int = 0
  rate: float = 1.0
  name = "gradient_canary"
  per_model_fields = ("model",)

  def __post_init__(self):
    if getattr(self.inner, "aggregate_grads", None) is None:
      raise ValueError(
        f"inner must be a gradient processor (e.g. dp_sgd), got {self.inner!r}"
      )
    try:
      coords = tuple((str(leaf), int(i)) for leaf, i in self.coordinates)
    except (TypeError, ValueError):
      coords = ()
    if not coords or len(set(coords)) != len(coords):
      raise ValueError(
        f"coordinates must be distinct (leaf, index) pairs, got {self.coordinates!r}"
      )
    object.__setattr__(self, "coordinates", coords)
    _check_fields(
      self,
      magnitude=dict(low=0.0, low_open=True),
      model=dict(low=0.0, high=2.0**24),
      rate=dict(low=0.0, high=1.0, low_open=True, high_open=False),
    )

  def describe(self):
    return {**super().describe(), "inner": self.inner.describe()}

  def aggregate_grads(self, per_example_grads, key):
    k = len(self.coordinates)
    scale = self.magnitude * canary_coins(self.coin_base, self.model, k)
    if self.rate < 1:
      sampled = jax.random.bernoulli(
        jax.random.fold_in(key, 0xCA), self.rate, (k,)
      )
      scale = scale * sampled
    flat, treedef = jax.tree_util.tree_flatten_with_path(per_example_grads)
    names = [_leaf_name(p) for p, _ in flat]
    missing = sorted({leaf for leaf, _ in self.coordinates} - set(names))
    if missing:
      raise ValueError(f"no parameter {missing[0]!r}; parameters: {names}")
    rows = []
    for name, (_, leaf) in zip(names, flat):
      mine = [(c, i) for c, (n, i) in enumerate(self.coordinates) if n == name]
      row = jnp.zeros((k, int(np.prod(leaf.shape[1:]))), leaf.dtype)
      if mine:
        which = np.array([c for c, _ in mine])
        where = np.array([i for _, i in mine])
        row = row.at[which, where].set(scale[which].astype(leaf.dtype))
      rows.append(jnp.concatenate([leaf, row.reshape((k,) + leaf.shape[1:])]))
    return self.inner.aggregate_grads(
      jax.tree_util.tree_unflatten(treedef, rows), key
    )

  @property
  def accounting(self):
    return self.inner.accounting


def unused_input_coordinates(
  config, x, *, num_classes: int
) -> list[tuple[str, int]]:
  """Every first-layer weight that no example of ``x`` moves, as ``(leaf, index)``.

  The gradient of a first-layer weight from input feature p is ``x_p`` times
  the unit's error, hence zero for every example with ``x_p = 0``; a
  feature that is zero in all of ``x`` gives one such coordinate per unit,
  moved only by canaries and noise. The first layer is the first parameter
  leaf of shape ``[features, units]`` (a Dense kernel, or
  :func:`fixed_init_mlp`'s ``w0``). Digits: 3 blank pixels.
  """
  from miajax.engine import recipe

  x = np.asarray(x, np.float32)
  flat_x = x.reshape(len(x), -1)
  zero = np.flatnonzero(np.all(flat_x == 0, axis=0))
  if zero.size == 0:
    raise ValueError(
      "x has no input feature that is zero in every example; pass coordinates="
    )
  fns = recipe.model_fns(config, num_classes)
  params = fns.init(jax.random.PRNGKey(0), jnp.zeros((1,) + x.shape[1:]))[
    "params"
  ]
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if leaf.ndim == 2 and leaf.shape[0] == flat_x.shape[1]:
      units = int(leaf.shape[1])
      name = _leaf_name(path)
      return [(name, int(p) * units + j) for p in zero for j in range(units)]
  raise ValueError(
    f"no parameter of shape [{flat_x.shape[1]}, units] (a first layer on the "
    "flattened input); pass coordinates="
  )


def _coordinate_values(params, coordinates) -> np.ndarray:
  """``float64[models, canaries]``: the coordinates of parameters stacked ``[models, ...]``."""
  leaves = {
    _leaf_name(path): np.asarray(value, np.float64)
    for path, value in jax.tree_util.tree_flatten_with_path(params)[0]
  }
  cols = []
  for leaf, index in coordinates:
    if leaf not in leaves:
      raise ValueError(f"no parameter {leaf!r}")
    arr = leaves[leaf]
    cols.append(arr.reshape(arr.shape[0], -1)[:, index])
  return np.stack(cols, 1)


def _initial_values(config, num_classes, input_shape, num_models, coords):
  """``float64[models, canaries]``: the coordinates before training, from the engine's own per-model keys."""
  from miajax.engine import batches, recipe

  fns = recipe.model_fns(config, num_classes)
  x0 = jnp.zeros((1, *input_shape), jnp.float32)
  init = jax.jit(
    jax.vmap(lambda key: fns.init(jax.random.fold_in(key, 0), x0)["params"])
  )
  keys = batches.model_keys(config.seed, np.arange(num_models))
  return _coordinate_values(init(keys), coords)


def gradient_canary_audit(
  config,
  x,
  y,
  *,
  num_models: int,
  num_classes: int,
  delta: float,
  coordinates=None,
  max_canaries: int = 64,
  magnitude: float | None = None,
  rate: float | None = None,
  confidence: float = 0.95,
  accountant: str = "pld",
  seed: int = 0,
  lowering=None,
  claimed_defense=None,
  claimed_sample_rate: float | None = None,
) -> dict:
  """White-box audit of a DP-SGD recipe with Dirac gradient canaries (module docstring).

  All ``num_models`` models train on all of ``(x, y)`` in one
  :func:`miajax.train_models` call; model m holds canary k iff
  ``canary_coins(seed, m, K)[k]``. Every (model, canary) pair is one
  independent trial (distinct coordinates no data moves, independent noise
  on each), so ``num_models * K`` trials feed the bounds: Clopper-Pearson
  (jax-privacy, Bonferroni; assumes nothing) and GDP
  (:func:`~miajax.dp_audit.epsilon_lower_bound_gdp`, Nasr et al. 2023;
  assumes a Gaussian trade-off curve, exact at ``rate = 1``), at ``delta``.

  Args:
    config: a :class:`miajax.TrainConfig` whose ``defense`` is a DP-SGD
      gradient processor; plain SGD at a constant rate makes each score the
      exact sum of its coordinate's noisy gradients.
    x: ``float[examples, ...]``; y: ``int[examples]``.
    coordinates: ``[(leaf, flat index), ...]``; default the first
      ``max_canaries`` of :func:`unused_input_coordinates`.
    magnitude: each canary gradient before clipping; default 4 x the
      defense's ``l2_norm_clip`` (so that clipping matters).
    rate: a canary's per-step sampling probability; default the rate the
      accountant is told, ``batch_size / examples``.
    accountant: ``"pld"`` (default: the tighter claim) or ``"rdp"``.
    claimed_defense, claimed_sample_rate: what the claim is computed from
      (default: the trained defense and the true rate); tests use them to
      claim one thing and run another.

  Returns:
    dict: ``clopper_pearson`` and ``gdp`` (the bounds' dicts),
    ``accounting``, ``claimed_epsilon``, ``coordinates``, ``num_canaries``,
    ``magnitude``, ``rate``, ``scores float64[models, canaries]``
    (``theta_0 - theta_T`` at each coordinate), ``include bool[models,
    canaries]``, ``train_s`` (the :func:`miajax.train_models` call),
    ``total_s``.
  """
  import miajax
  from miajax.dp_audit.bounds import epsilon_lower_bound_canaries
  from miajax.dp_audit.gdp import epsilon_lower_bound_gdp
  from miajax.engine import batches

  t0 = time.perf_counter()
  if num_models < 4:
    raise ValueError(f"num_models must be >= 4, got {num_models}")
  inner = config.defense
  if getattr(inner, "aggregate_grads", None) is None:
    raise ValueError("config.defense must be a DP-SGD gradient processor")
  claim = inner if claimed_defense is None else claimed_defense
  if getattr(claim, "accounting", None) is None:
    raise ValueError("the claimed defense has no accounting")
  x = np.asarray(x, np.float32)
  y = np.asarray(y, np.int32)
  if coordinates is None:
    coordinates = unused_input_coordinates(config, x, num_classes=num_classes)
    coordinates = coordinates[: int(max_canaries)]
  if magnitude is None:
    magnitude = 4.0 * float(getattr(inner, "l2_norm_clip", 1.0))
  keep = np.ones((num_models, len(y)), bool)
  true_rate, steps = batches.dp_sampling(keep, config.batch_size, config.epochs)
  rate = true_rate if rate is None else float(rate)
  accounting = claim.accounting(
    sample_rate=true_rate
    if claimed_sample_rate is None
    else claimed_sample_rate,
    steps=steps,
    delta=delta,
    accountant=accountant,
  )
  claimed = accounting["epsilon"]
  if isinstance(claimed, list):
    raise ValueError("a per-model noise multiplier has no single claim")
  canary = GradientCanary(
    inner,
    tuple(coordinates),
    float(magnitude),
    hyperparams_lib.per_model(np.arange(num_models, dtype=np.float32)),
    int(seed),
    min(rate, 1.0),
  )
  coords = canary.coordinates
  k = len(coords)
  include = np.asarray(
    jax.vmap(lambda m: canary_coins(int(seed), m, k))(jnp.arange(num_models))
  )
  audited = dataclasses.replace(config, defense=canary)
  theta0 = _initial_values(config, num_classes, x.shape[1:], num_models, coords)
  t1 = time.perf_counter()
  res = miajax.train_models(
    audited, x, y, keep, num_classes=num_classes, lowering=lowering
  )
  t2 = time.perf_counter()
  scores = theta0 - _coordinate_values(res.variables["params"], coords)
  if not np.all(np.isfinite(scores)) or np.any(res.diverged):
    raise FloatingPointError("training diverged: no canary scores")
  ins, outs = scores[include], scores[~include]
  return {
    "clopper_pearson": epsilon_lower_bound_canaries(
      ins, outs, delta=delta, confidence=confidence
    ),
    "gdp": epsilon_lower_bound_gdp(
      ins, outs, delta=delta, confidence=confidence
    ),
    "accounting": accounting,
    "claimed_epsilon": float(claimed),
    "coordinates": [list(c) for c in coords],
    "num_canaries": k,
    "magnitude": float(magnitude),
    "rate": float(rate),
    "true_sample_rate": float(true_rate),
    "steps": int(steps),
    "num_models": int(num_models),
    "scores": scores,
    "include": include,
    "train_s": t2 - t1,
    "total_s": time.perf_counter() - t0,
    "threat_model": "white box, final parameters; Dirac gradient canaries",
  }
