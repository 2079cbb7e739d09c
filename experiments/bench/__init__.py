"""The throughput benchmark behind experiments/benchmark.py (its command line).

workloads    what is timed: model/data shapes, the data every method trains on
config       the presets and the validated BenchConfig
methods      the engine, and the timing every method shares
jax_peers    the one-model JAX loop
torch_peers  the PyTorch loop and torch.func ensembling (optional)
art          end to end against ART's ShadowModels (optional)
peak, flops  the matmul peaks and the FLOPs per example rates divide by
throughput   one workload: every method, its rates and ratios
pipeline     the whole LiRA job (experiments/lira.py) by phase, against the same peak
memory       peak host memory, in a child process
goals        the goals and their verdicts
report       report.json and report.md
runner       all of it, as a BenchConfig asks
"""
