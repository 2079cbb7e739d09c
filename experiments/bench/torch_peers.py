"""The PyTorch peers: how most MIA code trains shadow models (optional ``bench`` extra).

``torch`` is passed in rather than imported, so that the benchmark runs
(without these rows) where PyTorch is not installed.
"""

from __future__ import annotations

import copy
import math

import jax
import numpy as np

from bench import methods, workloads


def torch_device(torch) -> str:
  """Where the torch rows run: the GPU when JAX runs on one and PyTorch sees one, else the CPU."""
  return (
    "cuda"
    if jax.default_backend() == "gpu" and torch.cuda.is_available()
    else "cpu"
  )


def torch_sync(torch, device: str) -> None:
  if (
    device != "cpu"
  ):  # CUDA kernels run asynchronously; a timing must wait for them
    torch.cuda.synchronize()


def import_torch():
  """``(torch, None)`` or ``(None, reason)`` when PyTorch is not installed."""
  try:
    import torch
    import torch.func  # noqa: F401
  except ImportError as e:
    return (
      None,
      f"PyTorch not installed ({e}); torch rows skipped (pip install -e '.[bench]')",
    )
  return torch, None


def _blocks(torch):
  """The layers of the convolutional nets that torch.nn lacks: global mean pooling, a WRN block."""
  tnn = torch.nn

  class GlobalMean(tnn.Module):
    def forward(self, x):
      return x.mean(dim=(2, 3))

  class WideBlock(tnn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.bn1, self.bn2 = (
        tnn.BatchNorm2d(cin, momentum=0.1),
        tnn.BatchNorm2d(cout, momentum=0.1),
      )
      self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.short = (
        tnn.Conv2d(cin, cout, 1, stride, bias=False)
        if (cin != cout or stride != 1)
        else None
      )

    def forward(self, x):
      y = torch.relu(self.bn1(x))
      shortcut = x if self.short is None else self.short(y)
      y = self.conv2(torch.relu(self.bn2(self.conv1(y))))
      return shortcut + y

  return GlobalMean, WideBlock


def _mlp(torch, wl: workloads.Workload, kw: dict):
  tnn = torch.nn
  acts = {
    "relu": tnn.ReLU,
    "tanh": tnn.Tanh,
    "leaky_relu": lambda: tnn.LeakyReLU(0.01),
    "gelu": tnn.GELU,
  }
  act = acts[kw.get("activation", "tanh")]
  layers, width = [tnn.Flatten()], math.prod(wl.input_shape)
  for w in kw.get("widths", (1024, 512, 256, 128)):
    layers += [tnn.Linear(width, w), act()]
    width = w
  return tnn.Sequential(*layers, tnn.Linear(width, wl.num_classes))


def _cnn_small(torch, wl: workloads.Workload, kw: dict):
  tnn = torch.nn
  global_mean, _ = _blocks(torch)
  h, cin, width = (
    min(wl.input_shape[:2]),
    wl.input_shape[2],
    kw.get("width", 32),
  )
  layers = []
  for block in range(3):
    cout = width * 2**block
    layers += [tnn.Conv2d(cin, cout, 3, padding=1), tnn.LeakyReLU(0.01)]
    if h >= 2:
      layers.append(tnn.AvgPool2d(2))
      h //= 2
    cin = cout
  return tnn.Sequential(*layers, global_mean(), tnn.Linear(cin, wl.num_classes))


def _wrn(torch, wl: workloads.Workload, kw: dict):
  tnn = torch.nn
  global_mean, wide_block = _blocks(torch)
  depth, width = {"wrn16-4": (16, 4), "wrn28-2": (28, 2)}.get(
    wl.model, (kw.get("depth", 16), kw.get("width", 4))
  )
  layers, cin = (
    [tnn.Conv2d(wl.input_shape[2], 16, 3, padding=1, bias=False)],
    16,
  )
  for stage, cout in enumerate((16 * width, 32 * width, 64 * width)):
    for i in range((depth - 4) // 6):
      layers.append(wide_block(cin, cout, 2 if (stage > 0 and i == 0) else 1))
      cin = cout
  return tnn.Sequential(
    *layers,
    tnn.BatchNorm2d(cin, momentum=0.1),
    tnn.ReLU(),
    global_mean(),
    tnn.Linear(cin, wl.num_classes),
  )


def torch_model(torch, wl: workloads.Workload):
  """The workload's architecture in PyTorch (NCHW).

  Initialised at Flax's scale: weights normal with std 1/sqrt(fan_in), zero biases.
  """
  kw = dict(wl.model_kwargs)
  if wl.model == "mlp":
    net = _mlp(torch, wl, kw)
  elif wl.model == "cnn_small":
    net = _cnn_small(torch, wl, kw)
  elif wl.model.startswith("wrn"):
    net = _wrn(torch, wl, kw)
  else:
    raise ValueError(f"no PyTorch version of model {wl.model!r}")
  flax_scale_init_(torch, net)
  return net


def flax_scale_init_(torch, net) -> None:
  """Re-draws every Linear/Conv2d of ``net`` in place: weights normal, std 1/sqrt(fan_in), zero biases."""
  with torch.no_grad():
    for mod in net.modules():
      if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
        mod.weight.normal_(0.0, 1.0 / math.sqrt(mod.weight[0].numel()))
        if mod.bias is not None:
          mod.bias.zero_()


def _torch_data(torch, wl: workloads.Workload, data: dict, device: str = "cpu"):
  x = data["x"]
  if x.ndim == 4 and wl.model != "mlp":
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
  # On the device before timing, like the JAX loop's data.
  return torch.from_numpy(x).to(device), torch.from_numpy(
    data["y"].astype(np.int64)
  ).to(device)


def run_torch_loop(
  torch,
  wl: workloads.Workload,
  data: dict,
  seed: int,
  *,
  warmup: bool = True,
  repeats: int = 1,
  device: str = "cpu",
) -> dict:
  """One model after the other: nn.Module + torch.optim.SGD(momentum=0.9, weight_decay) + cosine LambdaLR."""
  F = torch.nn.functional
  x, y = _torch_data(torch, wl, data, device)
  keep = data["keep"]
  num_models, spe, epochs, total = (
    keep.shape[0],
    data["steps_per_epoch"],
    data["epochs"],
    data["steps"],
  )

  def train_one(model_index: int, max_steps: int | None = None):
    torch.manual_seed(seed * 100_003 + model_index)
    net = torch_model(torch, wl).to(device)
    net.train()
    opt = torch.optim.SGD(
      net.parameters(),
      lr=wl.learning_rate,
      momentum=0.9,
      weight_decay=wl.weight_decay,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
      opt, lambda t: workloads.cosine(t, total)
    )
    losses = []
    rng = np.random.default_rng([seed, model_index])
    for order in workloads.epoch_orders(
      keep[model_index % num_models], epochs, spe, wl.batch_size, rng
    ):
      order = torch.from_numpy(order.astype(np.int64)).to(device)
      for s in range(spe):
        idx = order[s]
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.detach())
        if max_steps is not None and len(losses) >= max_steps:
          return torch.stack(losses)
    return torch.stack(losses)

  def train_all():
    losses = [train_one(m) for m in range(num_models)]
    torch_sync(torch, device)
    return losses

  if warmup:
    train_one(10**6, max_steps=2)
    torch_sync(torch, device)
  r = methods.timed(train_all, wl, data, repeats)
  return dict(r, out=None, loss=torch.stack(r["out"]).double().cpu().numpy())


def _ensemble(torch, wl: workloads.Workload, seed: int, k, first_index, device):
  """``k`` stacked models (seeds as the torch loop's) and ``vmap(grad_and_value)`` of their loss.

  Batch-norm layers are made stateless (``replace_all_batch_norm_modules_``: batch
  statistics in training, no running averages), as torch.func needs.
  """
  from torch import func as tfunc

  F = torch.nn.functional
  nets = []
  for m in range(k):
    torch.manual_seed(seed * 100_003 + first_index + m)
    net = torch_model(torch, wl)
    tfunc.replace_all_batch_norm_modules_(net)
    nets.append(net.train())
  params, buffers = tfunc.stack_module_state(nets)
  params = {n: p.detach().to(device) for n, p in params.items()}
  buffers = {n: b.to(device) for n, b in buffers.items()}
  base = copy.deepcopy(nets[0]).to("meta")

  def loss_fn(p, b, xb, yb):
    return F.cross_entropy(tfunc.functional_call(base, (p, b), (xb,)), yb)

  return params, buffers, tfunc.vmap(tfunc.grad_and_value(loss_fn))


def _train_ensemble(
  torch, wl, data, xy, seed, k, first_index, device, max_steps=None
):
  """Trains ``k`` models at once with SGD momentum written out; ``float[k, steps]`` losses."""
  x, y = xy
  keep = data["keep"]
  num_models, spe, epochs, total = (
    keep.shape[0],
    data["steps_per_epoch"],
    data["epochs"],
    data["steps"],
  )
  lr, wd, mom = wl.learning_rate, wl.weight_decay, 0.9
  params, buffers, grad_fn = _ensemble(torch, wl, seed, k, first_index, device)
  velocity = {n: torch.zeros_like(p) for n, p in params.items()}
  orders = [
    workloads.epoch_orders(
      keep[(first_index + m) % num_models],
      epochs,
      spe,
      wl.batch_size,
      np.random.default_rng([seed, (first_index + m) % max(num_models, 1)]),
    )
    for m in range(k)
  ]
  losses, t = [], 0
  for epoch in range(epochs):
    order = torch.from_numpy(
      np.stack([o[epoch] for o in orders]).astype(np.int64)
    ).to(device)  # [m, steps, b]
    for s in range(spe):
      idx = order[:, s]
      grads, loss = grad_fn(params, buffers, x[idx], y[idx])
      rate = lr * workloads.cosine(t, total)
      with torch.no_grad():
        for n, p in params.items():
          g = grads[n].add_(p, alpha=wd)
          velocity[n].mul_(mom).add_(g)
          p.sub_(velocity[n], alpha=rate)
      losses.append(loss.detach())
      t += 1
      if max_steps is not None and t >= max_steps:
        return torch.stack(losses, 1)
  return torch.stack(losses, 1)


def run_torch_vmap(
  torch,
  wl: workloads.Workload,
  data: dict,
  seed: int,
  *,
  warmup: bool = True,
  repeats: int = 1,
  device: str = "cpu",
) -> dict:
  """torch.func ensembling: stack_module_state + functional_call + vmap(grad), SGD momentum by hand."""
  xy = _torch_data(torch, wl, data, device)
  num_models = data["keep"].shape[0]

  def timed():
    losses = _train_ensemble(torch, wl, data, xy, seed, num_models, 0, device)
    torch_sync(torch, device)
    return losses

  if warmup:
    _train_ensemble(
      torch, wl, data, xy, seed, num_models, 10**6, device, max_steps=2
    )
    torch_sync(torch, device)
  r = methods.timed(timed, wl, data, repeats)
  return dict(r, out=None, loss=r["out"].double().cpu().numpy())
