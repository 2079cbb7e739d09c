"""miajax.html_report: a self-contained HTML audit page, checked as text and
in a real headless browser (Debian's chromium; skipped without one)."""

import base64
import html.parser
import io
import re
import warnings

import numpy as np
import pytest

from miajax import browser, html_report, plots, report
from miajax.html_report import write_html_report

BROWSER = browser.find_browser()
needs_browser = pytest.mark.skipif(
  BROWSER is None,
  reason="no headless browser: none of "
  + ", ".join(browser.BROWSERS)
  + " on PATH (Debian: apt-get install chromium; .ci/run installs it as root)",
)


class _Page(html.parser.HTMLParser):
  """The parts of a page the tests look at: tables by id, images, links."""

  def __init__(self, text):
    super().__init__()
    self.tables, self.images, self.urls, self.attrs = {}, [], [], []
    self._table = self._row = self._cell = None
    self._row_class = None
    self.feed(text)

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    self.attrs.append((tag, attrs))
    for key in ("src", "href", "action", "data"):
      if attrs.get(key):
        self.urls.append(attrs[key])
    if tag == "img":
      self.images.append(attrs)
    elif tag == "table":
      self._table = self.tables.setdefault(attrs.get("id"), [])
    elif tag == "tr" and self._table is not None:
      self._row = []
      self._table.append(self._row)
      self._row_class = attrs.get("class")
    elif tag in ("td", "th") and self._row is not None:
      self._cell = []

  def handle_endtag(self, tag):
    if tag in ("td", "th") and self._cell is not None:
      self._row.append("".join(self._cell))
      self._cell = None
    elif tag == "tr" and self._row is not None:
      if self._row_class:
        self._row.append(f"<class {self._row_class}>")
      self._row = None
    elif tag == "table":
      self._table = None

  def handle_data(self, data):
    if self._cell is not None:
      self._cell.append(data)


def _summary(seed=0, n=2000):
  rng = np.random.default_rng(seed)
  is_member = rng.random(n) < 0.5
  scores = rng.normal(size=n) + 0.3 * is_member
  with warnings.catch_warnings():  # too few scores for the lowest levels
    warnings.simplefilter("ignore", RuntimeWarning)
    summary = report.attack_summary(scores, is_member, num_bootstrap=100)
  return summary, (scores, is_member)


@pytest.fixture(scope="module")
def audit(tmp_path_factory):
  """A report like the scripts write, and its ROC plot."""
  out = tmp_path_factory.mktemp("audit")
  lira, lira_curve = _summary(0)
  rmia, rmia_curve = _summary(1)
  plain = {  # the schema without intervals, one value unresolvable
    "auc": 0.5,
    "balanced_accuracy": 0.5,
    "tpr_at_fpr": {"0.01": 0.0123, "0.001": None, "1e-05": None},
    "tnr_at_fnr": {"0.001": 0.0},
  }
  rep = {
    "config": {"dataset": "digits"},
    "protocol": {"evaluation": "external_target", "examples": 1797},
    "shadows": {"models": 16, "usable_models": 15},
    "target": {"train_accuracy": 0.99, "test_accuracy": 0.9},
    "attacks": {"lira_online": lira, "rmia": rmia, "<b>plain</b>": plain},
  }
  roc = plots.plot_roc(
    {"lira_online": lira_curve, "rmia": rmia_curve}, out / "roc.png"
  )
  return rep, roc


def _images(n, shape=(8, 8), seed=0):
  rng = np.random.default_rng(seed)
  return [
    {
      "index": 100 + i,
      "rank": i + 1,
      "label": i % 10,
      "score": 5.0 - i / 4,
      "is_member": i % 2 == 0,
      "image": rng.uniform(0, 16, size=shape),
    }
    for i in range(n)
  ]


def _png_size(uri):
  prefix = "data:image/png;base64,"
  assert uri.startswith(prefix), uri[:40]
  from matplotlib import image as mpl_image

  pixels = mpl_image.imread(io.BytesIO(base64.b64decode(uri[len(prefix) :])))
  return pixels.shape[:2]


def test_the_page_is_self_contained(tmp_path, audit):
  rep, roc = audit
  path = write_html_report(
    tmp_path / "report.html", rep, roc_png=roc, exposed=_images(3)
  )
  assert path == tmp_path / "report.html"
  text = path.read_text(encoding="utf-8")
  assert text.startswith("<!DOCTYPE html>")
  # Nothing to fetch: every URL is an inline image, no external link at all.
  page = _Page(text)
  assert page.urls and all(
    u.startswith("data:image/png;base64,") for u in page.urls
  )
  assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text)
  assert "http://" not in text and "https://" not in text
  assert not [t for t, _ in page.attrs if t in ("link", "iframe", "object")]
  assert "default-src 'none'" in text  # the CSP forbids loading anything else
  # Atomic: no temporary left beside it; a directory gets report.html.
  assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
  assert write_html_report(tmp_path, rep) == tmp_path / "report.html"


