"""CPU kernels for XLA through its FFI: convolutions and batch-norm reductions.

`cpu_conv.Conv` and `cpu_batch_norm.BatchNorm` are drop-ins for `flax.linen.Conv` and
`flax.linen.BatchNorm` (same parameters) that the models take in place of Flax's layers
with `config.model.cpu_kernels=True` on a CPU (`vision_jax.models.get_model`); by
default no model imports or builds them. They are custom
VJPs: reverse-mode only (no `jax.jvp`, `jax.hessian` or gradient of a gradient).
`library` builds and registers the kernels; `benchmark` times them against XLA.
"""
