"""vision_jax: reference JAX/Flax implementations of the computer-vision lecture."""
