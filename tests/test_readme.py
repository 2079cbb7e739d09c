"""The README's Python examples run as written, and the README stays short."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_is_short_and_has_examples():
  assert len(README) < 12_000, len(README)
  assert BLOCKS


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, capsys):
  exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), {})
  assert capsys.readouterr().out.strip(), "each example prints its result"


def test_readme_links_exist():
  for target in re.findall(r"\]\(([^)#]+)\)", README):
    if not target.startswith("http"):
      assert (ROOT / target).exists(), target
