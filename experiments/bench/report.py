"""The benchmark's report: report.json as it is, and report.md, the tables printed at the end."""

from __future__ import annotations

import os
import pathlib

import harness


def fmt(x, digits=1):
  """A table cell: ``n/a`` for None, large floats with thousands separators."""
  if x is None:
    return "n/a"
  if isinstance(x, float):
    if abs(x) >= 1e5:
      return f"{x:,.0f}"
    return f"{x:.{digits}f}"
  return str(x)


def _device_lines(rep: dict) -> list:
  d = rep["device"]
  by_source = rep.get("matmul_peak_gflops_by_source") or {}
  return [
    "# miajax benchmark",
    "",
    f"Preset: {rep.get('preset', 'cpu')}.",
    f"Device: {d['backend']} ({', '.join(d['device_kinds'])}) x {d['device_count']}, "
    f"{d['cpu_count']} CPUs, torch threads {d['torch_threads']}, "
    f"load average at start {d['load_average_start']}, "
    f"at end {d.get('load_average_end')}.",
    f"Measured float32 matmul peak, the higher of JAX's and PyTorch's (best of start and end of the run), "
    f"which every % of peak divides by: **{rep['matmul_peak_gflops']:.1f} GFLOP/s "
    f"(peak_source: {rep.get('peak_source', 'jax')})**; jax {fmt(by_source.get('jax'))} (per size: "
    + ", ".join(f"{k}: {v:.1f}" for k, v in rep["matmul"]["jax"].items())
    + ")"
    + (
      f"; torch {fmt(by_source.get('torch'))} on {d.get('torch_device')} (per size: "
      + ", ".join(f"{k}: {v:.1f}" for k, v in rep["matmul"]["torch"].items())
      + ")"
      if rep["matmul"].get("torch")
      else "; torch not measured"
    )
    + (
      f"; torch.backends.cuda.matmul.allow_tf32={d['torch_matmul_allow_tf32']}"
      if d.get("torch_matmul_allow_tf32") is not None
      else ""
    )
    + ".",
    "",
  ]


def _throughput_rows(rep: dict) -> list:
  lines = [
    "## Training throughput",
    "",
    "| workload | method | models | steps/model | batch | examples/s | models/hour (timed) "
    "| models/hour (recipe) | GFLOP/s | % of peak | seconds (best) | all repeats s "
    "| epoch loss first -> last |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
  ]
  for name, w in rep["workloads"].items():
    s = w["setup"]
    for method in s["methods"]:
      r = w[method]
      lines.append(
        f"| {name} | {method} | {r['models']} | {r['steps']} | {s['batch_size']} | "
        f"{fmt(r['examples_per_s'], 0)} | {fmt(r['models_per_hour_timed'], 1)} | "
        f"{fmt(r['models_per_hour'], 2)} | {fmt(r['gflops'])} | "
        f"{fmt(100 * r['fraction_of_peak'])} | {fmt(r['seconds'], 2)} | "
        f"{', '.join(f'{t:.2f}' for t in r['all_seconds'])} | "
        f"{r['mean_first_epoch_loss']:.3f} -> {r['mean_final_epoch_loss']:.3f} |"
      )
  return lines


def _setup_rows(rep: dict) -> list:
  lines = [
    "",
    "| workload | ratios (examples/s) | models (source) | engine models/step "
    "| engine lowering (model axis, convolutions) | engine micro-batch (timings s/step) "
    "| FLOPs/example (source) | recipe |",
    "|---|---|---|---:|---|---|---|---|",
  ]
  for name, w in rep["workloads"].items():
    s = w["setup"]
    ratios = ", ".join(f"{k} {v:.2f}x" for k, v in w["ratios"].items()) or "n/a"
    low = s.get("lowering")
    timings = s.get("microbatch_timings_s")
    micro = str(s.get("microbatch_size", "n/a")) + (
      " (" + ", ".join(f"{k}: {v:.3f}" for k, v in timings.items()) + ")"
      if timings
      else ""
    )
    lines.append(
      f"| {name} | {ratios} | {s['num_models']} ({s['models_source']}; loops time "
      f"{s['loop_models']}) | {s.get('models_per_step', 'n/a')} | "
      f"{'n/a' if not low else low['model_axis'] + ', ' + low['conv_impl']} | {micro} | "
      f"{s['flops_per_example'] / 1e6:.2f} M ({s['flops_source']}; analytic "
      f"{s['flops_per_example_analytic'] / 1e6:.2f} M) | {s['recipe']} |"
    )
  notes = sorted(
    {n for w in rep["workloads"].values() for n in w["setup"]["notes"]}
  )
  if notes:
    lines += [""] + [f"- {n}" for n in notes]
  return lines


