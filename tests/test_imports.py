"""The array layers import without the training stack; the package is lazy."""

import ast
import importlib
import pathlib
import subprocess
import sys

import pytest

import miajax

HEAVY = (
  "flax",
  "optax",
  "orbax",
  "tensorflow",
  "tensorflow_datasets",
  "matplotlib",
  "miajax.engine",
  "miajax.models",
)


def _loaded_after(statement: str) -> set[str]:
  code = (
    f"import sys\n{statement}\n"
    "print('\\n'.join(sorted(m.split('.')[0] if not m.startswith('miajax')"
    " else m for m in sys.modules)))"
  )
  out = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, check=True
  )
  return set(out.stdout.split())


def test_array_layers_do_not_import_the_training_stack():
  # One interpreter for all of them: if their union loads nothing heavy, none does.
  loaded = _loaded_after(
    "import miajax, miajax.metrics, miajax.scores, miajax.attacks,"
    " miajax.report, miajax.designs\n"
    "from miajax import auc, lira_online, tpr_at_fpr"
  )
  assert "miajax.metrics" in loaded and "jax" in loaded
  assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_a_public_name_loads_its_module_on_first_use():
  loaded = _loaded_after("import miajax; miajax.TrainConfig")
  assert {"flax", "optax", "miajax.engine.recipe"} <= loaded


def test_every_public_name_is_the_object_its_module_defines():
  for name in miajax.__all__:
    value = getattr(miajax, name)
    if name in miajax._SUBMODULES:
      assert value is importlib.import_module(f"miajax.{name}"), name
      continue
    home = importlib.import_module(f"miajax.{miajax._EXPORTS[name]}")
    assert value is getattr(home, name), name
    # Defined in miajax (not a re-export of jax, optax, ...), and documented.
    assert getattr(value, "__module__", "").startswith("miajax."), name
    assert (getattr(value, "__doc__", "") or "").strip(), name
  with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
    miajax.not_a_name  # noqa: B018


def test_removed_names_say_where_they_went():
  for name, now in miajax.REMOVED.items():
    assert name not in miajax.__all__
    with pytest.raises(AttributeError, match=f"it is {now} now"):
      getattr(miajax, name)
    # The replacement exists: its first module path resolves.
    target = now.split(" and ")[0]
    module, _, attr = target.rpartition(".")
    try:
      importlib.import_module(target)
    except ImportError:
      assert hasattr(importlib.import_module(module), attr), target


# --------------------------------------------- what the array layers may import

PACKAGE = pathlib.Path(miajax.__file__).resolve().parent
# The training stack and the datasets: the array layers work on scores from
# any framework, so they must not need them, not even inside a function.
TRAINING_STACK = (
  "flax",
  "optax",
  "orbax",
  "tensorflow",
  "tensorflow_datasets",
  "miajax.engine",
  "miajax.models",
  "miajax.data",
  "miajax.runs",
)


def _module_file(name: str) -> pathlib.Path | None:
  if name != "miajax" and not name.startswith("miajax."):
    return None
  path = PACKAGE.joinpath(*name.split(".")[1:])
  for candidate in (path / "__init__.py", path.with_suffix(".py")):
    if candidate.is_file():
      return candidate
  return None


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_nodes(tree, in_functions):
  todo = [tree]
  while todo:
    node = todo.pop()
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      yield node
    for child in ast.iter_child_nodes(node):
      function = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
      if in_functions or not function:
        todo.append(child)


def _imports(path: pathlib.Path, in_functions: bool = True) -> set[str]:
  """The modules the file imports (only those run on import unless in_functions).

  `from a import b` counts as `a.b` when that is a module, else as `a`.
  """
  found = set()
  package = _module_name(path)
  if path.name != "__init__.py":
    package = package.rpartition(".")[0]
  for node in _import_nodes(ast.parse(path.read_text()), in_functions):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
      continue
    base = node.module or ""
    if node.level:
      parts = package.split(".")
      anchor = parts[: len(parts) - node.level + 1]
      base = ".".join(anchor + ([base] if base else []))
    for alias in node.names:
      sub = f"{base}.{alias.name}"
      found.add(sub if _module_file(sub) else base)
  return found


def _array_layer_files():
  return sorted(
    [PACKAGE / "scores.py"]
    + list((PACKAGE / "attacks").rglob("*.py"))
    + list((PACKAGE / "metrics").rglob("*.py"))
  )


def _within(name: str, roots) -> bool:
  return any(name == r or name.startswith(r + ".") for r in roots)


def _reachable(start: pathlib.Path) -> dict[str, set[str]]:
  """The miajax modules that importing `start` loads, each with its imports."""
  graph, todo = {}, [start]
  while todo:
    path = todo.pop()
    name = _module_name(path)
    if name in graph:
      continue
    graph[name] = _imports(path, in_functions=False)
    for dep in graph[name]:
      dep_file = _module_file(dep)
      # A package's own __init__ runs before its modules; not an edge.
      if dep_file and not _within(name, [dep]):
        todo.append(dep_file)
  return graph


