r"""Draws images from a trained generative run (VAE, GAN, diffusion).

  python -m vision_jax.sample --workdir /tmp/ddpm_mnist --out /tmp/ddpm_samples \
      [--num 64] [--label K] [--guidance G] [--steps S] [--sampler ddpm|ddim] \
      [--eta E] [--seed 0]

Loads the run's latest checkpoint (EMA weights where the run keeps them) and writes
`samples.npz` (`images`: uint8 [N, H, W, C]; `labels` when the model is conditional)
and `samples.png` into `--out`. A conditional model draws the classes in turn unless
`--label` names one; `--guidance`, `--steps`, `--sampler` and `--eta` are diffusion's
sampling options (an option the method lacks is an error). Samples are drawn on one
device, in batches of `--batch_size`.
"""

import argparse
import math
import os
import sys
from typing import Sequence

import jax
import numpy as np

from vision_jax import checkpointing, config_lib, inference, plotting
from vision_jax.methods import generative, get_method_class


class SampleError(ValueError):
  """A run that cannot be sampled, or a bad request."""


def draw(workdir: str, *, num: int, label: int | None = None, seed: int = 0,
         batch_size: int = 256, **options) -> tuple[np.ndarray, np.ndarray | None, str]:
  """`(images uint8 [num, H, W, C], labels or None, run description)`."""
  method_name = inference.read_config(workdir).method
  method_class = get_method_class(method_name)
  if not (issubclass(method_class, generative.Method)
          and 'generate' in method_class.CAPABILITIES):
    raise SampleError(f'{workdir} holds a {method_name} run, which does not generate '
                      'images (the VAE, GAN and diffusion runs do)')
  config, method, state = inference.load_run(workdir)
  options = method.sample_options(options)
  if label is not None:
    if not method.conditional:
      raise SampleError(f'--label: the {config.method} run in {workdir} is not conditional')
    if not 0 <= label < method.num_classes:
      raise SampleError(f'--label {label} is not a class of the run (0..{method.num_classes - 1})')
    labels = np.full(num, label, np.int32)
  else:
    labels = (np.arange(num) % method.num_classes if method.conditional
              else np.zeros(num)).astype(np.int32)
  eval_state = method.eval_state(state)
  generate = jax.jit(lambda rng, labels: method.generate(eval_state, rng, labels, **options))
  key, chunks = jax.random.key(seed), []
  for start in range(0, num, batch_size):
    chunk = np.zeros(batch_size, np.int32)
    chunk[:len(labels[start:start + batch_size])] = labels[start:start + batch_size]
    images = generate(jax.random.fold_in(key, start // batch_size), chunk)
    chunks.append(np.asarray(images)[:num - start])
  description = f'{config.method} on {config.data.name}'
  if options:
    description += ' (' + ', '.join(f'{k}={v}' for k, v in options.items()) + ')'
  return (inference.to_uint8(np.concatenate(chunks)),
          labels if method.conditional else None, description)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m vision_jax.sample',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True, help='a generative training run')
  parser.add_argument('--out', required=True, help='folder for samples.npz and samples.png')
  parser.add_argument('--num', type=int, default=64)
  parser.add_argument('--label', type=int, default=None)
  parser.add_argument('--guidance', type=float, default=None)
  parser.add_argument('--steps', type=int, default=None)
  parser.add_argument('--sampler', default=None)
  parser.add_argument('--eta', type=float, default=None)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--batch_size', type=int, default=256)
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  if args.num < 1 or args.batch_size < 1:
    print('error: --num and --batch_size must be positive', file=sys.stderr)
    return 2
  try:
    images, labels, description = draw(
        args.workdir, num=args.num, label=args.label, seed=args.seed,
        batch_size=min(args.batch_size, args.num), guidance=args.guidance,
        steps=args.steps, sampler=args.sampler, eta=args.eta)
  except (SampleError, inference.RunError, config_lib.ConfigError,
          checkpointing.CheckpointError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  os.makedirs(args.out, exist_ok=True)
  arrays = {'images': images} if labels is None else {'images': images, 'labels': labels}
  np.savez(os.path.join(args.out, 'samples.npz'), **arrays)
  # Conditional samples cycle through the classes: one class per column.
  cycling = labels is not None and args.label is None
  columns = min(int(labels.max()) + 1 if cycling else 10, len(images))
  rows = [images[i:i + columns] / 255.0 for i in range(0, len(images), columns)]
  title = f'{len(images)} samples of {description}'
  if args.label is not None:
    title += f', label {args.label}'
  plotting.image_rows(rows, os.path.join(args.out, 'samples.png'),
                      column_labels=[f'label {k}' for k in labels[:columns]] if cycling else (),
                      title=title, cell_inches=max(0.5, min(0.9, 9 / math.sqrt(len(images)))))
  print(f'wrote {len(images)} samples to {args.out}/samples.npz and samples.png')
  return 0


if __name__ == '__main__':
  sys.exit(main())
