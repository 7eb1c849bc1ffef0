r"""Times `vision_jax.layers.conv_transpose` against XLA's transposed convolution.

  python -m vision_jax.benchmark_conv_transpose [--steps N]

For each transposed convolution of the generative experiments' decoders and
generators (vae_mnist and ae_mnist, gan_mnist, gan_scenes) at their batch sizes,
prints the median milliseconds of one forward and backward pass (the gradients with
respect to the input and the kernel), by phases and as `jax.lax.conv_transpose`
(XLA's input-dilated convolution), each jitted on its own and timed in turns.
"""

import argparse
import sys
from typing import Sequence

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from vision_jax import benchmark, host_memory, layers

# (experiment, batch, input side, input channels, output channels, kernel side); all
# stride 2 with 'SAME' padding.
CONV_TRANSPOSES = (
    ('vae_mnist', 128, 7, 64, 64, 3),
    ('vae_mnist', 128, 14, 64, 32, 3),
    ('gan_mnist', 64, 7, 64, 32, 4),
    ('gan_mnist', 64, 14, 32, 1, 4),
    ('gan_scenes', 64, 4, 64, 32, 4),
    ('gan_scenes', 64, 8, 32, 16, 4),
    ('gan_scenes', 64, 16, 16, 3, 4),
)


def forward_and_backward(conv_transpose, x, w):
  """The jitted gradients of sum(y^2) with respect to the input and the kernel."""
  def loss(x, w):
    return jnp.sum(conv_transpose(x, w, (2, 2), 'SAME') ** 2)
  step = jax.jit(jax.grad(loss, argnums=(0, 1)))
  return lambda: jax.block_until_ready(step(x, w))


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m vision_jax.benchmark_conv_transpose',
                                   description=__doc__)
  parser.add_argument('--steps', type=int, default=20, help='timed calls of each form')
  args = parser.parse_args(argv)
  host_memory.keep_freed_memory()
  rng = np.random.default_rng(0)
  print(f'{"experiment":<11s} {"batch":>5s} {"input":>10s} {"out":>4s} {"k":>2s}  '
        f'{"XLA ms":>8s} {"phases ms":>9s}  speed-up')
  for name, batch, side, cin, cout, k in CONV_TRANSPOSES:
    x = jnp.asarray(rng.standard_normal((batch, side, side, cin), np.float32))
    w = jnp.asarray(rng.standard_normal((k, k, cin, cout), np.float32))
    timings = benchmark.time_steps(
        {'xla': forward_and_backward(lax.conv_transpose, x, w),
         'phases': forward_and_backward(layers.conv_transpose, x, w)},
        args.steps, warmup=2)
    xla, phases = timings['xla']['ms_per_step'], timings['phases']['ms_per_step']
    print(f'{name:<11s} {batch:5d} {f"{side}x{side}x{cin}":>10s} {cout:4d} {k:2d}  '
          f'{xla:8.2f} {phases:9.2f}  {xla / phases:6.2f}x')
  return 0


if __name__ == '__main__':
  sys.exit(main())
