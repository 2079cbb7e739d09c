"""Querying trained models: logits of every model on every example and query view."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from miajax import defenses as defenses_lib
from miajax.engine import devices as devices_lib
from miajax.engine import identity
from miajax.engine import recipe
from miajax.engine.lowering import Lowering, resolve_lowering

__all__ = ["QUERY_SETS", "query_views", "predict"]

QUERY_SETS = ("identity", "mirror", "shifts", "shifts18")


def query_views(x, queries: str):
  """Augmented copies ``[queries, examples, ...]`` of ``x: [examples, H, W, C]``.

  ``identity``: 1 query; ``mirror``: original + horizontal flip (the LiRA
  release); ``shifts``/``shifts18``: {original, flip} x reflect-padded shifts
  by {-4, 0, 4}^2 pixels (18 queries, the LiRA paper).  Query 0 is always the
  un-augmented input.
  """
  if queries not in QUERY_SETS:
    raise ValueError(
      f"queries must be one of {list(QUERY_SETS)}, got {queries!r}"
    )
  if queries == "identity":
    return x[None]
  if x.ndim != 4:
    raise ValueError(
      f"queries={queries!r} needs images [N, H, W, C], got shape {x.shape}"
    )
  flips = [x, x[:, :, ::-1]]
  if queries == "mirror":
    return jnp.stack(flips)
  pad = 4
  h, w = x.shape[1:3]
  views = []
  for img in flips:
    padded = jnp.pad(
      img, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect"
    )
    for dy in (0, -4, 4):
      for dx in (0, -4, 4):
        views.append(
          padded[:, pad + dy : pad + dy + h, pad + dx : pad + dx + w]
        )
  return jnp.stack(views)


@functools.lru_cache(maxsize=16)
def _predict_fn(fns: recipe.ModelFns, per_model: bool):
  one = lambda variables, xb: fns.apply(variables, xb, train=False)
  return jax.jit(one if per_model else jax.vmap(one, in_axes=(0, None)))


def predict(
  config: recipe.TrainConfig,
  variables,
  x,
  *,
  num_classes: int,
  queries: str = "identity",
  batch_size: int = 1024,
  lowering: Lowering | None = None,
  output=None,
  random_x=None,
  key=None,
) -> np.ndarray:
  """Logits ``float32[models, examples, queries, classes]`` of stacked models.

  With ``output``, what an attacker of the defended models sees instead:
  ``miajax.defenses.apply_output(output, logits, key, random_logits=...)``,
  log-probabilities of the same shape.

  Args:
    config: the :class:`miajax.TrainConfig` the models were trained with (any
      model: registry, Flax module or ``(init, apply)`` pair).
    variables: variables with a leading ``[models]`` axis (``TrainResult.variables``).
    x: ``float[examples, ...]`` inputs.
    queries: one of ``QUERY_SETS``; query 0 is the un-augmented input.
    batch_size: examples per compiled call.
    lowering: a :class:`miajax.Lowering` (default: decided for this backend,
      as in training).
    output: an optional output transform (:class:`miajax.OutputTransform`,
      built-in or your own, or a ``chain`` of them) applied to every model's
      outputs.
    random_x: ``float[examples, ...]`` random inputs, for transforms that
      need the models' logits on them (``hamp_output``); they go through
      the same query views as ``x``.
    key: a ``jax.random`` key for randomised output transforms.
  """
  if output is None:
    return _logits(
      config, variables, x, num_classes, queries, batch_size, lowering
    )
  raw = functools.partial(
    _logits,
    config,
    variables,
    num_classes=num_classes,
    queries=queries,
    batch_size=batch_size,
    lowering=lowering,
  )
  random_logits = None
  if defenses_lib.needs_random_logits(output):  # validates it too
    if random_x is None or np.shape(random_x) != np.shape(x):
      raise ValueError(
        f"output {defenses_lib.short_name(output)} needs random_x: random "
        f"inputs of x's shape {np.shape(x)}, got "
        f"{None if random_x is None else np.shape(random_x)}"
      )
    random_logits = raw(random_x)
  view = defenses_lib.apply_output(
    output, raw(x), key, random_logits=random_logits
  )
  return np.asarray(view, np.float32)


def _check(config, variables, x, queries, batch_size):
  if (
    isinstance(batch_size, bool)
    or not isinstance(batch_size, (int, np.integer))
    or batch_size < 1
  ):
    raise ValueError(
      f"batch_size must be a positive integer, got {batch_size!r}"
    )
  if not isinstance(config, recipe.TrainConfig):
    raise ValueError(
      "config must be a miajax.TrainConfig (the call is predict(config, "
      f"variables, x, num_classes=...)), got {type(config).__name__}"
    )
  x = np.asarray(x, np.float32)
  if x.shape[0] == 0:
    raise ValueError("x must contain at least one example")
  query_views(x[:1], queries)  # validates queries against the input's shape
  config.validate()
  leaves = jax.tree_util.tree_leaves(variables)
  if not leaves or any(np.ndim(a) == 0 for a in leaves):
    raise ValueError(
      "variables must be stacked on a leading [models] axis (e.g. "
      f"TrainResult.variables), got {type(variables).__name__} with "
      f"{len(leaves)} array leaves"
    )
  return x, leaves[0].shape[0]


def _leaf_shapes(tree) -> dict[str, tuple[int, ...]]:
  """``{"params/Dense_0/kernel": shape}``: the same names for dicts and FrozenDicts."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = "/".join(
      str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
      for k in path
    )
    out[name] = tuple(np.shape(leaf))
  return out


