"""The progress line's ETA counts every phase of a LiRA job: training, the
queries after each chunk, and the attacks after training. A simulated job on
a fake clock (nothing sleeps) checks it against the real time left."""

import io
import re

import pytest

from miajax.runs import progress

CHUNKS, MODELS, EPOCHS = 4, 16, 5
EXAMPLES = 30_000  # per model-epoch (a paired half of Fashion-MNIST)
EPOCH_S = 2.0  # one chunk's epoch after compiling
COMPILE_S = 8.0  # the first epoch's compilation
QUERY_S = 5 * EPOCHS * EPOCH_S  # a chunk's queries: 5x its training
QUERY_COMPILE_S = 5.0  # the first chunk's queries compile predict
ATTACK_S = 8.0  # after training: a few % of the job
ATTACK_GUESS_S = 6.0  # what the caller estimates them at (not exact)


def _parse_duration(text: str) -> float:
  """Inverse of ``progress.format_duration`` (to the second)."""
  m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
  assert m and text, text
  h, mi, s = (int(g or 0) for g in m.groups())
  return 3600 * h + 60 * mi + s


def _job(**kwargs) -> tuple[list[tuple[float, str]], float]:
  """Runs the job past a ``Progress(**kwargs)`` (plain lines);
  ``([(clock, line)], total seconds)``, each line stamped with the fake
  clock when it was printed."""
  clock, lines = [0.0], []
  show = progress.Progress(
    total_models=CHUNKS * MODELS,
    done_models=0,
    epochs=EPOCHS,
    log=lambda line: lines.append((clock[0], line)),
    stream=io.StringIO(),
    **kwargs,
  )
  for c in range(CHUNKS):
    for e in range(EPOCHS):
      seconds = EPOCH_S + (COMPILE_S if c == e == 0 else 0.0)
      clock[0] += seconds
      show(
        dict(
          models_done=c * MODELS,
          chunk_models=MODELS,
          epoch=e + 1,
          epochs=EPOCHS,
          start_epoch=0,
          epoch_seconds=seconds,
          epoch_examples=MODELS * EXAMPLES,
        )
      )
    query_s = QUERY_S + (QUERY_COMPILE_S if c == 0 else 0.0)
    clock[0] += query_s
    show.chunk_done(MODELS, query_seconds=query_s)
  show.close()
  clock[0] += ATTACK_S
  lines = [(t, s) for t, s in lines if "ETA" in s]
  return lines, clock[0]


def _first_after_quarter(lines, total):
  """``(ETA printed, real time left, line)`` of the first line printed at
  >= 25 % of the job."""
  t, line = next((t, s) for t, s in lines if t >= 0.25 * total)
  return _parse_duration(line.split("ETA ")[1].rstrip("+")), total - t, line


def test_eta_after_a_quarter_of_the_job_is_within_25_percent():
  lines, total = _job(queries=True, after_s=ATTACK_GUESS_S)
  eta, left, line = _first_after_quarter(lines, total)
  assert abs(eta - left) <= 0.25 * left, (line, left)
  # The line still says how far training is and how fast it goes.
  assert line.startswith("  models 16/64  chunk epoch 1/5  240,000 examples/s")
  assert not line.endswith("+")  # the first chunk's queries were timed
  # The training-only ETA (the display without queries) misses by far more.
  old_lines, old_total = _job()
  old_eta, old_left, _ = _first_after_quarter(old_lines, old_total)
  assert (old_total, old_left) == (total, left)
  assert abs(old_eta - old_left) > 0.25 * old_left


def test_eta_is_marked_while_no_queries_were_timed():
  lines, _ = _job(queries=True, after_s=ATTACK_GUESS_S)
  etas = [s.split("ETA ")[1] for _, s in lines]
  # Before a rate: unknown; then the training part, with "+" for the queries.
  assert etas[0] == "?"
  assert all(e.endswith("+") for e in etas[1:EPOCHS])
  assert not any(e.endswith("+") for e in etas[EPOCHS:])
  # Training over: the last chunk's queries and the attacks are left.
  assert _parse_duration(etas[-1]) == QUERY_S + ATTACK_GUESS_S


def test_job_eta_adds_the_phases():
  eta = progress.job_eta(
    train_examples=1000,
    examples_per_s=100.0,
    query_models=8,
    query_s_per_model=2.5,
    after_s=4.0,
  )
  assert eta == (10.0 + 20.0 + 4.0, True)
  # Queries left but none timed: the rest, flagged as a lower bound.
  eta = progress.job_eta(
    train_examples=1000, examples_per_s=100.0, query_models=8, after_s=4.0
  )
  assert eta == (14.0, False)
  assert progress.job_eta(train_examples=1000, examples_per_s=None) == (
    None,
    False,
  )
  # No training left: no rate needed.
  assert progress.job_eta(
    train_examples=0, examples_per_s=None, query_models=2, query_s_per_model=1.0
  ) == (2.0, True)
  assert progress.job_eta(train_examples=0, examples_per_s=None) == (0.0, True)


def test_query_rate_leaves_the_first_chunk_out_once_another_is_timed():
  assert progress.query_seconds_per_model([]) is None
  assert progress.query_seconds_per_model([(16, 55.0)]) == pytest.approx(
    55 / 16
  )
  # The first chunk compiled predict; the later ones (16 + 8 models) did not.
  chunks = [(16, 55.0), (16, 50.0), (8, 25.0)]
  assert progress.query_seconds_per_model(chunks) == pytest.approx(75 / 24)


def test_a_plus_marks_a_lower_bound_only():
  common = dict(
    models_done=0, total_models=4, epoch=1, epochs=3, examples_per_s=10.0
  )
  assert progress.format_line(**common, eta=65, eta_complete=False).endswith(
    "ETA 1m05s+"
  )
  assert progress.format_line(**common, eta=65).endswith("ETA 1m05s")
  assert progress.format_line(**common, eta=None, eta_complete=False).endswith(
    "ETA ?"
  )
