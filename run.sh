#!/usr/bin/env bash
# The project's two entry points, each working on a fresh machine with Python >= 3.11:
#   ./run.sh demo   LiRA on the embedded digits data: prints the report, writes the ROC plot
#   ./run.sh test   the whole test suite
#   ./run.sh lint   the style check CI runs (ruff format --check, ruff check)
# Both create (or reuse) the virtualenv .venv and install miajax into it.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${VENV:-.venv}"

python_bin() {
  for p in python3.13 python3.12 python3.11 python3; do
    # 2>/dev/null: a pyenv shim for a version that is not installed says so on stderr.
    if command -v "$p" >/dev/null && "$p" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$p"; return
    fi
  done
  echo "error: Python >= 3.11 not found on PATH" >&2; exit 2
}

ensure_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$(python_bin)" -m venv "$VENV"
  fi
  if [ ! -f "$VENV/.installed" ] || [ pyproject.toml -nt "$VENV/.installed" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e '.[test]'
    touch "$VENV/.installed"
  fi
}

cmd="${1:-}"; shift || true
case "$cmd" in
  demo)
    ensure_venv
    exec "$VENV/bin/python" experiments/lira.py --output_dir="${OUTPUT_DIR:-runs/lira_digits}" "$@"
    ;;
  test)
    ensure_venv
    set +e
    # One pytest worker per core (pytest-xdist): most tests are single-threaded XLA compiles;
    # tests/conftest.py groups the tests that share a fixture and hands out the slow ones first.
    "$VENV/bin/python" -m pytest -n auto --dist loadgroup --no-loadscope-reorder "$@"
    rc=$?
    set -e
    if [ "$rc" -eq 5 ]; then echo "error: pytest collected no tests" >&2; fi
    exit "$rc"
    ;;
  lint)
    ensure_venv
    "$VENV/bin/ruff" format --check --diff .
    exec "$VENV/bin/ruff" check .
    ;;
  *)
    echo "usage: ./run.sh demo|test|lint [extra flags]" >&2; exit 2
    ;;
esac
