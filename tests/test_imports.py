"""The array layers import without the training stack; the package is lazy."""

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
  "miajax.train",
  "miajax.config",
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
  assert {"flax", "optax", "miajax.config"} <= loaded


def test_every_public_name_resolves():
  for name in miajax.__all__:
    assert getattr(miajax, name) is not None, name
  with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
    miajax.not_a_name  # noqa: B018
