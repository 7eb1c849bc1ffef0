"""CPU kernels for XLA through its FFI: convolutions and batch-norm reductions.

`cpu_conv.Conv` and `cpu_batch_norm.BatchNorm` are drop-ins for `flax.linen.Conv` and
`flax.linen.BatchNorm` that the models use; on GPUs and TPUs they are XLA's own.
`library` builds and registers the kernels; `benchmark` times them against XLA.
"""
