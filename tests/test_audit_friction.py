"""experiments/audit.py's rough edges (issue 28): help, docs, report config, scores.csv ranking, ROC axes, log noise."""

import ast
import csv
import json
import logging
import re

import numpy as np
import pytest
from absl import logging as absl_logging

from miajax import plots
from test_audit import C, N, ROOT, SMALL, _run, audit  # noqa: F401 (audit: experiments/ on sys.path)

import common  # noqa: E402 (experiments/, put on sys.path by test_audit)
import harness  # noqa: E402
from configs import recipes  # noqa: E402

DOC = (ROOT / "docs" / "audit.md").read_text()


def _recipe_flag_names() -> list[str]:
  """The flags common.define_training_flags defines (its own and define_recipe_flags'), read from the source."""
  tree = ast.parse((ROOT / "experiments" / "common.py").read_text())
  names = []
  for fn in tree.body:
    if isinstance(fn, ast.FunctionDef) and fn.name in (
      "define_recipe_flags",
      "define_training_flags",
    ):
      for node in ast.walk(fn):
        if (
          isinstance(node, ast.Call)
          and isinstance(node.func, ast.Attribute)
          and node.func.attr.startswith("DEFINE_")
        ):
          names.append(node.args[0].value)
  return names


@pytest.fixture(scope="module")
def tiny_audit(tmp_path_factory):
  """One audit of a random 'target' on 300 digits with 4 two-epoch shadows: (output dir, process)."""
  tmp = tmp_path_factory.mktemp("friction")
  rng = np.random.default_rng(0)
  np.save(tmp / "target.npy", rng.normal(size=(N, C)).astype(np.float32))
  np.save(tmp / "members.npy", np.arange(0, N, 2))
  out = tmp / "out"
  proc = _run(
    *SMALL,
    "--num_models=4",
    f"--target_outputs={tmp / 'target.npy'}",
    f"--target_members={tmp / 'members.npy'}",
    f"--output_dir={out}",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return out, proc


# 1. --helpshort


def test_helpshort_lists_every_recipe_flag():
  names = _recipe_flag_names()
  assert {"epochs", "learning_rate", "schedule", "widths", "seed"} <= set(names)
  proc = _run("--helpshort", timeout=120)
  text = proc.stdout + proc.stderr
  listed = set(re.findall(r"^\s+--(?:\[no\])?(\w+)", text, flags=re.M))
  missing = [n for n in names if n not in listed]
  assert not missing, text
  # The audit's own flags stay, and the label-only views (never run by an audit) are gone.
  assert {"target_outputs", "target_members", "shadow_store"} <= listed
  assert not any(n.startswith("label_only") for n in listed)


# 2. docs/audit.md: the default recipe, and a PyTorch example that follows it


def _md_table(text: str, first_header: str) -> list[dict]:
  lines = text.splitlines()
  start = next(
    i for i, s in enumerate(lines) if s.startswith(f"| {first_header} |")
  )
  header = [c.strip() for c in lines[start].strip("|").split("|")]
  rows = []
  for line in lines[start + 2 :]:
    if not line.startswith("|"):
      break
    rows.append(
      dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
    )
  return rows


def test_docs_table_states_the_default_shadow_recipe():
  rows = {r["dataset"]: r for r in _md_table(DOC, "dataset")}
  expected = {
    "digits": recipes.training("digits"),
    "fashion_mnist": recipes.training("fashion_mnist"),
    "any other": recipes.training("no_such_dataset"),  # recipes.GENERIC
  }
  assert set(rows) == set(expected)
  for name, want in expected.items():
    row = rows[name]
    m = re.fullmatch(r"MLP ([\d-]+), (\w+)", row["model"])
    assert m and want["model"] == "mlp", row
    assert tuple(int(w) for w in m.group(1).split("-")) == tuple(
      want["model_kwargs"]["widths"]
    )
    assert m.group(2) == want["model_kwargs"]["activation"]
    assert int(row["epochs"]) == want["epochs"]
    assert int(row["batch size"]) == want["batch_size"]
    assert row["optimizer"] == want["optimizer"]
    assert float(row["learning rate"]) == want["learning_rate"]
    assert float(row["momentum"]) == want["momentum"]
    assert float(row["weight decay"]) == want["weight_decay"]
    assert row["schedule"] == want["schedule"]


def _calls(tree, dotted: str) -> list[ast.Call]:
  """The calls of ``dotted`` in source order (ast.walk goes breadth first)."""
  found = [
    n
    for n in ast.walk(tree)
    if isinstance(n, ast.Call) and ast.unparse(n.func) == dotted
  ]
  return sorted(found, key=lambda n: (n.lineno, n.col_offset))


def test_docs_pytorch_example_trains_like_the_digits_shadows():
  """torch is not installed: the example's hyperparameters are read from its source, not run."""
  (code,) = re.findall(r"```python\n(.*?)```", DOC, flags=re.S)
  tree = ast.parse(code)
  consts = {}
  for node in tree.body:
    if isinstance(node, ast.Assign):
      try:
        value = ast.literal_eval(node.value)
      except ValueError:
        continue
      target = node.targets[0]
      if isinstance(target, ast.Tuple):
        consts.update(zip((t.id for t in target.elts), value))
      else:
        consts[target.id] = value

  def value(expr):
    return eval(compile(ast.Expression(expr), "doc", "eval"), {}, dict(consts))

  want = recipes.training("digits")
  assert (
    consts["EPOCHS"],
    consts["BATCH_SIZE"],
    consts["LEARNING_RATE"],
    consts["MOMENTUM"],
    consts["WEIGHT_DECAY"],
  ) == (
    want["epochs"],
    want["batch_size"],
    want["learning_rate"],
    want["momentum"],
    want["weight_decay"],
  )
  assert (want["optimizer"], want["schedule"]) == ("sgd", "cosine")
  # The network: 64 inputs, the recipe's widths with its activation between layers, 10 classes.
  sizes = [
    tuple(value(a) for a in c.args) for c in _calls(tree, "torch.nn.Linear")
  ]
  widths = tuple(want["model_kwargs"]["widths"])
  assert sizes == list(zip((64, *widths), (*widths, 10)))
  assert want["model_kwargs"]["activation"] == "relu"
  assert len(_calls(tree, "torch.nn.ReLU")) == len(widths)
  # SGD with the recipe's values.
  (sgd,) = _calls(tree, "torch.optim.SGD")
  kw = {k.arg: value(k.value) for k in sgd.keywords}
  assert kw == {
    "lr": want["learning_rate"],
    "momentum": want["momentum"],
    "weight_decay": want["weight_decay"],
  }
  # A cosine over every step of training, stepped once per batch, after the optimizer.
  (cos,) = _calls(tree, "torch.optim.lr_scheduler.CosineAnnealingLR")
  t_max = {k.arg: ast.unparse(k.value) for k in cos.keywords}["T_max"]
  assert t_max == "total_steps"
  assert "total_steps = EPOCHS * math.ceil(len(members) / BATCH_SIZE)" in code
  (epochs_loop,) = [
    n
    for n in tree.body
    if isinstance(n, ast.For) and ast.unparse(n.iter) == "range(EPOCHS)"
  ]
  shuffle, batch_loop = epochs_loop.body
  assert ast.unparse(shuffle) == (
    "order = torch.tensor(members)[torch.randperm(len(members))]"
  )
  assert ast.unparse(batch_loop.iter) == "order.split(BATCH_SIZE)"
  steps = [ast.unparse(s) for s in batch_loop.body]
  assert steps[-2:] == ["opt.step()", "sched.step()"]
  # Its files go under runs/, and the audit command reads those.
  saved = [ast.literal_eval(c.args[0]) for c in _calls(tree, "np.save")]
  assert saved == ["runs/target_logits.npy", "runs/target_members.npy"]
  (command,) = [
    b
    for b in re.findall(r"```bash\n(.*?)```", DOC, flags=re.S)
    if "audit.py" in b
  ]
  assert f"--target_outputs={saved[0]}" in command
  assert f"--target_members={saved[1]}" in command
  assert "--dataset=digits" in command
  readme = (ROOT / "README.md").read_text()
  assert f"--target_outputs={saved[0]} --target_members={saved[1]}" in readme


# 3. report.json: the recipe used, nothing an audit does not do


def test_report_config_records_the_resolved_recipe(tiny_audit):
  out, _ = tiny_audit
  rep = json.loads((out / "report.json").read_text())
  config, recipe = rep["config"], rep["recipe"]
  digits = recipes.training("digits")
  # --epochs=2 --widths=32 given; the rest the digits defaults, resolved rather than null.
  assert {
    k: config[k]
    for k in (
      "model",
      "widths",
      "activation",
      "epochs",
      "batch_size",
      "learning_rate",
      "optimizer",
      "momentum",
      "weight_decay",
      "schedule",
      "seed",
    )
  } == {
    "model": "mlp",
    "widths": "32",
    "activation": "relu",
    "epochs": 2,
    "batch_size": digits["batch_size"],
    "learning_rate": digits["learning_rate"],
    "optimizer": "sgd",
    "momentum": digits["momentum"],
    "weight_decay": digits["weight_decay"],
    "schedule": "cosine",
    "seed": 0,
  }
  assert recipe == {
    **recipe,
    "model": "mlp",
    "model_kwargs": {"activation": "relu", "widths": [32]},
    "epochs": 2,
    "batch_size": digits["batch_size"],
    "learning_rate": digits["learning_rate"],
    "schedule": "cosine",
    "warmup_epochs": 0.0,
  }
  # What an audit never does, and the libraries' own flags, are not part of its configuration.
  assert not [
    k
    for k in config
    if k.startswith(("label_only", "experimental_", "orbax")) or k == "pkeep"
  ]
  assert set(config) >= {"target_outputs", "target_members", "num_models"}


def test_flag_values_keeps_only_the_scripts_modules():
  assert common._own_module("common") and common._own_module(
    str(ROOT / "experiments" / "audit.py")
  )
  assert not common._own_module("absl.logging")
  assert not common._own_module("orbax.checkpoint._src.multihost.multihost")


# 4. scores.csv: ranked by the strongest attack, every attack's rank beside its score


def _summary(auc, tprs):
  return {"auc": auc, "tpr_at_fpr": dict(zip(("0.01", "0.001", "1e-05"), tprs))}


def test_strongest_attack_rule():
  pick = audit.strongest_attack
  # The lowest resolved level decides; AUC breaks its ties.
  s = {
    "a": _summary(0.90, (0.30, 0.05, None)),
    "b": _summary(0.70, (0.10, 0.08, None)),
    "c": _summary(0.95, (0.10, 0.08, None)),
  }
  got = pick(s)
  assert (got["attack"], got["fpr"], got["tpr"], got["auc"]) == (
    "c",
    0.001,
    0.08,
    0.95,
  )
  assert "0.1% FPR" in got["rule"] and "AUC" in got["rule"]
  # Fewer than 1,000 non-members: 1% is the lowest level; unscored attacks do not compete.
  s = {
    "none": {"auc": None, "tpr_at_fpr": {"0.01": None}},
    "a": _summary(0.60, (0.02, None, None)),
    "b": _summary(0.55, (0.04, None, None)),
  }
  assert pick(s)["attack"] == "b" and pick(s)["fpr"] == 0.01
  # No level resolved: the AUC alone; no attack scored: the first of the report.
  s = {"a": _summary(0.6, (None,) * 3), "b": _summary(0.7, (None,) * 3)}
  assert pick(s)["attack"] == "b" and pick(s)["fpr"] is None
  assert pick({"x": {"auc": None, "tpr_at_fpr": {}}})["attack"] == "x"


def test_exposure_ranks_put_unscored_last_unranked():
  order, rank = audit.exposure_ranks(np.array([0.5, np.nan, 2.0, 0.5, -1.0]))
  assert order.tolist() == [2, 0, 3, 4, 1]
  assert rank.tolist() == [2, 0, 1, 3, 4]


def test_scores_csv_ranks_by_the_strongest_attack(tiny_audit):
  out, proc = tiny_audit
  rep = json.loads((out / "report.json").read_text())
  ranked_by = rep["ranked_by"]
  assert ranked_by == {**ranked_by, **audit.strongest_attack(rep["attacks"])}
  assert ranked_by["fpr"] == 0.01  # 150 non-members resolve 1%, not 0.1%
  best = ranked_by["attack"]
  # No attack beats it at that level, nor ties it with a higher AUC.
  for name, s in rep["attacks"].items():
    tpr = s["tpr_at_fpr"]["0.01"]
    assert s["auc"] is not None and tpr is not None, name
    assert (tpr, s["auc"]) <= (ranked_by["tpr"], ranked_by["auc"]), name
  assert f"scores.csv ranks candidates by {best}" in proc.stdout

  with open(out / "scores.csv") as f:
    rows = list(csv.DictReader(f))
  header = list(rows[0])
  names = list(rep["attacks"])
  assert header[:5] == ["index", "is_member", "label", best, f"{best}_rank"]
  for name in names:
    i = header.index(name)
    assert header[i + 1] == f"{name}_rank"
  assert len(header) == 3 + 2 * len(names) and len(rows) == N
  # Rows: most exposed first by the strongest attack.
  top = [float(r[best]) for r in rows]
  assert top == sorted(top, reverse=True)
  assert [int(r[f"{best}_rank"]) for r in rows] == list(range(1, N + 1))
  # Every attack's rank orders its own scores, 1 = highest.
  for name in names:
    by_rank = sorted(rows, key=lambda r: int(r[f"{name}_rank"]))
    assert [int(r[f"{name}_rank"]) for r in by_rank] == list(range(1, N + 1))
    scores = [float(r[name]) for r in by_rank]
    assert scores == sorted(scores, reverse=True), name


# 5. roc.png: the FPR axis from what the pool resolves, no "n/a"


def _curve(seed, members, non_members, shift):
  rng = np.random.default_rng(seed)
  scores = np.concatenate(
    [rng.normal(shift, 1, members), rng.normal(0, 1, non_members)]
  )
  return scores, np.arange(members + non_members) < members


def test_roc_axis_starts_at_one_false_positive_and_legend_has_no_na(tmp_path):
  fig = plots.roc_figure(
    {"strong": _curve(0, 150, 150, 2.0), "weak": _curve(1, 150, 120, 0.3)},
    title="small pool",
  )
  (ax,) = fig.axes
  assert ax.get_xlim()[0] == pytest.approx(1 / 150)
  assert ax.get_xlim()[1] == pytest.approx(1)
  texts = [t.get_text() for t in ax.get_legend().get_texts()]
  assert len(texts) == 3 and not [t for t in texts if "n/a" in t]
  assert re.fullmatch(r"strong \(AUC 0\.\d{3}\)", texts[1]), texts
  # 1,000 non-members and more: TPR at 0.1% FPR is measured, and shown.
  fig = plots.roc_figure({"big": _curve(2, 500, 2000, 2.0)})
  (ax,) = fig.axes
  assert ax.get_xlim()[0] == pytest.approx(1 / 2000)
  (label,) = [t.get_text() for t in ax.get_legend().get_texts()][1:]
  assert re.fullmatch(r"big \(AUC 0\.\d{3}, TPR@0\.1%FPR \d+\.\d%\)", label)
  # Beyond 100,000 non-members the axis stops at the report's finest level, 1e-5.
  fig = plots.roc_figure({"huge": _curve(3, 100, 200_000, 1.0)})
  assert fig.axes[0].get_xlim()[0] == pytest.approx(1e-5)
  # plot_roc (lira.py's and audit.py's caller) still writes the PNG and returns its path.
  path = plots.plot_roc({"s": _curve(0, 150, 150, 2.0)}, tmp_path / "r.png")
  assert path == str(tmp_path / "r.png")
  assert open(path, "rb").read()[:8] == b"\x89PNG\r\n\x1a\n"


# 6. No library chatter at the default verbosity


LOG_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ ([^:\s]+):\d+\] (.*)$")


