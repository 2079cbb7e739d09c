"""Progress display: durations, ETA arithmetic, a rate that leaves compilation
out, one redrawn line on a terminal and plain lines elsewhere."""

import io

import pytest

from miajax.runs import progress


class Terminal(io.StringIO):
  def isatty(self):
    return True


def test_durations_and_eta_arithmetic():
  assert progress.format_duration(0.4) == "0s"
  assert progress.format_duration(45) == "45s"
  assert progress.format_duration(185) == "3m05s"
  assert progress.format_duration(7620) == "2h07m"
  assert progress.format_duration(None) == "?"
  assert progress.format_duration(float("inf")) == "?"
  assert progress.eta_seconds(1000, 250.0) == 4.0
  assert progress.eta_seconds(0, None) == 0.0  # nothing left: done
  assert progress.eta_seconds(10, None) is None  # no rate yet: unknown
  assert progress.eta_seconds(10, 0.0) is None
  assert progress.bar(0.5, 10) == "[#####.....]"
  assert progress.bar(1.5, 4) == "[####]" and progress.bar(-1, 4) == "[....]"


def test_rate_leaves_the_compiling_first_epoch_out():
  r = progress.Rate()
  r.add(100, 5.0, first=True)  # 0.5 s of work + 4.5 s compiling
  assert r.per_s is None and r.compile_seconds is None
  r.add(100, 0.5, first=False)
  r.add(300, 1.5, first=False)
  assert r.per_s == pytest.approx(200.0)  # 400 examples in 2 s, not 500 in 7
  assert r.compile_seconds == pytest.approx(4.5)
  # A later chunk's first epoch may recompile (another size): left out too.
  r.add(100, 3.0, first=True)
  assert r.per_s == pytest.approx(200.0)


def test_rate_with_one_epoch_per_chunk_uses_the_later_chunks():
  r = progress.Rate()
  r.add(100, 5.0, first=True)  # compiles
  assert r.per_s is None
  r.add(100, 0.5, first=True)  # the same compiled step, another chunk
  r.add(100, 0.5, first=True)
  assert r.per_s == pytest.approx(200.0)
  assert r.compile_seconds == pytest.approx(4.5)


def _epochs(chunks=2, models=2, epochs=3, seconds=(5.0, 0.5, 0.5)):
  """Engine progress dicts of ``chunks`` chunks, 160 examples a model-epoch."""
  for c in range(chunks):
    for e in range(epochs):
      yield dict(
        models_done=c * models,
        chunk_models=models,
        epoch=e + 1,
        epochs=epochs,
        start_epoch=0,
        epoch_seconds=seconds[e] if c == 0 else 0.5,
        epoch_examples=models * 160,
      )


def test_plain_lines_when_not_a_terminal():
  lines, stream = [], io.StringIO()
  show = progress.Progress(
    total_models=4, done_models=0, epochs=3, log=lines.append, stream=stream
  )
  for c, p in enumerate(_epochs()):
    show(p)
    if p["epoch"] == p["epochs"]:
      show.chunk_done(p["chunk_models"])
  show.close()
  assert stream.getvalue() == ""  # everything went to the log
  assert lines[0] == "  models 0/4  chunk epoch 1/3  -- examples/s  ETA ?"
  assert lines[1] == "  compiling took about 4.5 s (left out of examples/s)"
  # 320 examples in 0.5 s; 4 x 3 - 2 x 2 = 8 model-epochs of 160 examples left.
  assert lines[2] == "  models 0/4  chunk epoch 2/3  640 examples/s  ETA 2s"
  assert lines[3] == "  models 2/4  chunk epoch 3/3  640 examples/s  ETA 2s"
  assert lines[-1] == "  models 4/4  chunk epoch 3/3  640 examples/s  ETA 0s"
  assert len(lines) == 6 + 1 and not any("\r" in s for s in lines)


def test_one_redrawn_line_on_a_terminal():
  lines, tty = [], Terminal()
  show = progress.Progress(
    total_models=4, done_models=0, epochs=3, log=lines.append, stream=tty
  )
  dicts = list(_epochs())
  show(dicts[0])
  assert tty.getvalue() == (
    # 2 of 12 model-epochs done: 4 of 24 marks.
    "\r["
    + "#" * 4
    + "." * 20
    + "] models 0/4  chunk epoch 1/3  -- examples/s  ETA ?"
  )
  for p in dicts[1:]:
    show(p)
    if p["epoch"] == p["epochs"]:
      show.chunk_done(p["chunk_models"])
  out = tty.getvalue()
  assert "\n" not in out  # redrawn in place, never scrolled
  last = out.split("\r")[-1]
  assert last.rstrip() == (
    "[" + "#" * 24 + "] models 4/4  chunk epoch 3/3  640 examples/s  ETA 0s"
  )
  # Only messages reach the log; the compile line cleared the bar before it.
  assert lines == ["  compiling took about 4.5 s (left out of examples/s)"]
  assert "\r" + " " * len(out.split("\r")[1]) + "\r" in out
  # Half-way (2 of 4 models done, 6 of 12 model-epochs): half a bar.
  third = out.split("\r")[5]
  assert third.startswith("[" + "#" * 12 + "." * 12 + "] models 2/4")
  show.close()
  assert tty.getvalue().endswith("\n")
