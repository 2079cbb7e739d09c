"""The device's measured float32 matmul peaks, which every fraction of peak divides by."""

from __future__ import annotations

import math
import time


from bench import torch_peers
from miajax.engine import costs


def matmul_peak(sizes=(2048, 4096), repeats: int = 5) -> dict:
  """Best float32 GFLOP/s of a jitted square matmul per size, and the best over sizes."""
  return costs.matmul_peak_gflops(sizes, repeats)


def torch_matmul(
  torch, sizes=(2048, 4096), repeats: int = 3, device: str = "cpu"
) -> dict:
  """Best float32 GFLOP/s of PyTorch's ``a @ b`` per size, with its default matmul settings."""
  per_size = {}
  with torch.no_grad():
    for n in sizes:
      a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
      a @ b
      torch_peers.torch_sync(torch, device)
      best = math.inf
      for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        torch_peers.torch_sync(torch, device)
        best = min(best, time.perf_counter() - t)
      per_size[str(n)] = 2 * n**3 / best / 1e9
  return per_size


def higher_peak(matmul: dict) -> tuple[float, str]:
  """``(GFLOP/s, "jax" or "torch")``: the higher of the two measured matmul peaks (JAX's on a tie)."""
  jax_peak = max(matmul["jax"].values())
  torch_peak = max(matmul["torch"].values()) if matmul.get("torch") else None
  if torch_peak is not None and torch_peak > jax_peak:
    return torch_peak, "torch"
  return jax_peak, "jax"