def test_user_text_is_escaped(tmp_path, audit):
  rep, _ = audit
  evil = '<script>alert("x")</script>'
  rep = {
    **rep,
    "attacks": {evil: rep["attacks"]["lira_online"]},
    "match": {"verdict": evil, "table": [{evil: evil}]},
    "calibration": {"candidates": [{"a": evil}], "chosen": 0},
  }
  exposed = _images(1)
  exposed[0]["label"] = evil
  text = write_html_report(
    tmp_path / "r.html", rep, exposed=exposed, title=evil
  ).read_text()
  # The page's own script is the only <script> element.
  assert (
    text.count("<script>") == 1 and "alert" not in text.split("<script>")[1]
  )
  assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text
  page = _Page(text)
  assert page.tables["attack-table"][1][0] == evil  # shown as text
  assert page.tables["match-table"][0] == [evil]


def test_one_image_per_exposed_example_and_one_for_the_roc(tmp_path, audit):
  rep, roc = audit
  exposed = _images(4) + _images(1, (8, 8, 1)) + _images(1, (5, 7, 3))
  exposed[-1]["image"] = exposed[-1]["image"] - 100  # any range
  text = write_html_report(
    tmp_path / "r.html", rep, roc_png=roc, exposed=exposed
  ).read_text()
  page = _Page(text)
  assert len(page.images) == len(exposed) + 1
  assert page.images[0]["alt"].startswith("ROC")
  # 8x8 digits upscaled (nearest) to be seen; a 5x7 one keeps its aspect.
  assert _png_size(page.images[1]["src"]) == (96, 96)
  assert _png_size(page.images[-1]["src"]) == (5 * 14, 7 * 14)
  assert page.images[1]["alt"] == "#1 \u00b7 label 0 \u00b7 score 5"
  assert "#2 \u00b7 label 1 \u00b7 score 4.75" in text
  assert "example 100 \u00b7 member" in text
  assert "example 101 \u00b7 non-member" in text
  # At most 32 shown; without a ROC there is no ROC section.
  text = write_html_report(
    tmp_path / "r.html", rep, exposed=_images(40)
  ).read_text()
  assert len(_Page(text).images) == html_report.MAX_EXPOSED
  assert 'id="roc"' not in text and "32 of 40 examples" in text


def test_the_attack_table_matches_the_report(tmp_path, audit):
  rep, _ = audit
  text = write_html_report(tmp_path / "r.html", rep).read_text()
  header, *rows = _Page(text).tables["attack-table"]
  assert header[:3] == ["attack", "AUC", "bal. acc"]
  assert header[3:8] == [
    "TPR@1%FPR",
    "TPR@0.1%FPR",
    "TPR@0.001%FPR",
    "TNR@0.1%FNR",
    "\u03b5 lower bound",
  ]
  assert [r[0] for r in rows] == list(rep["attacks"])
  lira = rep["attacks"]["lira_online"]
  low, high = lira["auc_ci"]
  assert rows[0][1] == f"{lira['auc']:.3f} [{low:.3f}, {high:.3f}]"
  assert re.fullmatch(r"0\.\d{3} \[0\.\d{3}, 0\.\d{3}\]", rows[1][2])
  # No intervals: the value alone; None and a missing key: the dash.
  assert rows[2][1:] == ["0.500", "0.500", "0.012", "\u2013", "\u2013"] + [
    "0.000",
    "\u2013",
  ]
  assert rows[0][7] == f"{lira['epsilon_lower_bound']:.2f}"


def test_tabular_examples_are_a_table(tmp_path):
  rows = [
    {
      "index": 7 + i,
      "rank": i + 1,
      "label": "yes",
      "score": 0.25,
      "is_member": i == 0,
      "row": np.arange(30) / 8,
    }
    for i in range(3)
  ]
  text = write_html_report(tmp_path / "r.html", {}, exposed=rows).read_text()
  page = _Page(text)
  assert not page.images and "attack-table" not in page.tables
  header, first, second, _ = page.tables["exposed-table"]
  assert header == ["rank", "index", "label", "score", "member"] + [
    f"x{j}" for j in range(html_report.MAX_FEATURES)
  ]
  assert first[:6] == ["1", "7", "yes", "0.25", "member", "0"]
  assert second[4:7] == ["non-member", "0", "0.125"]
  assert "The first 20 of 30 features." in text


