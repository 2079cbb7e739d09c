"""What to run: the presets and their validated configuration (flags are parsed into it, so the
functions run without absl)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from bench import pipeline, workloads

PRESETS = {
  "cpu": dict(table=workloads.WORKLOADS, defaults={}),
  "accelerator": dict(
    table=workloads.ACCELERATOR_WORKLOADS,
    defaults=dict(
      workloads=",".join(workloads.ACCELERATOR_WORKLOADS),
      methods="engine,jax_loop,torch_loop",
      plan_models=True,
      lira=False,
      memory_models=0,
      art=False,
      repeats=2,
      matmul_sizes="4096,8192",
    ),
  ),
}

# What parse_config uses for a value neither the preset nor the caller gives (the cpu preset's values).
DEFAULTS = dict(
  workloads="all",
  methods="all",
  num_models=None,
  steps=None,
  loop_models=None,
  plan_models=False,
  lira=True,
  lira_shape="256,50000,2",
  numpy_examples=100,
  memory_models=256,
  memory_examples=40_000,
  art=True,
  art_models=64,
  art_epochs=None,
  art_repeats=1,
  art_torch_threads=None,
  matmul_sizes="2048,4096",
  repeats=3,
  seed=0,
)


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  preset: str
  workloads: tuple[str, ...]
  methods: tuple[str, ...]
  num_models: int | None
  steps: int | None
  loop_models: int | None
  plan_models: bool
  lira: bool
  lira_shape: tuple[int, int, int]
  numpy_examples: int
  memory_models: int
  memory_examples: int
  art: bool
  art_models: int
  art_epochs: int
  art_repeats: int
  art_torch_threads: tuple[int, ...]
  matmul_sizes: tuple[int, ...]
  repeats: int
  seed: int
  output_dir: str | None
  # The whole-job pipelines --workloads names (bench.pipeline); never in 'all'.
  pipelines: tuple[str, ...] = ()


def _int_list(
  name: str, value, length: int | None = None, minimum: int = 1
) -> tuple[int, ...]:
  items = value.split(",") if isinstance(value, str) else list(value)
  try:
    out = tuple(int(str(v).strip()) for v in items if str(v).strip())
  except ValueError:
    raise ValueError(
      f"{name} must be comma-separated integers, got {value!r}"
    ) from None
  if not out or (length is not None and len(out) != length):
    raise ValueError(
      f"{name} must hold {length or 'at least one'} integers, got {value!r}"
    )
  if min(out) < minimum:
    raise ValueError(f"{name} values must be >= {minimum}, got {value!r}")
  return out


def _name_list(name: str, value, allowed, extra=()) -> tuple[str, ...]:
  """The names ``value`` lists; ``extra`` names are accepted too but left out of 'all' (``all,<extra>`` adds them)."""
  items = value.split(",") if isinstance(value, str) else list(value)
  out = tuple(dict.fromkeys(v.strip() for v in items if v.strip()))
  rest = tuple(v for v in out if v != "all")
  if "all" in out and all(v in extra for v in rest):
    return tuple(allowed) + rest
  bad = [v for v in out if v not in allowed and v not in extra]
  if not out or bad:
    raise ValueError(
      f"{name} must be a comma list of {list(allowed)} (or 'all')"
      + (f" and of {list(extra)} (not in 'all')" if extra else "")
      + f", got {value!r}"
      + (f"; unknown: {bad}" if bad else "")
    )
  return out


def _is_int_at_least(value, minimum: int) -> bool:
  # bool is an int to Python, never a count here.
  return (
    not isinstance(value, bool)
    and isinstance(value, (int, np.integer))
    and value >= minimum
  )


def _optional_positive(name: str, value, minimum: int = 1):
  if value is None:
    return None
  if not _is_int_at_least(value, minimum):
    raise ValueError(
      f"{name} must be an integer >= {minimum} (or unset for the per-workload default), "
      f"got {value!r}"
    )
  return int(value)


def _check_counts(v: dict, art_epochs) -> None:
  for name, minimum in (
    ("numpy_examples", 1),
    ("memory_models", 0),
    ("memory_examples", 2),
    ("repeats", 1),
    ("seed", 0),
    ("art_models", 2),
    ("art_repeats", 1),
  ):
    if not _is_int_at_least(v[name], minimum):
      raise ValueError(
        f"{name} must be an integer >= {minimum}, got {v[name]!r}"
      )
  if not _is_int_at_least(art_epochs, 1):
    raise ValueError(f"art_epochs must be an integer >= 1, got {art_epochs!r}")
  if v["art_models"] % 2:
    # miajax's side uses paired_keep (complementary halves), which needs pairs of models.
    raise ValueError(
      f"art_models must be even (pairs of complementary halves), got {v['art_models']!r}"
    )


def _torch_threads(value) -> tuple[int, ...]:
  if value is None:
    value = (1, os.cpu_count() or 1)
  else:
    value = _int_list("art_torch_threads", value)
  return tuple(dict.fromkeys(value))


def parse_config(
  *,
  preset: str = "cpu",
  output_dir=None,
  table=None,
  pipelines=None,
  **values,
) -> BenchConfig:
  """Validated :class:`BenchConfig`; raises ``ValueError`` naming the bad value.

  ``values`` (keys of :data:`DEFAULTS`, named as the flags) override the
  preset's defaults (:data:`PRESETS`), which override :data:`DEFAULTS`.
  ``workloads="none"`` runs no throughput workload (e.g. only the ART comparison);
  ``num_models``/``steps``/``loop_models=None`` mean the workload's own;
  ``plan_models``: train as many models as the planner puts in one step, at
  most ``num_models``; ``art_epochs=None`` means the digits recipe's epochs;
  ``art_torch_threads=None`` means 1 and all cores.  ``table``: the workloads
  (default: the preset's).  ``pipelines``: the whole jobs ``workloads`` may
  also name (default :data:`bench.pipeline.PIPELINES`); ``all`` leaves them
  out, and they land in ``BenchConfig.pipelines``.
  """
  if preset not in PRESETS:
    raise ValueError(f"preset must be one of {list(PRESETS)}, got {preset!r}")
  unknown = sorted(set(values) - set(DEFAULTS))
  if unknown:
    raise TypeError(
      f"parse_config: unknown arguments {unknown}; known: {sorted(DEFAULTS)}"
    )
  v = {**DEFAULTS, **PRESETS[preset]["defaults"], **values}
  table = PRESETS[preset]["table"] if table is None else table
  pipelines = pipeline.PIPELINES if pipelines is None else pipelines
  art_epochs = v["art_epochs"]
  if art_epochs is None:
    art_epochs = workloads.WORKLOADS[workloads.ART_WORKLOAD].recipe_epochs
  lira_shape = _int_list("lira_shape", v["lira_shape"], 3)
  if v["lira"] and lira_shape[0] < 6:
    raise ValueError(
      f"lira_shape needs >= 6 models for leave-one-out LiRA, got {lira_shape[0]}"
    )
  _check_counts(v, art_epochs)
  names = v["workloads"]
  no_workloads = isinstance(names, str) and names.strip() == "none"
  names = (
    () if no_workloads else _name_list("workloads", names, table, pipelines)
  )
  return BenchConfig(
    preset=preset,
    workloads=tuple(n for n in names if n in table),
    methods=_name_list("methods", v["methods"], workloads.METHODS),
    num_models=_optional_positive("num_models", v["num_models"]),
    steps=_optional_positive("steps", v["steps"]),
    loop_models=_optional_positive("loop_models", v["loop_models"]),
    plan_models=bool(v["plan_models"]),
    lira=bool(v["lira"]),
    lira_shape=lira_shape,
    numpy_examples=int(v["numpy_examples"]),
    memory_models=int(v["memory_models"]),
    memory_examples=int(v["memory_examples"]),
    art=bool(v["art"]),
    art_models=int(v["art_models"]),
    art_epochs=int(art_epochs),
    art_repeats=int(v["art_repeats"]),
    art_torch_threads=_torch_threads(v["art_torch_threads"]),
    matmul_sizes=_int_list("matmul_sizes", v["matmul_sizes"], minimum=16),
    repeats=int(v["repeats"]),
    seed=int(v["seed"]),
    output_dir=output_dir,
    pipelines=tuple(n for n in names if n not in table),
  )
