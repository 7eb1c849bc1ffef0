r"""Captions your own images with a trained captioning run.

  python -m vision_jax.caption --workdir /tmp/caption_scenes_transformer \
      --image photo1.png photo2.jpg [--beam_size 5] [--length_penalty 0.6] \
      [--out captions.png]

Loads the run's latest checkpoint, resizes each image to the run's
`data.input_shape` and scales it to [0, 1] (the captioning experiments' eval
preprocessing), decodes by beam search (`--beam_size 1`: greedy; by default the run's
own `captioning.beam_size`) and prints one `path: caption` line per image; `--out`
also draws them.
"""

import argparse
import sys
from typing import Sequence

import jax
import numpy as np

from vision_jax import checkpointing, config_lib, inference, plotting


def load_images(paths: Sequence[str], input_shape) -> np.ndarray:
  """The images at `paths` as float32 [N, H, W, C] in [0, 1], resized to `input_shape`."""
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  height, width, channels = input_shape
  images = []
  for path in paths:
    try:
      with Image.open(path) as image:
        image = image.convert('L' if channels == 1 else 'RGB').resize(
            (width, height), Image.BILINEAR)
        images.append(np.asarray(image, np.float32).reshape(height, width, channels) / 255)
    except (OSError, UnidentifiedImageError) as e:
      raise inference.RunError(f'--image {path} cannot be read as an image: {e}') from None
  return np.stack(images)


def caption_images(workdir: str, paths: Sequence[str], *, beam_size: int | None = None,
                   length_penalty: float | None = None) -> tuple[np.ndarray, list[str]]:
  """`(images, captions)` of the images at `paths` by the run in `workdir`."""
  config, method, state = inference.load_run(workdir)
  if config.method != 'captioning':
    raise inference.RunError(f'{workdir} holds a {config.method} run, not a captioning one')
  if beam_size is not None:
    if beam_size < 1:
      raise inference.RunError(f'--beam_size must be at least 1, got {beam_size}')
    method.options.beam_size = beam_size
  if length_penalty is not None:
    method.options.length_penalty = length_penalty
  images = load_images(paths, config.data.input_shape)
  tokens = jax.jit(method.caption)(method.eval_state(state), {'image': images})
  return images, [method.vocab.decode(t) for t in np.asarray(tokens)]


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m vision_jax.caption',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True, help='a captioning training run')
  parser.add_argument('--image', nargs='+', required=True, help='image files to caption')
  parser.add_argument('--beam_size', type=int, default=None)
  parser.add_argument('--length_penalty', type=float, default=None)
  parser.add_argument('--out', default=None, help='also draw the captions into this PNG')
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  try:
    images, captions = caption_images(args.workdir, args.image, beam_size=args.beam_size,
                                      length_penalty=args.length_penalty)
  except (inference.RunError, config_lib.ConfigError, checkpointing.CheckpointError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  for path, caption in zip(args.image, captions):
    print(f'{path}: {caption}')
  if args.out:
    plotting.captioned_images(images, [[c] for c in captions], args.out,
                              title=f'captions by {args.workdir}')
    print(f'wrote {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
