"""A self-contained HTML page of an audit: the attack table, the ROC curves
and the training examples the attacks expose most.

:func:`write_html_report` turns a ``report.json`` dict (the schema the
scripts write, see :mod:`miajax.report`) into one ``report.html`` that opens
offline in any browser: images are inline ``data:`` PNGs, the style and the
one small script are inline, and a Content-Security-Policy forbids the page
to load anything else. The page is made from a plain ``string.Template`` and
every text from the report or the caller is HTML-escaped.

Each section appears only when the report holds its data: a summary of the
run (``report["config"]``, ``"protocol"``, ``"shadows"``, ``"target"``,
read defensively), the attack table (``report["attacks"]``), the ROC image,
``report["match"]`` and ``report["calibration"]`` (generic tables whose
columns are the keys of their row dicts, so their schema can evolve), and a
grid of the most exposed examples (images) or a table of their first
features (tabular data).
"""

from __future__ import annotations

import numbers
import os
import pathlib
import string

import numpy as np

from miajax import _html as h
from miajax._html import png_data_uri
from miajax.runs.io import write_bytes_atomic

__all__ = ["MAX_EXPOSED", "MAX_FEATURES", "png_data_uri", "write_html_report"]

MAX_EXPOSED = 32  # examples shown at most
MAX_FEATURES = 20  # features of a tabular example shown at most
_DOT = " \u00b7 "

_PAGE = string.Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; \
img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<meta name="generator" content="miajax.html_report">
<title>$title</title>
<style>$style</style>
</head>
<body>
<h1>$title</h1>
$body
<script>$script</script>
</body>
</html>
""")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num span { white-space: nowrap; }
div.scroll { overflow-x: auto; }
tr.chosen td { background: #fff4c2; font-weight: bold; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dl.facts dt { font-weight: bold; }
dl.facts dd { margin: 0; }
.verdict { font-size: 1.1em; }
.note { color: #666; font-size: 0.9em; }
.grid { display: grid; gap: 0.8em;
  grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); }
figure.example { margin: 0; padding: 0.4em; border: 2px solid #ccc;
  text-align: center; }
figure.example.member { border-color: #c0392b; }
figure.example img { image-rendering: pixelated; }
figure.example figcaption { font-size: 0.8em; }
figure.roc img { max-width: 100%; }
"""

# Counts the images the browser decoded: a headless --dump-dom shows it.
_SCRIPT = """
window.addEventListener("load", function () {
  var loaded = 0;
  for (var i = 0; i < document.images.length; i++) {
    var img = document.images[i];
    if (img.complete && img.naturalWidth > 0) loaded++;
  }
  document.body.dataset.images = document.images.length;
  document.body.dataset.imagesLoaded = loaded;
});
"""


def _first(*values):
  return next((v for v in values if v is not None), None)


def _summary_section(report: dict) -> str:
  protocol = report.get("protocol")
  pool = h.get(protocol, "pool")
  shadows = report.get("shadows")
  models = _first(
    h.get(shadows, "models"),
    h.get(protocol, "models"),
    h.get(protocol, "references"),
    h.get(protocol, "num_references"),
  )
  usable = _first(
    h.get(shadows, "usable_models"), h.get(protocol, "usable_models")
  )
  if isinstance(models, int) and isinstance(usable, int) and usable != models:
    models = f"{models} ({usable} usable)"
  accuracy = h.get(report, "target", "test_accuracy_on")
  facts = [
    (
      "dataset",
      _first(h.get(report, "config", "dataset"), h.get(pool, "name")),
    ),
    ("pool size", _first(h.get(protocol, "examples"), h.get(pool, "examples"))),
    ("evaluation", h.get(protocol, "evaluation")),
    ("shadow models", models),
    ("target members", h.get(report, "target", "members")),
    ("target non-members", h.get(report, "target", "non_members")),
    ("target train accuracy", h.get(report, "target", "train_accuracy")),
    (
      "target test accuracy" + (f" ({accuracy})" if accuracy else ""),
      h.get(report, "target", "test_accuracy"),
    ),
  ]
  body = h.facts(facts)
  skipped = report.get("attacks_skipped")
  if isinstance(skipped, str) and skipped:
    body += f'<p class="note">attacks skipped: {h.escape(skipped)}</p>'
  return f'<section id="summary"><h2>Run</h2>{body}</section>' if body else ""


