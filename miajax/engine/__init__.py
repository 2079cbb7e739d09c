"""The training engine: many models in one compiled program, each on its own members.

The pipeline inside, one module per concern:

* :mod:`.recipe`: :class:`TrainConfig`, what is trained (model, optimizer,
  loss, defense, schedule, epochs, batch, augmentation, seed), and the
  user's model as :class:`ModelFns`; :mod:`.identity` its fingerprint.
* :mod:`.lowering`: :class:`Lowering`, how it runs (model axis, models per
  step, steps per call, micro-batch, dtype, convolutions), decided in one
  place per backend.
* :mod:`.step`: one model's training step (init, loss and gradients, update)
  and the one map from model axis to stepper; :mod:`.optimizers` the
  optimizers with per-model hyperparameters; :mod:`.batches` each model's
  keys and batches.
* :mod:`.loop`: ``train_models`` / ``train_chunks``, over :mod:`.chunk`
  (one chunk through its epochs), :mod:`.compiled` (the jitted programs),
  :mod:`.planner` (models per step), :mod:`.devices` (the models mesh).
* :mod:`.query`: ``predict``, logits of every model on every query view;
  :mod:`.record` the same logits after chosen epochs, during training.
* :mod:`.cpu`: the CPU-only forms (unrolled models, micro-batches, Winograd
  and im2col convolutions, one device per core). GPU/TPU never use them.
"""

from miajax.engine.batches import dp_sampling, epoch_order, model_keys
from miajax.engine.batches import steps_per_epoch
from miajax.engine.devices import models_mesh
from miajax.engine.identity import fingerprint, program_key
from miajax.engine.inputs import check_inputs
from miajax.engine.loop import TrainResult, train_chunks, train_models
from miajax.engine.lowering import Lowering, resolve_lowering
from miajax.engine.planner import plan_models_per_step
from miajax.engine.query import QUERY_SETS, predict, query_views
from miajax.engine.record import Record
from miajax.engine.recipe import ModelFns, TrainConfig, model_fns
from miajax.engine.cpu.unroll import UNROLL_MAX_MODELS

__all__ = [
  "TrainConfig",
  "TrainResult",
  "ModelFns",
  "Lowering",
  "Record",
  "train_models",
  "train_chunks",
  "predict",
  "query_views",
  "resolve_lowering",
  "plan_models_per_step",
  "models_mesh",
  "model_fns",
  "fingerprint",
  "program_key",
  "check_inputs",
  "dp_sampling",
  "epoch_order",
  "model_keys",
  "steps_per_epoch",
  "QUERY_SETS",
  "UNROLL_MAX_MODELS",
]
