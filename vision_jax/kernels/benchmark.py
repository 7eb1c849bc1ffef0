r"""Times the CPU convolution kernels against XLA's own convolutions, op by op.

  python -m vision_jax.kernels.benchmark [--steps N]

For each convolution of the CNN (cnn_mnist) and ResNet-20 (resnet_cifar10) training
steps at batch 128, prints the median milliseconds of the forward pass, the input
gradient and the kernel gradient, with the kernels and with XLA (`jax.lax`), each
jitted on its own, timed in turns, and the kernels' GFLOP/s (a multiply-add is 2).
"""

import argparse
import sys
from typing import Sequence

import jax
from jax import lax
import numpy as np

from vision_jax import benchmark, host_memory
from vision_jax.kernels import cpu_conv, library

# (batch, image side, input channels, output channels, kernel side, stride)
CONVOLUTIONS = (
    (128, 28, 1, 32, 5, 1),    # CNN: stage 1
    (128, 14, 32, 64, 5, 1),   # CNN: stage 2
    (128, 32, 3, 16, 3, 1),    # ResNet-20: stem
    (128, 32, 16, 16, 3, 1),   # ResNet-20: stage 1
    (128, 32, 16, 32, 3, 2),   # ResNet-20: into stage 2
    (128, 16, 32, 32, 3, 1),   # ResNet-20: stage 2
    (128, 16, 32, 64, 3, 2),   # ResNet-20: into stage 3
    (128, 8, 64, 64, 3, 1),    # ResNet-20: stage 3
)
NHWC = ('NHWC', 'HWIO', 'NHWC')


def convolution_ops(conv, x, w, stride: int):
  """Closures running the jitted forward pass, input gradient and kernel gradient."""
  pad = w.shape[0] // 2
  def forward(x, w):
    return conv(x, w, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=NHWC)
  dy = forward(x, w)
  input_grad = jax.jit(lambda x, w, dy: jax.vjp(lambda x: forward(x, w), x)[1](dy)[0])
  kernel_grad = jax.jit(lambda x, w, dy: jax.vjp(lambda w: forward(x, w), w)[1](dy)[0])
  forward = jax.jit(forward)
  return {'forward': lambda: forward(x, w).block_until_ready(),
          'input grad': lambda: input_grad(x, w, dy).block_until_ready(),
          'kernel grad': lambda: kernel_grad(x, w, dy).block_until_ready()}


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m vision_jax.kernels.benchmark',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--steps', type=int, default=20, help='timed calls of each op')
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  host_memory.keep_freed_memory()
  if not library.enabled():
    print('error: the CPU kernels are not available here (see vision_jax.kernels.library)',
          file=sys.stderr)
    return 1
  rng = np.random.default_rng(0)
  print(f'{jax.devices()[0].device_kind}; milliseconds, median of {args.steps} calls; '
        'kernels / XLA (kernels GFLOP/s)')
  print(f'{"input":>16s} {"kernel":>12s} {"stride":>6s}   '
        f'{"forward":>22s} {"input grad":>22s} {"kernel grad":>22s}')
  for n, side, ci, co, k, stride in CONVOLUTIONS:
    # On the device already, so the timings hold no host-to-device copies.
    x = jax.device_put(rng.standard_normal((n, side, side, ci), np.float32))
    w = jax.device_put(rng.standard_normal((k, k, ci, co), np.float32))
    ops = {'kernels': convolution_ops(cpu_conv.conv_general_dilated, x, w, stride),
           'xla': convolution_ops(lax.conv_general_dilated, x, w, stride)}
    steps = {(impl, op): fn for impl, fns in ops.items() for op, fn in fns.items()}
    times = benchmark.time_steps(steps, args.steps, warmup=2)
    flops = 2 * n * (side // stride) ** 2 * k * k * ci * co
    cells = []
    for op in ('forward', 'input grad', 'kernel grad'):
      ours, xla = times[('kernels', op)]['ms_per_step'], times[('xla', op)]['ms_per_step']
      cells.append(f'{ours:6.2f} / {xla:6.2f} ({flops / ours * 1e-6:3.0f})')
    print(f'{f"{n}x{side}x{side}x{ci}":>16s} {f"{k}x{k}x{ci}x{co}":>12s} {stride:6d}   '
          + ' '.join(f'{c:>22s}' for c in cells), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
