"""The benchmark's whole-job pipelines (bench.pipeline): config, arithmetic, report, goals, a tiny real job."""

import copy
import importlib
import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
B = importlib.import_module("benchmark")  # the command line: flags
from bench import config, runner
from bench import goals as goals_lib
from bench import pipeline as pipeline_lib
from bench import report as report_lib

FASHION = "pipeline_fashion_mnist"
# The digits job at its smallest: seconds, not the Fashion-MNIST job's ~20 minutes.
TINY = {
  "pipeline_digits_tiny": pipeline_lib.Pipeline(
    "pipeline_digits_tiny",
    "digits",
    num_models=8,
    models_per_step=8,
    flags=("--epochs=2",),
    what="8 digits MLPs, 2 epochs",
  )
}


def _job_report(null_check=1.5):
  """What lira.py writes, only the parts the pipeline reads."""
  return {
    "protocol": {"models": 64, "examples": 60_000},
    "target": {"train_accuracy": 0.9, "test_accuracy": 0.88},
    "timing_s": {
      "train": 800.0,
      "predict": 40.0,
      "train_and_predict_wall": 850.0,
      "attacks": 20.0,
      "null_check": null_check,
      "total": 875.0,
    },
    "efficiency": {
      "flops": {"train": 6.0e13, "queries": 2.0e12, "views": 8.0e12},
      "total_flops": 7.0e13,
      "seconds": 871.5,
      "peak_gflops": 120.0,
      "achieved_gflops": 7.0e13 / 871.5 / 1e9,
      "fraction_of_peak": 7.0e13 / 871.5 / 1.2e11,
      "seconds_at_peak": 7.0e13 / 1.2e11,
    },
  }


def test_workloads_accepts_a_pipeline_but_all_leaves_it_out():
  cfg = config.parse_config(workloads=f"mlp_digits,{FASHION}")
  assert cfg.workloads == ("mlp_digits",) and cfg.pipelines == (FASHION,)
  cfg = config.parse_config(workloads=FASHION)
  assert cfg.workloads == () and cfg.pipelines == (FASHION,)
  cfg = config.parse_config()
  assert FASHION not in cfg.workloads and cfg.pipelines == ()
  cfg = config.parse_config(workloads=f"all,{FASHION}")
  assert len(cfg.workloads) == 4 and cfg.pipelines == (FASHION,)
  assert config.parse_config(workloads="none").pipelines == ()
  with pytest.raises(ValueError) as e:
    config.parse_config(workloads="pipeline_cifar")
  assert "pipeline_cifar" in str(e.value) and FASHION in str(e.value)
  with pytest.raises(ValueError, match="methods"):
    config.parse_config(
      methods=f"all,{FASHION}"
    )  # only workloads take pipelines


def test_command_line_flag_names_the_pipeline(tmp_path):
  flag_values = B.flags.FlagValues()
  for name in [*B.DEFAULTS, "preset", "output_dir"]:
    flag_values[name] = copy.deepcopy(B.FLAGS[name])
  flag_values(
    ["benchmark.py", f"--workloads={FASHION}", f"--output_dir={tmp_path}"]
  )
  cfg = B.config_from_flags(flag_values)
  assert cfg.pipelines == (FASHION,) and cfg.workloads == ()
  assert FASHION in B.FLAGS["workloads"].help


def test_command_is_the_fashion_mnist_job_with_the_benchmarks_model_count():
  pipe = pipeline_lib.PIPELINES[FASHION]
  cmd = pipe.command("/tmp/x")
  assert cmd[0] == sys.executable and cmd[1].endswith("experiments/lira.py")
  assert cmd[2:] == [
    "--dataset=fashion_mnist",
    "--num_models=64",
    "--models_per_step=16",
    "--output_dir=/tmp/x",
  ]
  # --num_models overrides; a chunk never holds more models than the job has.
  assert pipe.command("/tmp/x", 8)[3:5] == [
    "--num_models=8",
    "--models_per_step=8",
  ]


def test_row_arithmetic_from_a_job_report():
  pipe = pipeline_lib.PIPELINES[FASHION]
  row = pipeline_lib.summarise(
    pipe, _job_report(), ["python", "lira.py"], 880.0
  )
  pipeline_lib.apply_peak(row, 100.0)
  p, j = row["phases"], row["job"]
  assert list(p) == ["train", "inference", "other", "attacks", "null_check"]
  assert p["inference"]["flops"] == 2.0e12 + 8.0e12
  assert p["inference"]["flops_by_part"] == {"queries": 2.0e12, "views": 8.0e12}
  assert p["inference"]["seconds"] == 40.0
  assert p["other"]["seconds"] == pytest.approx(850.0 - 800.0 - 40.0)
  # The phases add up to the job; its seconds are what the job's own efficiency divides by.
  assert sum(x["seconds"] for x in p.values()) == pytest.approx(j["seconds"])
  assert j["seconds"] == pytest.approx(871.5) and j["flops"] == 7.0e13
  for part in (p["train"], p["inference"], j):
    assert part["gflops"] == pytest.approx(
      part["flops"] / part["seconds"] / 1e9
    )
    assert part["fraction_of_peak"] == pytest.approx(part["gflops"] / 100.0)
  for name in ("other", "attacks", "null_check"):
    assert p[name]["flops"] is None and p[name]["fraction_of_peak"] is None
  assert row["peak_gflops"] == 100.0 and row["models"] == 64
  # Without a null check (None in the job's report) that phase takes no time.
  row = pipeline_lib.summarise(pipe, _job_report(None), [], 1.0)
  assert row["phases"]["null_check"]["seconds"] == 0.0
  assert row["job"]["seconds"] == pytest.approx(870.0)