def test_match_and_calibration_are_generic_tables(tmp_path):
  rep = {
    "match": {
      "verdict": "matched",
      "table": [{"stat": "auc", "target": 0.61234}, {"stat": "acc", "x": None}],
      "threshold": 0.05,
    },
    "calibration": {
      "candidates": [{"lr": 0.1, "gap": 0.2}, {"lr": 0.05, "gap": 0.01}],
      "chosen": 1,
    },
  }
  text = write_html_report(tmp_path / "r.html", rep).read_text()
  tables = _Page(text).tables
  assert tables["match-table"] == [
    ["stat", "target", "x"],
    ["auc", "0.6123", ""],
    ["acc", "", "\u2013"],
  ]
  assert "<strong>Verdict:</strong> matched" in text and "threshold" in text
  assert tables["calibration-table"] == [
    ["lr", "gap"],
    ["0.1", "0.2"],
    ["0.05", "0.01", "<class chosen>"],
  ]
  # "chosen" as the row itself; one not among the candidates is shown apart.
  rep["calibration"]["chosen"] = {"lr": 0.1, "gap": 0.2}
  tables = _Page(write_html_report(tmp_path / "r.html", rep).read_text()).tables
  assert tables["calibration-table"][1] == ["0.1", "0.2", "<class chosen>"]
  rep["calibration"]["chosen"] = {"lr": 1.0}
  tables = _Page(write_html_report(tmp_path / "r.html", rep).read_text()).tables
  assert tables["calibration-chosen"] == [["lr"], ["1"]]
  # Without "chosen": the rows that say so themselves.
  rep["calibration"] = {
    "candidates": [{"w1": 0.2, "chosen": False}, {"w1": 0.1, "chosen": True}]
  }
  tables = _Page(write_html_report(tmp_path / "r.html", rep).read_text()).tables
  assert tables["calibration-table"][2] == ["0.1", "yes", "<class chosen>"]


def test_the_header_reads_the_report_defensively(tmp_path):
  rep = {
    "protocol": {"pool": {"name": "fashion_mnist", "examples": 60000}},
    "shadows": "not a dict",
    "target": None,
    "attacks": {"a": None},  # a skipped attack: its row is all dashes
  }
  text = write_html_report(tmp_path / "r.html", rep).read_text()
  assert "fashion_mnist" in text and "60000" in text
  assert _Page(text).tables["attack-table"][1] == ["a"] + ["\u2013"] * 2
  text = write_html_report(
    tmp_path / "r.html", {"protocol": {"models": 8, "usable_models": 7}}
  ).read_text()
  assert "8 (7 usable)" in text and 'id="attacks"' not in text


def test_bad_input_leaves_the_old_page(tmp_path, audit):
  rep, _ = audit
  path = write_html_report(tmp_path / "r.html", rep)
  before = path.read_bytes()
  with pytest.raises(ValueError, match=r"exposed\[0\].*\[H, W\]"):
    write_html_report(path, rep, exposed=[{"image": np.zeros((2, 2, 2))}])
  with pytest.raises(ValueError, match="PNG signature"):
    write_html_report(path, rep, roc_png=b"GIF89a")
  with pytest.raises(FileNotFoundError, match="roc_png"):
    write_html_report(path, rep, roc_png=tmp_path / "missing.png")
  with pytest.raises(TypeError, match="report must be a dict"):
    write_html_report(path, [rep])
  assert path.read_bytes() == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]


def test_no_browser_is_a_clear_error(tmp_path, monkeypatch):
  page = write_html_report(tmp_path / "r.html", {})
  with pytest.raises(FileNotFoundError, match="no-such-browser"):
    browser.screenshot_html(page, tmp_path / "s.png", browser="no-such-browser")
  monkeypatch.setattr(browser.shutil, "which", lambda name: None)
  with pytest.raises(FileNotFoundError, match="apt-get install chromium"):
    browser.screenshot_html(page, tmp_path / "s.png")
  assert not (tmp_path / "s.png").exists()


@needs_browser
@pytest.mark.slow
def test_the_page_renders_in_a_headless_browser(tmp_path, audit):
  rep, roc = audit
  rep = {
    **rep,
    "match": {"verdict": "matched", "table": [{"stat": "auc", "gap": 0.01}]},
  }
  exposed = _images(12)
  page = write_html_report(
    tmp_path / "report.html", rep, roc_png=roc, exposed=exposed, title="t"
  )
  # The DOM after load: the page's script counted the decoded images.
  dom = browser.dump_dom(page, timeout=120)
  body = re.search(r"<body[^>]*>", dom).group(0)
  assert f'data-images="{len(exposed) + 1}"' in body, body
  assert f'data-images-loaded="{len(exposed) + 1}"' in body, body
  rendered = _Page(dom)
  assert [r[0] for r in rendered.tables["attack-table"][1:]] == list(
    rep["attacks"]
  )
  assert rendered.tables["match-table"] == [["stat", "gap"], ["auc", "0.01"]]
  # The screenshot has the window's size and is not blank.
  shot = browser.screenshot_html(
    page, tmp_path / "shot.png", width=1200, height=1600, timeout=120
  )
  from matplotlib import image as mpl_image

  pixels = mpl_image.imread(shot)
  assert pixels.shape[:2] == (1600, 1200)
  gray = pixels[..., :3].mean(-1)
  assert gray.std() > 0.05, gray.std()
  # Dark text and table lines on a white page.
  assert gray.max() > 0.95 and (gray < 0.3).mean() > 0.005