def test_audit_output_has_no_orbax_or_tpu_probe_lines(tiny_audit):
  _, proc = tiny_audit
  text = proc.stdout + proc.stderr
  for noise in (
    "orbax",
    "Unable to initialize backend",
    "xla_bridge",
    "is experimental",
    "Created BasePyTreeCheckpointHandler",
  ):
    assert noise not in text, noise
  # Every INFO line is the project's own (audit.py, the store, the lowering...).
  ours = {
    p.name
    for p in [*ROOT.glob("miajax/**/*.py"), *ROOT.glob("experiments/**/*.py")]
  }
  lines = [LOG_LINE.match(s) for s in text.splitlines()]
  infos = [m.group(2) for m in lines if m and m.group(1) == "I"]
  assert infos and set(infos) <= ours, set(infos) - ours
  assert "training 4" in proc.stderr  # the run's own lines are still there


def test_library_chatter_filter():
  chatter = harness.LibraryChatter()

  def record(name, level, msg, path="/x/y.py"):
    return logging.LogRecord(name, level, path, 1, msg, None, None)

  site = "/venv/lib/python3.11/site-packages/orbax/checkpoint/_src/atomicity.py"
  before = absl_logging.get_verbosity()
  try:
    absl_logging.set_verbosity(absl_logging.INFO)
    assert not chatter.filter(
      record(
        "jax._src.xla_bridge",
        logging.INFO,
        "Unable to initialize backend 'tpu'",
      )
    )
    assert not chatter.filter(
      record(
        "jax._src.xla_bridge",
        logging.WARNING,
        "Platform 'tpu' is experimental and not all JAX functionality may be "
        "correctly supported!",
      )
    )
    assert chatter.filter(
      record("jax._src.xla_bridge", logging.WARNING, "CUDA backend failed")
    )
    assert not chatter.filter(record("absl", logging.INFO, "saving", site))
    assert chatter.filter(record("absl", logging.WARNING, "saving", site))
    assert chatter.filter(record("absl", logging.INFO, "trained 4 models"))
    # --verbosity=1: everything, for whoever debugs a save.
    absl_logging.set_verbosity(absl_logging.DEBUG)
    assert chatter.filter(record("absl", logging.INFO, "saving", site))
    assert chatter.filter(record("jax._src.xla_bridge", logging.INFO, "tpu"))
  finally:
    absl_logging.set_verbosity(before)