def test_a_job_without_flops_is_refused():
  job = _job_report()
  del job["efficiency"]
  with pytest.raises(pipeline_lib.PipelineError, match="efficiency"):
    pipeline_lib.summarise(pipeline_lib.PIPELINES[FASHION], job, [], 1.0)


def _goals(backend="cpu", pipelines=None):
  rep = dict(
    device={"backend": backend},
    workloads={},
    lira=None,
    art=None,
    memory=None,
  )
  if pipelines is not None:
    rep["pipelines"] = pipelines
  return {g["name"]: g for g in goals_lib.goals(rep)}


def _row(job_fraction, inference_fraction):
  return {
    "job": {"fraction_of_peak": job_fraction},
    "phases": {"inference": {"fraction_of_peak": inference_fraction}},
  }


def test_pipeline_goals_judged_on_cpu_only_where_measured():
  job, inference = (
    f"{FASHION}: job efficiency",
    f"{FASHION}: inference fraction of matmul peak",
  )
  # A run without pipelines keeps the goal table it had.
  assert job not in _goals() and job not in _goals(pipelines={})
  g = _goals(pipelines={FASHION: _row(0.61, 0.59)})
  assert (g[job]["value"], g[job]["goal"], g[job]["met"]) == (0.61, 0.6, True)
  assert (g[inference]["value"], g[inference]["met"]) == (0.59, False)
  g = _goals("gpu", pipelines={FASHION: _row(0.7, 0.7)})
  assert g[job]["met"] is None and "not judged on gpu" in g[job]["detail"]
  # Another pipeline ran, not this one: listed with no value and no verdict.
  g = _goals(pipelines={"pipeline_digits_tiny": _row(0.1, 0.1)})
  assert all(
    g[n]["value"] is None and g[n]["met"] is None for n in (job, inference)
  )


def test_a_failing_job_raises_with_its_stderr_tail():
  # lira.py refuses fewer than 6 models with a usage error, before loading any data.
  bad = pipeline_lib.Pipeline("bad", "digits", num_models=4, models_per_step=4)
  lines = []
  with pytest.raises(pipeline_lib.PipelineError) as e:
    pipeline_lib.run_pipeline(bad, log=lines.append)
  msg = str(e.value)
  assert "bad: the job exited with status" in msg and "lira.py" in msg
  assert "--num_models must be >= 6" in msg
  assert any("--num_models must be >= 6" in line for line in lines)


@pytest.mark.slow
def test_tiny_digits_pipeline_through_the_runner(tmp_path):
  cfg = config.parse_config(
    workloads="pipeline_digits_tiny",
    lira=False,
    memory_models=0,
    art=False,
    matmul_sizes="128",
    repeats=1,
    output_dir=str(tmp_path),
    pipelines=TINY,
  )
  rep = runner.run(cfg, pipelines=TINY, log=lambda s: None)
  on_disk = json.loads((tmp_path / "report.json").read_text())
  assert on_disk["workloads"] == {}
  row = on_disk["pipelines"]["pipeline_digits_tiny"]
  assert row == json.loads(json.dumps(rep["pipelines"]["pipeline_digits_tiny"]))
  assert row["models"] == 8 and "--epochs=2" in row["command"]
  best = on_disk["matmul_peak_gflops"]
  p, j = row["phases"], row["job"]
  own = row["job_report"]["efficiency"]
  flops = own["flops"]
  assert row["peak_gflops"] == best
  # Every fraction divides by the benchmark's best peak, not the job's own.
  for part in (p["train"], p["inference"], j):
    assert part["seconds"] > 0 and part["flops"] > 0
    assert part["fraction_of_peak"] == pytest.approx(
      part["flops"] / part["seconds"] / 1e9 / best, rel=1e-9
    )
  assert p["train"]["flops"] == flops["train"]
  assert p["inference"]["flops"] == flops["queries"] + flops["views"]
  assert j["flops"] == pytest.approx(own["total_flops"])
  assert sum(x["seconds"] for x in p.values()) == pytest.approx(j["seconds"])
  assert j["seconds"] == pytest.approx(own["seconds"], rel=1e-9)
  timing = row["job_report"]["timing_s"]
  assert p["inference"]["seconds"] == timing["predict"]
  assert j["seconds"] <= timing["total"] < row["process_wall_seconds"]
  goals = {g["name"]: g for g in on_disk["goals"]}
  assert goals[f"{FASHION}: job efficiency"]["value"] is None
  md = (tmp_path / "report.md").read_text()
  assert md == report_lib.markdown(on_disk)
  assert "## The whole job: pipeline_digits_tiny" in md
  assert "| phase | seconds | TFLOP | GFLOP/s | % of peak |" in md
  assert f"| **job** | {j['seconds']:.1f} |" in md
  assert "| inference (queries + label-only views) |" in md
