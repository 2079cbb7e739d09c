"""The benchmark's goals, each judged (``met``) where its value was measured."""

from __future__ import annotations

from bench import workloads


def goal(name, value, target, detail, kind=">=", judged=True) -> dict:
  """One goal: ``met`` is None where ``value`` was not measured or is not ``judged``."""
  met = (
    None
    if value is None or not judged
    else (value >= target if kind == ">=" else value < target)
  )
  ratio = None if value is None else (value / target)
  return dict(
    name=name,
    value=value,
    goal=target,
    kind=kind,
    ratio_to_goal=ratio,
    met=met,
    detail=detail,
  )


def _throughput_goals(rep: dict) -> list:
  """The engine against its peers; CPU goals, reported but not judged on another backend."""
  w = rep["workloads"]
  backend = rep["device"]["backend"]
  on_cpu = backend == "cpu"
  cpu_note = "" if on_cpu else f"; a CPU goal, not judged on {backend}"

  def ratio(name, key):
    return w.get(name, {}).get("ratios", {}).get(key)

  def ceiling(name):
    # The most any method could gain over the PyTorch loop at equal FLOPs: running at 100 % of the peak.
    frac = w.get(name, {}).get("torch_loop", {}).get("fraction_of_peak")
    return (
      f"examples/s ratio; ceiling at 100 % of the measured peak: {1 / frac:.2f}x"
      if frac
      else "examples/s ratio"
    )

  out = []
  for name, target in (("mlp_purchase", 1.3), ("mlp_digits", 3.0)):
    out.append(
      goal(
        f"{name}: engine / torch_loop",
        ratio(name, "engine/torch_loop"),
        target,
        ceiling(name) + cpu_note,
        judged=on_cpu,
      )
    )
    out.append(
      goal(
        f"{name}: engine / jax_loop",
        ratio(name, "engine/jax_loop"),
        1.0,
        "examples/s ratio" + cpu_note,
        judged=on_cpu,
      )
    )
  frac = w.get("mlp_purchase", {}).get("engine", {}).get("fraction_of_peak")
  out.append(
    goal(
      "mlp_purchase: engine fraction of matmul peak",
      frac,
      0.6,
      "achieved FLOP/s / the higher of the measured float32 matmul peaks of JAX and PyTorch "
      f"(here: {rep.get('peak_source', 'jax')})" + cpu_note,
      judged=on_cpu,
    )
  )
  micro = w.get("cnn_small", {}).get("setup", {}).get("microbatch_size")
  out.append(
    goal(
      "cnn_small: engine / torch_loop",
      ratio("cnn_small", "engine/torch_loop"),
      1.2,
      ceiling("cnn_small")
      + " (direct-convolution FLOPs; Winograd does fewer); micro-batch "
      f"picked automatically ({micro if micro is not None else 'n/a'})"
      + cpu_note,
      judged=on_cpu,
    )
  )
  return out


# The whole job against the benchmark's peak; CPU goals.
PIPELINE_GOALS_OF = "pipeline_fashion_mnist"


def _pipeline_goals(rep: dict) -> list:
  """Listed once the run asked for any pipeline (a run without one keeps the table it had);
  value None where this one did not run."""
  ran = rep.get("pipelines") or {}
  if not ran:
    return []
  backend = rep["device"]["backend"]
  on_cpu = backend == "cpu"
  cpu_note = "" if on_cpu else f"; a CPU goal, not judged on {backend}"
  row = ran.get(PIPELINE_GOALS_OF) or {}
  job = row.get("job") or {}
  inference = (row.get("phases") or {}).get("inference") or {}
  return [
    goal(
      f"{PIPELINE_GOALS_OF}: job efficiency",
      job.get("fraction_of_peak"),
      0.6,
      "XLA's FLOPs of training, queries and label-only views / (wall of train + predict + "
      "attacks + null check x the benchmark's matmul peak)" + cpu_note,
      judged=on_cpu,
    ),
    goal(
      f"{PIPELINE_GOALS_OF}: inference fraction of matmul peak",
      inference.get("fraction_of_peak"),
      0.6,
      "FLOPs of the queries and label-only views / their seconds / the benchmark's "
      "matmul peak" + cpu_note,
      judged=on_cpu,
    ),
  ]


def goals(rep: dict) -> list:
  """The goals, each judged (``met``) where its value was measured.

  The throughput and pipeline goals were set for the CPU engine; on another
  backend their values are reported but not judged.
  """
  out = _throughput_goals(rep)
  lira = rep.get("lira") or {}
  out.append(
    goal(
      "LiRA leave-one-out: miajax / numpy",
      lira.get("speedup"),
      50.0,
      "numpy loop (extrapolated) seconds / miajax warm seconds",
    )
  )
  art = rep.get("art") or {}
  out.append(
    goal(
      f"miajax / ART end to end ({art.get('shadows', '?')} digits shadows, CPU)",
      art.get("speedup"),
      3.0,
      "ART generate_shadow_dataset seconds / miajax train_models + predict "
      "seconds in a fresh process whose persistent compilation cache holds the "
      "recipe's programs; the report also gives it with an empty cache",
    )
  )
  mem = rep.get("memory") or {}
  out.append(
    goal(
      f"engine peak host memory, {mem.get('models', '?')} {workloads.MEMORY_WORKLOAD} models (GiB)",
      mem.get("peak_rss_gib"),
      8.0,
      "child process max RSS",
      kind="<",
    )
  )
  return out + _pipeline_goals(rep)
