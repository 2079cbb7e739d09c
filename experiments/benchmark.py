"""How fast miajax trains shadow models, against how MIA code usually trains them.

  python experiments/benchmark.py --output_dir=runs/benchmark
  python experiments/benchmark.py --preset=accelerator --output_dir=runs/benchmark_gpu

For each workload, trains the same models (same data, architecture, SGD with
momentum 0.9 + weight decay + cosine schedule, batch size and step count) in
several ways, one after another in this one process, each after its own
warm-up:

  engine      miajax.engine.train_models: the models of a chunk in one step, run
              as ``miajax.engine.resolve_lowering`` decides for the backend
              (vmapped on GPU/TPU; on CPU vmapped, unrolled or one model per
              call, with micro-batch sizes picked by timing); the report
              records that lowering
  jax_loop    the same JAX step for one model, jitted, called from Python per
              step, one model after the other (how the LiRA release trains)
  torch_loop  a PyTorch model + torch.optim.SGD per model (how most MIA code trains)
  torch_vmap  torch.func model ensembling: stacked parameters, vmap(grad) and a
              hand-written SGD-momentum update

The torch rows need the optional ``bench`` extra (PyTorch); without it they are
left out with a note.  They run on the GPU when JAX does and PyTorch sees one.
Throughput = models x examples / second; models/hour (timed) = models /
seconds x 3600 at the timed steps; models/hour (recipe) = examples/s / the
examples of the workload's full training recipe; FLOP/s = examples/s x
training FLOPs per example (XLA's cost analysis of the compiled one-model
step); the fraction is of the higher of JAX's and PyTorch's float32 matmul
peaks measured in the same run (``peak_source`` says whose).  Also times LiRA
leave-one-out (online + offline) against the numpy loop of
``experiments/lira_numpy.py`` and the peak host memory of the engine training
256 Purchase-shaped MLPs in a child process.

With ``--art`` (and the ``bench`` extra), it also trains ``--art_models`` (64)
digits shadows end to end with the demo's recipe in miajax (``train_models`` +
``predict``) and in the Adversarial Robustness Toolbox
(``ShadowModels.generate_shadow_dataset`` on a PyTorch classifier), and reports
both times and both sides' member and test accuracies;
``--workloads=none --lira=false --memory_models=0`` runs only that comparison.

``--preset`` picks the defaults; flags given on the command line override them:

  cpu          (default) every workload and method, LiRA, memory and ART, sized
               for a 2-core CPU (7+ minutes)
  accelerator  cnn_small, wrn16-4 and the Purchase MLP on synthetic data; the
               engine trains as many models as the planner puts in one step
               (at most 256) against the one-model JAX and PyTorch loops,
               which time a few of the models and extrapolate per model;
               sized to finish in under 8 minutes on one H100/H200-class GPU.
               No LiRA, memory or ART sections (``--lira`` etc. add them).
               Tiny on a CPU: ``--num_models=2 --steps=2 --loop_models=1
               --matmul_sizes=256``.

Writes ``<output_dir>/report.json`` and ``report.md`` and prints the tables.

How the numbers are made:
- Every model gets exactly ``steps_per_epoch x batch`` members, so every method
  takes the same steps; the cosine schedule spans the timed steps.
- Each method is warmed up first (the engine: one identical ``train_models``
  call; the loops: two steps of a throw-away model), then timed ``--repeats``
  times; the best time counts (other jobs can only slow a run down; every
  repeat's time is in the report).  The engine's time is the whole
  ``train_models`` call (init, shuffles, every chunk).
- FLOPs per example: ``cost_analysis()['flops']`` of the compiled one-model
  step / batch for MLPs (it skips the input gradient of the first layer, so it
  is a little below the analytic 3 x 2 x forward multiply-adds, also
  reported); for convolutional nets the analytic direct-convolution count,
  because on CPU the engine's Winograd convolutions execute ~4x fewer
  multiplies.  The same figure serves every method.
- The matmul peaks (jitted square float32 matmuls in JAX, best of 5; ``a @ b``
  in PyTorch when installed, best of 3) are measured at the start and at the
  end of the run; the higher of each counts, and every fraction divides by the
  higher of the two.  On GPUs JAX's default float32 precision may use TF32
  tensor cores where PyTorch's matmul default does not; the report records
  PyTorch's setting.
- With 2 OpenMP threads on a busy 2-core machine, PyTorch slows down by up to
  ~100x in some repeats (spinning threads wait for descheduled ones); the
  report warns when the load average or the spread of repeats shows that.
"""

# The code lives in the bench package beside this script (workloads, the
# engine and its JAX / PyTorch / ART peers, the memory child, goals, report);
# this script is its command line.

from __future__ import annotations

import json
import sys
import time

from absl import app, flags

import harness
from bench import memory, report, runner
from bench.config import DEFAULTS, PRESETS, BenchConfig, parse_config
from bench.workloads import MEMORY_WORKLOAD, METHODS, WORKLOADS

