"""The engine's CPU-only forms; GPU/TPU runs never use them (see :mod:`miajax.engine.lowering`).

:mod:`.microbatch` (the CPU lowering's decisions: model axis by step FLOPs,
micro-batch by measurement), :mod:`.unroll` (models as separate programs),
:mod:`.convs` and :mod:`.winograd` (convolution forms), :mod:`.devices`
(one JAX device per core).
"""
