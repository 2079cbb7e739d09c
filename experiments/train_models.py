"""Trains shadow models into a run directory (resumable, one or many processes).

  python experiments/train_models.py --dataset=digits --num_models=64 --output_dir=runs/digits

Writes keep.npy, logits.npy [models, examples, queries, classes], labels.npy,
config.json and models.json (per-model train/test accuracy).  Every finished
chunk of models lands atomically in <output_dir>/chunks/, so rerunning the same
command after a crash skips the finished chunks.  The chunk in flight is
checkpointed there too (every --checkpoint_every_s seconds, default 300, and/or
every --checkpoint_every_epochs epochs), so the rerun resumes it at its last
checkpoint ("resuming models [8, 16) from the checkpoint at epoch 3 of 6") with
the same final outputs as an uninterrupted run.  Changing these two flags
between runs is allowed: they are not part of the run's configuration.
Rerunning also checks every file against <output_dir>/manifest.json: a bad
chunk is moved aside as *.corrupt and only its models retrained (--norepair
refuses instead).  Two runs started on one --output_dir split the chunks
between them ("pid N trains models [a, b)"); each model is trained once.

Many hosts: start one process per host (or per GPU group) with the same flags
and an output_dir on a shared filesystem:

  python experiments/train_models.py ... --coordinator_address=host0:1234 \\
      --num_processes=2 --process_id=0      # and --process_id=1 on the other host

Each process calls jax.distributed.initialize, trains its contiguous slice of
models on its own devices and writes its chunks; the last process assembles
keep.npy / logits.npy once every process is done.  `--merge_only` does that
assembly by hand (e.g. after a process was restarted).
"""

import time

from absl import app, flags, logging

import common
import harness
from configs import train_models as train_models_config
from miajax import runs

FLAGS = flags.FLAGS
CONFIG = train_models_config.get_config()
common.define_training_flags(CONFIG)
flags.DEFINE_string(
  "coordinator_address",
  CONFIG["coordinator_address"],
  "host:port of process 0 for jax.distributed.initialize "
  "(multi-process runs only).",
)
flags.DEFINE_integer(
  "num_processes",
  CONFIG["num_processes"],
  "Number of processes in a multi-process run.",
)
flags.DEFINE_integer(
  "process_id",
  CONFIG["process_id"],
  "This process's index in [0, num_processes).",
)
flags.DEFINE_float(
  "merge_timeout_s",
  CONFIG["merge_timeout_s"],
  "How long the last process waits for the other processes' "
  "chunks before giving up (they stay on disk; rerun with --merge_only).",
)
flags.DEFINE_bool(
  "merge_only",
  CONFIG["merge_only"],
  "Only assemble keep.npy/logits.npy from the chunks in --output_dir.",
)
flags.DEFINE_bool(
  "repair",
  True,
  "Move a chunk file that fails its checks (unreadable, changed since "
  "written, another run's) aside as *.corrupt and retrain its models; "
  "rewrite a bad keep.npy/labels.npy and merge the outputs again. "
  "--norepair refuses instead, naming the file.",
)


def _print_result(result, spec, how=None):
  """One summary line; ``how`` replaces the timing where this process did not train every model itself."""
  timing = (
    how
    or f"train {result.train_seconds:.1f} s  predict {result.predict_seconds:.1f} s"
  )
  print(
    f"models: {spec.num_models}  train acc {result.train_accuracy.mean():.4f}  "
    f"test acc {result.test_accuracy.mean():.4f}  {timing}  -> {FLAGS.output_dir}"
  )


def main(argv):
  try:
    _main(argv)
  except runs.CorruptFileError as e:  # one line: the file, what, how to repair
    raise app.UsageError(str(e)) from None


def _main(argv):
  harness.start(argv)
  spec = common.run_spec()
  if FLAGS.merge_only:
    result = runs.merge_chunks(FLAGS.output_dir, spec.num_models)
    if result is None:
      raise app.UsageError(
        f"--merge_only: {FLAGS.output_dir} does not yet hold a chunk for every one of "
        f"the {spec.num_models} models; finish training first"
      )
    _print_result(result, spec, how="merged from the chunk files")
    return
  multi = FLAGS.num_processes > 1 or FLAGS.coordinator_address is not None
  chunk_models = None
  if multi:
    # Checked before jax.distributed.initialize, which would otherwise block waiting for peers.
    if not FLAGS.coordinator_address:
      raise app.UsageError(
        "--num_processes > 1 needs --coordinator_address=host:port"
      )
    chunk_models = runs.process_slice(
      spec.num_models, FLAGS.process_id, FLAGS.num_processes
    )
    import jax

    jax.distributed.initialize(
      FLAGS.coordinator_address,
      num_processes=FLAGS.num_processes,
      process_id=FLAGS.process_id,
      shutdown_timeout_seconds=int(max(FLAGS.merge_timeout_s, 60)),
    )
    logging.info(
      "process %d of %d: models %d..%d on %d local devices",
      jax.process_index(),
      jax.process_count(),
      chunk_models[0],
      chunk_models[-1],
      jax.local_device_count(),
    )
  t0 = time.perf_counter()
  result = common.train_run(
    spec,
    FLAGS.output_dir,
    log=logging.info,
    chunk_models=chunk_models,
    merge=not multi,
    repair=FLAGS.repair,
  )
  if multi:
    import jax

    try:
      jax.distributed.shutdown()  # a barrier: returns once every process has written its chunks
    except (
      Exception
    ) as e:  # a peer died: merge what is there, or say what is missing
      logging.warning(
        "distributed shutdown barrier failed (%s); merging from disk", e
      )
    if FLAGS.process_id != FLAGS.num_processes - 1:
      print(
        f"process {FLAGS.process_id}: trained models {chunk_models[0]}..{chunk_models[-1]} in "
        f"{time.perf_counter() - t0:.1f} s; process {FLAGS.num_processes - 1} merges"
      )
      return
    trained_s = time.perf_counter() - t0
    result = runs.wait_and_merge(
      FLAGS.output_dir,
      spec.num_models,
      timeout_s=FLAGS.merge_timeout_s,
      log=logging.info,
    )
    _print_result(
      result,
      spec,
      how=f"this process trained models {chunk_models[0]}..{chunk_models[-1]} in "
      f"{trained_s:.1f} s, then merged all {spec.num_models}",
    )
    return
  if not multi:
    logging.info(
      "train accuracy %.3f (mean), test accuracy %.3f (mean); %d chunks trained, %d reused",
      result.train_accuracy.mean(),
      result.test_accuracy.mean(),
      result.chunks_trained,
      result.chunks_reused,
    )
  _print_result(result, spec)


if __name__ == "__main__":
  harness.run(main)
