"""Everything that writes files: run directories, the shadow store, checkpoints.

``run_dir`` trains a :class:`RunSpec` chunk by chunk into a resumable run
directory, ``merge`` splits a run over processes and assembles it, ``store``
keeps shadow models keyed by pool and recipe (``pool``, ``shadows``),
``checkpoint`` saves a chunk mid-training, ``progress`` shows it, and
``compilation_cache`` keeps compiled programs for the next process. Every
file goes through ``io`` (atomic writes, chunk file names).

The package is lazy (PEP 562) like :mod:`miajax`: :mod:`miajax.report` writes
through ``miajax.runs.io``, and importing that must not load the training
stack. A name below is imported from its module the first time it is used.
"""

from miajax import _lazy

_SUBMODULES = frozenset(
  {
    "checkpoint",
    "compilation_cache",
    "cost",
    "io",
    "merge",
    "pool",
    "progress",
    "claims",
    "integrity",
    "label_views",
    "run_dir",
    "run_files",
    "shadows",
    "spec",
    "store",
  }
)

# Public name -> the submodule that defines it.
_EXPORTS = {
  "ConfigMismatchError": "spec",
  "RunResult": "spec",
  "RunSpec": "spec",
  "load_dataset": "spec",
  "make_keep": "spec",
  "label_view_predictions": "label_views",
  "run_flops": "cost",
  "load_run": "run_files",
  "CorruptFileError": "integrity",
  "run_training": "run_dir",
  "merge_chunks": "merge",
  "process_slice": "merge",
  "wait_and_merge": "merge",
  "STORE_VERSION": "pool",
  "Pool": "pool",
  "fingerprint": "pool",
  "pool_from_spec": "pool",
  "Shadows": "shadows",
  "load_store": "shadows",
  "ensure_shadows": "store",
  "Checkpointer": "checkpoint",
  "Restored": "checkpoint",
  "check_intervals": "checkpoint",
  "checkpoint_files": "checkpoint",
  "Progress": "progress",
  "default_cache_dir": "compilation_cache",
  "use_compilation_cache": "compilation_cache",
  "chunk_files": "io",
  "chunk_name": "io",
  "digest": "io",
  "parse_chunk_name": "io",
  "save_npy_atomic": "io",
  "save_npz_atomic": "io",
  "write_atomic": "io",
  "write_json_atomic": "io",
}

__getattr__, __dir__, __all__ = _lazy.attach(__name__, _SUBMODULES, _EXPORTS)