def _tflop(flops):
  return None if flops is None else flops / 1e12


def _pct(fraction):
  return None if fraction is None else 100 * fraction


def _pipeline_lines(name: str, p: dict) -> list:
  """One whole job: every phase's seconds, XLA's FLOPs, GFLOP/s and % of the benchmark's peak."""
  j, phases = p["job"], p["phases"]
  own = p["job_report"]["efficiency"]
  lines = [
    "",
    f"## The whole job: {name}",
    "",
    f"{p['what']}: {p['models']} models, {p['examples']:,} examples; `python experiments/lira.py "
    + " ".join(p["command"][2:-1])
    + " --output_dir=<tmp>` in a child process "
    f"({p['process_wall_seconds']:.0f} s with start-up and report). FLOPs: XLA's cost analysis "
    "of one model's training step and forward pass, times the steps and every query and "
    "label-only view; % of the benchmark's matmul peak above.",
    "",
    "| phase | seconds | TFLOP | GFLOP/s | % of peak |",
    "|---|---:|---:|---:|---:|",
  ]

  def row(label, seconds, part):
    return (
      f"| {label} | {fmt(seconds, 1)} | {fmt(_tflop(part.get('flops')), 3)} | "
      f"{fmt(part.get('gflops'))} | {fmt(_pct(part.get('fraction_of_peak')))} |"
    )

  labels = dict(
    train="training",
    inference="inference (queries + label-only views)",
    other="data, planning, run files",
    attacks="attacks",
    null_check="null check",
  )
  for key, part in phases.items():
    lines.append(row(labels.get(key, key), part["seconds"], part))
    if key == "inference":
      for sub, flops in part["flops_by_part"].items():
        lines.append(row(f"- of which {sub}", None, dict(flops=flops)))
  lines.append(row("**job**", j["seconds"], j))
  lines += [
    "",
    f"Job efficiency: {fmt(_pct(j.get('fraction_of_peak')))} % of the benchmark's peak "
    f"({fmt(p.get('peak_gflops'))} GFLOP/s); the job's own report: "
    f"{fmt(_pct(own.get('fraction_of_peak')))} % of JAX's matmul peak measured at its end "
    f"({fmt(own.get('peak_gflops'))} GFLOP/s).",
  ]
  return lines


def _art_lines(a: dict) -> list:
  lines = [
    "",
    "## End to end against ART (Adversarial Robustness Toolbox)",
    "",
    f"{a['shadows']} shadow MLPs on the digits pool ({a['pool_examples']} examples), {a['epochs']} "
    f"epochs, batch {a['batch_size']}, SGD lr {a['learning_rate']:g} momentum 0.9 weight decay "
    f"{a['weight_decay']:g}; ART {a['art_version']}, torch {a['torch_version']}, ART timed with "
    f"torch threads {', '.join(map(str, a['art']['torch_threads']))} (best: "
    f"{a['art']['best_torch_threads']}). Accuracies: mean over shadows.",
    "",
    "| side | timed | seconds (best) | all repeats s | first call s (incl. compile) "
    "| members/shadow | steps/epoch | schedule | member acc | test acc (min-max) |",
    "|---|---|---:|---:|---:|---:|---:|---|---:|---|",
  ]
  for side in ("miajax", "art"):
    r = a[side]
    lines.append(
      f"| {'ART' if side == 'art' else side} | {r['timed']} | {r['seconds']:.2f} | "
      f"{', '.join(f'{t:.2f}' for t in r['all_seconds'])} | {fmt(r.get('first_call_seconds'), 2)} | "
      f"{'-'.join(str(v) for v in sorted(set(r['members_per_shadow'])))} | {r['steps_per_epoch']} | "
      f"{r['schedule']} | {r['mean_member_accuracy']:.3f} | {r['mean_test_accuracy']:.3f} "
      f"({r['min_test_accuracy']:.3f}-{r['max_test_accuracy']:.3f}) |"
    )
  return (
    lines
    + [
      "",
      f"Speed-up miajax / ART: **{a['speedup']:.2f}x** in a fresh process with the "
      f"recipe's programs in the persistent compilation cache "
      f"({a['miajax']['fresh_process_cached_seconds']:.2f} s), "
      f"{a['speedup_empty_cache']:.2f}x in a fresh process compiling everything "
      f"({a['miajax']['fresh_process_seconds']:.2f} s), "
      f"{a['speedup_first_call']:.2f}x for the benchmark process's first call, "
      f"{a['speedup_warm']:.2f}x warm.",
      "",
    ]
    + [f"- {n}" for n in a["notes"]]
  )