@functools.lru_cache(maxsize=64)
def _abstract_model(fns: recipe.ModelFns, input_shape: tuple):
  """(variable shapes, class count) of one model on ``input_shape`` examples, traced only.

  Raises whatever the model raises on such inputs.
  """
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  variables = jax.eval_shape(fns.init, jax.random.PRNGKey(0), x)
  out = jax.eval_shape(
    lambda v, xb: fns.apply(v, xb, train=False), variables, x
  )
  return _leaf_shapes(variables), int(out.shape[-1])


def _mismatch(given: dict, expected: dict):
  """The first variable whose per-model shape differs from ``expected`` (None: they fit)."""
  for name, shape in expected.items():
    if name in given and given[name][1:] != shape:
      return name
  return None


def _other_shapes(input_shape: tuple, given: dict, expected: dict):
  """Per-example shapes that could explain the mismatch: one axis (or H and W) rescaled."""
  ratios = set()
  for name, shape in expected.items():
    have = given.get(name, (None,))[1:]
    if len(have) == len(shape):
      ratios |= {(h, e) for h, e in zip(have, shape) if h != e and e}
  for h, e in sorted(ratios):
    for axis in range(len(input_shape)):
      size = input_shape[axis] * h
      if size % e == 0 and size // e >= 1:
        yield input_shape[:axis] + (size // e,) + input_shape[axis + 1 :]
    if len(input_shape) == 3:  # images: both sides by the square root
      root = int(round((h / e) ** 0.5 * input_shape[0]))
      side = int(round((h / e) ** 0.5 * input_shape[1]))
      if root * side * e == input_shape[0] * input_shape[1] * h:
        yield (root, side, input_shape[2])


def _shape_fns(config, num_classes: int) -> recipe.ModelFns:
  # The lowering's convolution and compute dtype change no variable's shape.
  return recipe.model_fns(identity.program_key(config), num_classes)


def _check_fit(config, variables, x_shape, num_classes) -> None:
  """Refuses inputs of another shape, or another class count, than ``variables`` were trained for.

  Flax would fail inside ``apply`` with a ScopeParamShapeError naming a
  kernel (and the CPU planner, tracing the model first, with a convolution's
  rank error); this names the argument instead.  Traced only
  (``jax.eval_shape``, cached per model and input shape): no number changes.
  """
  given = _leaf_shapes(variables)
  fns = _shape_fns(config, num_classes)
  try:
    expected, classes = _abstract_model(fns, x_shape)
  except Exception as e:  # the model's own words: it cannot take such x
    raise ValueError(
      f"x: the model cannot take examples of shape {x_shape} "
      f"({type(e).__name__}: {e})"
    ) from e
  if classes != num_classes:
    raise ValueError(
      f"num_classes={num_classes} but the model outputs {classes} classes"
    )
  shared = [n for n in expected if n in given]
  if expected and not shared:
    raise ValueError(
      "variables do not hold this model's variables: it has "
      f"{sorted(expected)[:3]}..., they hold {sorted(given)[:3]}... (pass "
      "the whole TrainResult.variables, not variables['params'])"
    )
  if all(given[n] == expected[n] for n in shared):
    raise ValueError(
      "variables must be stacked on a leading [models] axis (e.g. "
      "TrainResult.variables); these look like one model's: stack them with "
      "jax.tree.map(lambda a: a[None], variables)"
    )
  sizes = {shape[0] for shape in given.values()}
  if len(sizes) > 1:
    raise ValueError(
      "variables must share one leading [models] axis, got leading sizes "
      f"{sorted(sizes)}"
    )
  name = _mismatch(given, expected)
  if name is None:
    return
  have, want = given[name][1:], expected[name]
  if config.builtin_model:
    # The registry model's head depends on num_classes: does another count fit?
    for k in sorted({h for h in have if h not in want and h >= 2}):
      try:
        shapes, _ = _abstract_model(_shape_fns(config, k), x_shape)
      except Exception:
        continue
      if _mismatch(given, shapes) is None:
        raise ValueError(
          f"num_classes={num_classes} but these variables were trained with "
          f"{k} classes ({name} is {have} per model)"
        )
  for shape in _other_shapes(x_shape, given, expected):
    try:
      shapes, _ = _abstract_model(fns, shape)
    except Exception:
      continue
    if _mismatch(given, shapes) is None:
      raise ValueError(
        f"x has examples of shape {x_shape} but these variables were "
        f"trained on examples of shape {shape} ({name} is {have} per model, "
        f"{want} for x)"
      )
  raise ValueError(
    f"x has examples of shape {x_shape}, which these variables do not fit: "
    f"{name} is {have} per model, {want} for x (another input shape, "
    "num_classes or model?)"
  )


def prepared(
  config, variables, x_shape, num_classes, lowering, num_models, mesh=None
):
  """``(fns, variables, per_model_variables, replicated)`` for inference on this backend.

  ``variables`` come back on ``mesh`` (default: the models mesh over every
  local device), padded to its devices; ``per_model_variables`` is the list
  of each model's, or None where the lowering runs one batched program
  (vmap over models).
  """
  # Queries take no gradient step: nothing to measure.
  low = resolve_lowering(
    config, x_shape, num_classes, lowering=lowering, steps=0
  )
  fns = recipe.model_fns(
    identity.program_key(config),
    num_classes,
    conv_impl=low.conv_function(),
    compute_dtype=low.compute_dtype,
  )
  mesh = devices_lib.models_mesh() if mesh is None else mesh
  padded = devices_lib.pad_to_devices(np.arange(num_models), mesh.size)
  if len(padded) != num_models:
    variables = jax.tree_util.tree_map(
      lambda a: jnp.asarray(a)[padded], variables
    )
  variables = jax.device_put(
    variables, NamedSharding(mesh, PartitionSpec("models"))
  )
  replicated = NamedSharding(mesh, PartitionSpec())
  # As in training: one plain program per model beats the vmapped (grouped)
  # form on CPU.
  models = None
  if low.per_model_programs:
    models = [
      jax.tree_util.tree_map(lambda a: a[m], variables)
      for m in range(num_models)
    ]
  return fns, variables, models, replicated


def _logits(
  config, variables, x, num_classes, queries, batch_size, lowering
) -> np.ndarray:
  """``float32[models, examples, queries, classes]`` of the raw models."""
  x, num_models = _check(config, variables, x, queries, batch_size)
  _check_fit(config, variables, tuple(x.shape[1:]), num_classes)
  fns, variables, models, replicated = prepared(
    config, variables, tuple(x.shape[1:]), num_classes, lowering, num_models
  )
  per_model = models is not None
  fn = _predict_fn(fns, per_model)
  n = x.shape[0]
  bs = min(batch_size, n)
  out = []
  for s in range(0, n, bs):
    xb = x[s : s + bs]
    pad = bs - xb.shape[0]
    if pad:  # one compiled shape for every batch
      xb = np.concatenate([xb, np.repeat(xb[-1:], pad, 0)])
    views = query_views(jax.device_put(xb, replicated), queries)
    if per_model:
      logits = jnp.stack(
        [jnp.stack([fn(vm, v) for vm in models]) for v in views], 2
      )
    else:  # [models, batch, queries, classes]
      logits = jnp.stack([fn(variables, v) for v in views], 2)
    out.append(np.asarray(logits[:num_models, : bs - pad], np.float32))
  return np.concatenate(out, 1)
