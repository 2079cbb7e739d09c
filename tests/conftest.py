"""Session-wide test setup."""

import os
import tempfile

import pytest

# The suite is compile-bound (hundreds of small XLA programs, each run for a
# few steps): LLVM code generation at -O0 compiles them ~35 % faster. XLA's
# own graph passes (fusion, layout, the arithmetic the tests check) are the
# same; only the machine code is less optimised. Set before JAX starts its
# backend, and inherited by the scripts the tests run in subprocesses, so
# that in-process and subprocess results stay comparable bit for bit. A
# user's own XLA_FLAGS choice of the level wins.
_FLAGS = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _FLAGS:
  os.environ["XLA_FLAGS"] = f"{_FLAGS} --xla_backend_optimization_level=0"

from miajax.runs import compilation_cache  # noqa: E402

# One persistent compilation cache for the session (never the user's own):
# the scripts the tests run in subprocesses load the programs that earlier
# tests and subprocesses compiled instead of compiling them again.
CACHE = os.environ.setdefault(
  compilation_cache.ENV, tempfile.mkdtemp(prefix="miajax-test-xla-")
)
compilation_cache.use_compilation_cache(CACHE)
# The session's own decision cache (miajax.runs.decisions), never the user's.
os.environ.setdefault(
  "MIAJAX_LOWERING_CACHE", tempfile.mkdtemp(prefix="miajax-test-lowering-")
)


def pytest_itemcollected(item):
  """Tests that share a module-scoped fixture (trained models, a benchmark
  report) form one xdist group: one worker runs them, computing it once.

  Marked here, as each test is collected: xdist reads the groups in its own
  ``pytest_collection_modifyitems``.
  """
  info = getattr(item, "_fixtureinfo", None)
  for defs in getattr(info, "name2fixturedefs", {}).values():
    if defs and defs[-1].scope == "module":
      item.add_marker(pytest.mark.xdist_group(item.module.__name__))
      return


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
  """Orders the suite for ``pytest -n N --dist loadgroup`` (./run.sh test).

  The xdist groups and the tests marked ``slow`` come first, so that the run
  does not end with one worker busy on a long test while the others idle
  (longest-first list scheduling); otherwise the order is the collection's.
  Without xdist this changes nothing but the order.
  """
  groups = {}
  for item in items:
    mark = item.get_closest_marker("xdist_group")
    groups.setdefault(mark.args[0] if mark else item.nodeid, []).append(item)

  def slow_first(members):
    # A group shares its fixture over several tests: long in total.
    return len(members) == 1 and not members[0].get_closest_marker("slow")

  order = sorted(groups.values(), key=slow_first)  # stable
  items[:] = [item for members in order for item in members]