def _level_label(key) -> str:
  try:
    return f"{100 * float(key):g}%"
  except (TypeError, ValueError):
    return str(key)


def _levels(summaries, table) -> list:
  keys = dict.fromkeys(
    k for s in summaries for k in (h.get(s, table) or {}) if isinstance(s, dict)
  )

  def order(key):
    try:
      return (0, -float(key))
    except (TypeError, ValueError):
      return (1, 0.0)

  return sorted(keys, key=order)


def _interval(summary, key, level=None):
  """``summary[key + "_ci"]`` (by level), else ``summary["intervals"][key]``."""
  for ci in (h.get(summary, key + "_ci"), h.get(summary, "intervals", key)):
    if level is not None:
      ci = h.get(ci, level)
    if ci is not None:
      return ci
  return None


def _attack_section(attacks) -> str:
  if not isinstance(attacks, dict) or not attacks:
    return ""
  summaries = list(attacks.values())
  fpr = _levels(summaries, "tpr_at_fpr")
  fnr = _levels(summaries, "tnr_at_fnr")
  has = lambda key: any(h.get(s, key) is not None for s in summaries)  # noqa: E731
  with_eps, with_unscored = (
    has("epsilon_lower_bound"),
    any(h.number(h.get(s, "unscored_examples")) for s in summaries),
  )
  header = (
    ["attack", "AUC", "bal. acc"]
    + [f"TPR@{_level_label(k)}FPR" for k in fpr]
    + [f"TNR@{_level_label(k)}FNR" for k in fnr]
    + (["\u03b5 lower bound"] if with_eps else [])
    + (["unscored examples"] if with_unscored else [])
  )
  rows = []
  for name, s in attacks.items():
    row = [(str(name), False)]
    for key in ("auc", "balanced_accuracy"):
      row.append((h.fmt(h.get(s, key), _interval(s, key)), True))
    for table, levels in (("tpr_at_fpr", fpr), ("tnr_at_fnr", fnr)):
      for k in levels:
        value = h.get(s, table, k)
        row.append((h.fmt(value, _interval(s, table, k), rate=True), True))
    if with_eps:
      eps = h.number(h.get(s, "epsilon_lower_bound"))
      row.append((h.DASH if eps is None else f"{eps:.2f}", True))
    if with_unscored:
      row.append((h.cell(h.get(s, "unscored_examples")), True))
    rows.append(row)
  note = (
    '<p class="note">Values with their 95 % intervals where the report holds'
    f" them; {h.DASH} where a value is missing or unresolvable.</p>"
  )
  return (
    '<section id="attacks"><h2>Attacks</h2>'
    + h.table(header, rows, table_id="attack-table")
    + note
    + "</section>"
  )


def _roc_section(roc_png) -> str:
  if roc_png is None:
    return ""
  if not isinstance(roc_png, (bytes, bytearray, memoryview)):
    path = pathlib.Path(os.fspath(roc_png))
    if not path.is_file():
      raise FileNotFoundError(f"roc_png: no such file {path}")
    roc_png = path.read_bytes()
  uri = png_data_uri(roc_png)
  return (
    '<section id="roc"><h2>ROC curves</h2><figure class="roc">'
    f'<img src="{uri}" alt="ROC curves of the attacks"></figure></section>'
  )


def _rest(obj: dict, used) -> str:
  return h.facts((k, v) for k, v in obj.items() if k not in used)