def test_array_layers_never_import_the_training_stack():
  for path in _array_layer_files():
    # The files themselves, function bodies included; what they load on import.
    bad = sorted(d for d in _imports(path) if _within(d, TRAINING_STACK))
    assert not bad, f"{_module_name(path)} imports {bad}"
    for name, deps in _reachable(path).items():
      bad = sorted(d for d in deps if _within(d, TRAINING_STACK))
      assert not bad, f"{_module_name(path)} loads {name}, which imports {bad}"


def test_metrics_never_import_the_attacks():
  for path in sorted((PACKAGE / "metrics").rglob("*.py")):
    bad = sorted(d for d in _imports(path) if _within(d, ["miajax.attacks"]))
    assert not bad, f"{_module_name(path)} imports {bad}"
    for name, deps in _reachable(path).items():
      bad = sorted(d for d in deps if _within(d, ["miajax.attacks"]))
      assert not bad, (
        f"{_module_name(path)} reaches {name}, which imports {bad}"
      )


def test_array_layers_have_no_import_cycles():
  graph = {}
  for path in _array_layer_files():
    graph.update(_reachable(path))
  for path in _array_layer_files():
    # Their imports inside functions too: a lazy import is no licence for a cycle.
    graph[_module_name(path)] = _imports(path)
  edges = {
    name: {
      _module_name(_module_file(d))
      for d in deps
      if _module_file(d) and not _within(name, [d])
    }
    for name, deps in graph.items()
  }
  state = {}

  def visit(name, stack):
    state[name] = "open"
    for dep in sorted(edges.get(name, ())):
      if state.get(dep) == "open":
        cycle = stack[stack.index(dep) :] + [dep]
        raise AssertionError("import cycle: " + " -> ".join(cycle))
      if dep not in state:
        visit(dep, stack + [dep])
    state[name] = "done"

  for name in sorted(edges):
    if name not in state:
      visit(name, [name])


# --------------------------------------------------- the whole package's layout


def _all_files():
  return sorted(PACKAGE.rglob("*.py"))


def _edges(in_functions: bool) -> dict[str, set[str]]:
  """miajax module -> the miajax modules it imports (a package's own
  __init__ is not an edge of its modules: it runs first anyway)."""
  out = {}
  for path in _all_files():
    name = _module_name(path)
    out[name] = {
      _module_name(_module_file(d))
      for d in _imports(path, in_functions)
      if _module_file(d) and not _within(name, [_module_name(_module_file(d))])
    }
  return out


def _cycle(edges) -> list[str] | None:
  state = {}

  def visit(name, stack):
    state[name] = "open"
    for dep in sorted(edges.get(name, ())):
      if state.get(dep) == "open":
        return stack[stack.index(dep) :] + [dep]
      if dep not in state:
        found = visit(dep, stack + [dep])
        if found:
          return found
    state[name] = "done"
    return None

  for name in sorted(edges):
    if name not in state:
      found = visit(name, [name])
      if found:
        return found
  return None


def test_the_package_has_no_import_cycle():
  # Imports inside functions count too: a lazy import hides a circle, it
  # does not remove it.
  cycle = _cycle(_edges(in_functions=True))
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_a_planted_cycle_is_found():
  edges = _edges(in_functions=True)
  edges["miajax.scores"] = edges["miajax.scores"] | {"miajax.metrics"}
  edges["miajax.metrics._roc"] = edges["miajax.metrics._roc"] | {
    "miajax.scores"
  }
  assert _cycle(edges) is not None


# (importer prefix, imported prefix): the directions the pipeline forbids.
FORBIDDEN = [
  ("miajax.engine", "miajax.runs"),  # the engine never writes files
  ("miajax.engine", "miajax.attacks"),
  ("miajax.engine", "miajax.metrics"),
  ("miajax.models", "miajax.engine"),  # models are plain Flax modules
  ("miajax.data", "miajax.engine"),
  ("miajax.defenses", "miajax.engine"),  # plugged into it, not above it
  ("miajax.scores", "miajax.engine"),
  ("miajax.attacks", "miajax.engine"),
  ("miajax.metrics", "miajax.engine"),
  ("miajax.metrics", "miajax.attacks"),
  ("miajax.hyperparams", "miajax.engine"),
]


def test_imports_run_the_way_the_pipeline_does():
  edges = _edges(in_functions=True)
  bad = [
    (src, dst)
    for src, deps in edges.items()
    for dst in deps
    for a, b in FORBIDDEN
    if _within(src, [a]) and _within(dst, [b])
  ]
  assert not bad, bad
  # Nothing in the library imports the scripts.
  for path in _all_files():
    assert not any(_within(d, ["experiments"]) for d in _imports(path)), path


def test_modules_are_small_and_engine_functions_readable():
  big = {
    _module_name(p): n
    for p in _all_files()
    if (n := len(p.read_text().splitlines())) > 500
  }
  assert not big, big
  long = {}
  for path in (PACKAGE / "engine").rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        length = node.end_lineno - node.lineno + 1
        if length > 80:
          long[f"{_module_name(path)}.{node.name}"] = length
  assert not long, long