def _lira_lines(r: dict) -> list:
  return [
    "",
    "## LiRA leave-one-out (online + offline)",
    "",
    "| shape | miajax warm s | miajax incl. compile s | numpy s (extrapolated from N examples) "
    "| speedup | max abs diff |",
    "|---|---:|---:|---:|---:|---:|",
    f"| {r['shape']} | {r['miajax_warm_s']:.2f} | {r['miajax_s']:.2f} | "
    f"{r['numpy_extrapolated_s']:.0f} ({r['numpy_subset_examples']}) | {r['speedup']:.0f}x | "
    f"{r['max_abs_diff_on_subset']:.1e} |",
  ]


def _memory_lines(m: dict) -> list:
  return [
    "",
    "## Engine peak host memory",
    "",
    "| models | candidates | models/step (planner) | chunks | peak RSS GiB (children) "
    "| child self GiB | train s |",
    "|---:|---:|---:|---:|---:|---:|---:|",
    f"| {m['models']} | {m['candidate_examples']} | {m['models_per_step']} | {m['chunks']} | "
    f"{m['peak_rss_gib']:.2f} | {m['self_peak_rss_gib']:.2f} | {m['train_seconds']:.1f} |",
  ]


def _goal_lines(rep: dict) -> list:
  lines = [
    "",
    "## Goals",
    "",
    "| goal | value | goal | value/goal | status | note |",
    "|---|---:|---:|---:|---|---|",
  ]
  for g in rep["goals"]:
    status = "n/a" if g["met"] is None else ("pass" if g["met"] else "MISSED")
    lines.append(
      f"| {g['name']} | {fmt(g['value'], 2)} | {g['kind']} {g['goal']:g} | "
      f"{fmt(g['ratio_to_goal'], 2)} | {status} | {g['detail']} |"
    )
  return lines


def markdown(rep: dict) -> str:
  """report.md: the device and its peaks, then every section the run has, the goals and notes."""
  lines = _device_lines(rep)
  if rep["workloads"]:
    lines += _throughput_rows(rep) + _setup_rows(rep)
  for name, p in (rep.get("pipelines") or {}).items():
    lines += _pipeline_lines(name, p)
  if rep.get("art"):
    lines += _art_lines(rep["art"])
  if rep.get("lira"):
    lines += _lira_lines(rep["lira"])
  if rep.get("memory"):
    lines += _memory_lines(rep["memory"])
  lines += _goal_lines(rep)
  if rep["notes"]:
    lines += ["", "Notes:"] + [f"- {n}" for n in rep["notes"]]
  return "\n".join(lines) + "\n"


def load_average():
  try:
    return [round(v, 2) for v in os.getloadavg()]
  except OSError:
    return None


def interference_notes(rep: dict) -> list:
  """Warnings when other jobs probably slowed this run (torch's OpenMP threads suffer most on a busy CPU)."""
  notes = []
  cpus = rep["device"]["cpu_count"] or 1
  loads = [
    l[0]
    for l in (
      rep["device"]["load_average_start"],
      rep["device"].get("load_average_end"),
    )
    if l
  ]
  if loads and max(loads) > 0.5 * cpus:
    notes.append(
      f"CPU busy: 1-minute load average up to {max(loads):.1f} on {cpus} CPUs; "
      "throughputs (especially the torch rows) may be understated"
    )
  art = rep.get("art")
  if art:
    times = art["art"]["all_seconds"]
    if max(times) > 1.5 * min(times):
      notes.append(
        f"ART: runs took {', '.join(f'{t:.1f}' for t in times)} s with torch threads "
        f"{', '.join(map(str, art['art']['torch_threads']))} (interference; the best counts)"
      )
  for name, w in rep["workloads"].items():
    for method in w["setup"]["methods"]:
      times = w[method]["all_seconds"]
      if len(times) > 1 and max(times) > 1.5 * min(times):
        notes.append(
          f"{name}/{method}: repeats took {', '.join(f'{t:.1f}' for t in times)} s "
          "(interference; the best counts)"
        )
  return notes


def write(rep: dict, output_dir) -> None:
  """``report.json`` and ``report.md`` in ``output_dir`` (made if missing), each replaced atomically."""
  out = pathlib.Path(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  harness.write_report(out, rep)
  tmp = out / ".report.md.tmp"
  tmp.write_text(markdown(rep))
  os.replace(tmp, out / "report.md")