def _match_section(match) -> str:
  if match is None:
    return ""
  if not isinstance(match, dict):
    text = h.escape(h.cell(match))
    return f'<section id="match"><h2>Match</h2><p>{text}</p></section>'
  body = ""
  if match.get("verdict") is not None:
    body += (
      f'<p class="verdict"><strong>Verdict:</strong> '
      f"{h.escape(h.cell(match['verdict']))}</p>"
    )
  table = match.get("table")
  if isinstance(table, (list, tuple)) and table:
    body += h.generic_table(table, table_id="match-table")
  body += _rest(match, ("verdict", "table"))
  return f'<section id="match"><h2>Match</h2>{body}</section>'


def _calibration_section(calibration) -> str:
  if calibration is None:
    return ""
  if not isinstance(calibration, dict):
    return (
      '<section id="calibration"><h2>Calibration</h2>'
      f"<p>{h.escape(h.cell(calibration))}</p></section>"
    )
  candidates = calibration.get("candidates")
  candidates = list(candidates) if isinstance(candidates, (list, tuple)) else []
  chosen = calibration.get("chosen")
  body = ""
  if isinstance(chosen, numbers.Integral) and not isinstance(chosen, bool):
    highlight = {int(chosen)} if 0 <= chosen < len(candidates) else set()
  else:
    highlight = {i for i, c in enumerate(candidates) if c == chosen}
  if chosen is None:  # rows that mark themselves: {"chosen": True, ...}
    highlight = {
      i for i, c in enumerate(candidates) if h.get(c, "chosen") is True
    }
  if candidates:
    body += h.generic_table(
      candidates, highlight=highlight, table_id="calibration-table"
    )
    if highlight:
      body += '<p class="note">The highlighted row is the chosen one.</p>'
  if chosen is not None and not highlight:
    body += "<p><strong>Chosen:</strong></p>" + (
      h.generic_table([chosen], table_id="calibration-chosen")
      if isinstance(chosen, dict)
      else f"<p>{h.escape(h.cell(chosen))}</p>"
    )
  body += _rest(calibration, ("candidates", "chosen"))
  return f'<section id="calibration"><h2>Calibration</h2>{body}</section>'


def _member_text(value) -> str | None:
  if value is None:
    return None
  return "member" if bool(value) else "non-member"


def _score_text(value) -> str:
  number = h.number(value)
  return h.DASH if number is None else format(number, ".4g")


def _exposed_section(exposed, max_exposed: int, max_features: int) -> str:
  if not exposed:
    return ""
  items = list(exposed)[:max_exposed]
  for i, item in enumerate(items):
    if not isinstance(item, dict):
      raise TypeError(f"exposed[{i}] must be a dict, got {type(item).__name__}")
  images = [
    (i, h.image_array(item["image"], f"exposed[{i}]"))
    for i, item in enumerate(items)
    if item.get("image") is not None
  ]
  figures = []
  if images:
    # One range for all: brightness compares across the grid.
    finite = np.concatenate([a[np.isfinite(a)] for _, a in images])
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    for i, array in images:
      item = items[i]
      caption = _DOT.join(
        [
          f"#{h.cell(item.get('rank', i + 1))}",
          f"label {h.cell(item.get('label'))}",
          f"score {_score_text(item.get('score'))}",
        ]
      )
      detail = [f"example {h.cell(item.get('index'))}"]
      if _member_text(item.get("is_member")):
        detail.append(_member_text(item.get("is_member")))
      cls = "example member" if item.get("is_member") else "example"
      uri = png_data_uri(h.image_png(array, float(low), float(high)))
      figures.append(
        f'<figure class="{cls}"><img src="{uri}" alt="{h.escape(caption)}">'
        f"<figcaption>{h.escape(caption)}<br>{h.escape(_DOT.join(detail))}"
        "</figcaption></figure>"
      )
  rows = [item for item in items if item.get("image") is None]
  body = ""
  if figures:
    body += '<div class="grid" id="exposed-grid">' + "".join(figures) + "</div>"
  if rows:
    body += _exposed_rows(rows, max_features)
  count = (
    f"{len(items)} of {len(exposed)}"
    if len(exposed) > len(items)
    else len(items)
  )
  frame = " A red frame marks a member of the target's training set."
  return (
    '<section id="exposed"><h2>Most exposed training examples</h2>'
    f'<p class="note">{h.escape(count)} examples, most exposed first.'
    f"{frame if figures else ''}</p>{body}</section>"
  )