FLAGS = flags.FLAGS
_D = DEFAULTS
flags.DEFINE_enum(
  "preset",
  "cpu",
  list(PRESETS),
  "Defaults to start from; flags given override them. cpu: "
  "everything, sized for a 2-core CPU. accelerator: cnn_small, wrn16-4, mlp_purchase; the engine "
  "at the planner's models per step (<= 256) vs the JAX and PyTorch loops, sized for one "
  "H100/H200-class GPU (< 8 min); no LiRA, memory or ART.",
)
flags.DEFINE_string(
  "workloads",
  _D["workloads"],
  f"Comma list of {list(WORKLOADS)}, 'all' or 'none' "
  "(accelerator: cnn_small,wrn16-4,mlp_purchase); may also name "
  "pipeline_fashion_mnist, the whole 64-model Fashion-MNIST LiRA job "
  "(experiments/lira.py in a child process, ~20 min on a 2-core CPU; --num_models "
  "overrides its 64), timed by phase against the matmul peak; never part of 'all' "
  "('all,pipeline_fashion_mnist' adds it).",
)
flags.DEFINE_string(
  "methods",
  _D["methods"],
  f"Comma list of {list(METHODS)} or 'all' "
  "(accelerator: engine,jax_loop,torch_loop).",
)
flags.DEFINE_integer(
  "num_models",
  _D["num_models"],
  "Models per method for every workload (default: per "
  "workload; with --plan_models the most the planner may put in one step).",
)
flags.DEFINE_integer(
  "steps",
  _D["steps"],
  "Timed training steps per model (default: per workload).",
)
flags.DEFINE_integer(
  "loop_models",
  _D["loop_models"],
  "Models the one-model loops (jax_loop, torch_loop) time; "
  "their per-model rates extrapolate (default: per workload; cpu preset: all).",
)
flags.DEFINE_bool(
  "plan_models",
  _D["plan_models"],
  "Train as many models as the planner puts in one step, at "
  "most --num_models (accelerator: on).",
)
flags.DEFINE_bool(
  "lira",
  _D["lira"],
  "Also time LiRA leave-one-out against the numpy loop (accelerator: off).",
)
flags.DEFINE_string(
  "lira_shape", _D["lira_shape"], "models,examples,queries of the LiRA timing."
)
flags.DEFINE_integer(
  "numpy_examples",
  _D["numpy_examples"],
  "Examples the numpy LiRA loop runs before extrapolating.",
)
flags.DEFINE_integer(
  "memory_models",
  _D["memory_models"],
  f"{MEMORY_WORKLOAD} models of the peak-memory run (0: skip; accelerator: 0).",
)
flags.DEFINE_integer(
  "memory_examples",
  _D["memory_examples"],
  "Candidate examples of the peak-memory run.",
)
flags.DEFINE_bool(
  "art",
  _D["art"],
  "Also time shadow training end to end against ART's ShadowModels (needs "
  "the `bench` extra; accelerator: off).",
)
flags.DEFINE_integer(
  "art_models", _D["art_models"], "Shadow models of the ART comparison (even)."
)
flags.DEFINE_integer(
  "art_epochs",
  _D["art_epochs"],
  "Epochs of the ART comparison (default: the digits recipe's 30).",
)
flags.DEFINE_integer(
  "art_repeats",
  _D["art_repeats"],
  "Timed runs per side (ART: per thread count) of the ART "
  "comparison; the best counts.",
)
flags.DEFINE_string(
  "art_torch_threads",
  _D["art_torch_threads"],
  "Comma list of torch thread counts ART is "
  "timed with; the best counts (default: 1 and all cores).",
)
flags.DEFINE_string(
  "matmul_sizes",
  _D["matmul_sizes"],
  "Square float32 matmul sizes for the peak (accelerator: 4096,8192).",
)
flags.DEFINE_integer(
  "repeats",
  _D["repeats"],
  "Timed runs per method after the warm-up; the best counts (accelerator: 2).",
)
flags.DEFINE_integer(
  "seed", _D["seed"], "Seed of data, membership and initialisation."
)
flags.DEFINE_string("output_dir", None, "Where report.json and report.md go.")
flags.DEFINE_string(
  "memory_child",
  None,
  "Internal: run the peak-memory child with this JSON spec.",
)


def config_from_flags(flag_values=FLAGS) -> BenchConfig:
  """The preset's defaults, overridden by the flags given on the command line (not by flag defaults)."""
  given = {
    name: flag_values[name].value
    for name in DEFAULTS
    if flag_values[name].present
  }
  return parse_config(
    preset=flag_values.preset, output_dir=flag_values.output_dir, **given
  )


def main(argv):
  harness.start(argv, output_dir=False)
  if FLAGS.memory_child:
    spec = json.loads(FLAGS.memory_child)
    print(json.dumps(memory.memory_child(spec)), flush=True)
    return
  harness.require_output_dir()
  try:
    cfg = config_from_flags()
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  t = time.perf_counter()
  rep = runner.run(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
  print(report.markdown(rep))
  print(
    f"total {time.perf_counter() - t:.0f} s; wrote {cfg.output_dir}/report.json and report.md"
  )


if __name__ == "__main__":
  harness.run(main)