def _exposed_rows(rows, max_features: int) -> str:
  width = max(
    (np.size(r["row"]) for r in rows if r.get("row") is not None), default=0
  )
  shown = min(width, max_features)
  header = ["rank", "index", "label", "score", "member"] + [
    f"x{j}" for j in range(shown)
  ]
  cells = []
  for i, item in enumerate(rows):
    values = (
      np.ravel(np.asarray(item["row"], dtype=np.float64))
      if item.get("row") is not None
      else np.zeros(0)
    )
    cells.append(
      [
        (h.cell(item.get("rank", i + 1)), True),
        (h.cell(item.get("index")), True),
        (h.cell(item.get("label")), False),
        (_score_text(item.get("score")), True),
        (_member_text(item.get("is_member")) or h.DASH, False),
      ]
      + [
        ((h.cell(float(values[j])) if j < values.size else ""), True)
        for j in range(shown)
      ]
    )
  note = (
    f'<p class="note">The first {shown} of {width} features.</p>'
    if width > shown
    else ""
  )
  return h.table(header, cells, table_id="exposed-table") + note


def write_html_report(
  path,
  report: dict,
  *,
  roc_png=None,
  exposed=None,
  title: str = "Membership-inference audit",
  max_exposed: int = MAX_EXPOSED,
  max_features: int = MAX_FEATURES,
) -> pathlib.Path:
  """Write a self-contained HTML page of an audit, atomically.

  Args:
    path: the HTML file to write (replaced atomically: a temporary file
      beside it, then ``os.replace``), or an existing directory to write
      ``report.html`` into.
    report: the ``report.json`` dict. Used when present: ``"config"``,
      ``"protocol"``, ``"shadows"``, ``"target"`` (the run summary),
      ``"attacks"`` (``{name: summary}`` as from
      :func:`miajax.report.attack_summary`, intervals from ``<key>_ci`` or
      ``"intervals"``), ``"match"`` (``{"verdict": str, "table": [row
      dict]}``), ``"calibration"`` (``{"candidates": [row dict], "chosen":
      row dict or index}``); other keys are ignored.
    roc_png: the ROC plot as PNG bytes or a PNG file's path, or None.
    exposed: the most exposed examples, most exposed first: dicts with
      ``index``, ``rank``, ``label``, ``score``, ``is_member`` and either
      ``image`` (float ``[H, W]`` or ``[H, W, C]``, any range: all are mapped
      with one shared min..max to black..white) or ``row`` (1-D float
      features, tabular data). The first ``max_exposed`` are shown, images
      as a grid upscaled with nearest neighbours, rows as a table of their
      first ``max_features`` features.
    title: the page title.

  Returns:
    The path written, a ``pathlib.Path``.

  Raises:
    TypeError, ValueError: ``report`` is not a dict, or an exposed example is
      malformed. FileNotFoundError: ``roc_png`` names no file. Nothing is
      written then.
  """
  if not isinstance(report, dict):
    raise TypeError(f"report must be a dict, got {type(report).__name__}")
  path = pathlib.Path(path)
  if path.is_dir():
    path = path / "report.html"
  sections = [
    _summary_section(report),
    _attack_section(report.get("attacks")),
    _roc_section(roc_png),
    _match_section(report.get("match")),
    _calibration_section(report.get("calibration")),
    _exposed_section(exposed, int(max_exposed), int(max_features)),
  ]
  page = _PAGE.substitute(
    title=h.escape(title),
    style=_STYLE,
    body="\n".join(s for s in sections if s),
    script=_SCRIPT,
  )
  write_bytes_atomic(path, page.encode("utf-8"))
  return path
