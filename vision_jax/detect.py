r"""Detects objects in your own images with a trained detection run.

  python -m vision_jax.detect --workdir /tmp/detect_scenes_fcos \
      --image photo1.png photo2.jpg --out /tmp/detections [--score_threshold 0.5]

Loads the run's latest checkpoint, resizes each image to the run's `data.input_shape`
and scales it to [0, 1] (the detection experiments' eval preprocessing), runs the run's
`detect` prediction (any detector of the project: FCOS, DETR) and writes into `--out`
one `<image name>.png` per image (the image at its own resolution, upscaled when small,
with the boxes scoring at least `--score_threshold`, their class names and scores) and
`detections.json` (per image, every detection above the threshold: class, score and the
box [ymin, xmin, ymax, xmax] in the original image's pixels). An instance-segmentation
run (CondInst) draws each detection's mask too, thresholded at 0.5 and scaled from the
model's resolution to the drawing by nearest neighbours. It prints one line per image. A missing workdir, checkpoint or image is a one-line error (exit status 2).
"""

import argparse
import json
import os
import sys
from typing import Sequence

import jax
import numpy as np

from vision_jax import checkpointing, config_lib, inference
from vision_jax.caption import load_images
from vision_jax.evaluators.detection import draw_detections

MIN_DRAWN_SIDE = 256  # pixels: smaller images are drawn upscaled (nearest neighbours)


def _original(path: str) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as image:
    return np.asarray(image.convert('RGB'), np.float32) / 255


def _resize_nearest(masks: np.ndarray, height: int, width: int) -> np.ndarray:
  """[N, h, w] -> [N, height, width] by nearest neighbours (pixel centres)."""
  rows = ((np.arange(height) + 0.5) * masks.shape[1] / height).astype(int)
  cols = ((np.arange(width) + 0.5) * masks.shape[2] / width).astype(int)
  return masks[:, rows][:, :, cols]


def detect_images(workdir: str, paths: Sequence[str]):
  """`(detections, class_names)` of the images at `paths` by the run in `workdir`:
  numpy arrays of the `detect` contract, [N, D, ...]."""
  config, method, state = inference.load_run(workdir)
  if 'detect' not in method.PREDICTIONS:
    raise inference.RunError(f'{workdir} holds a {config.method} run, which does not detect '
                             'objects (its method has no detect prediction)')
  images = load_images(paths, config.data.input_shape)
  detections = jax.jit(method.detect)(method.eval_state(state), {'image': images})
  return jax.tree.map(np.asarray, detections), tuple(method.class_names)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m vision_jax.detect',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True, help='a detection training run')
  parser.add_argument('--image', nargs='+', required=True, help='image files')
  parser.add_argument('--out', required=True, help='folder for the drawings and the JSON')
  parser.add_argument('--score_threshold', type=float, default=0.5,
                      help='the least score drawn and listed')
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  try:
    if not os.path.isdir(args.workdir):
      raise inference.RunError(f'--workdir {args.workdir} does not exist')
    for path in args.image:
      if not os.path.isfile(path):
        raise inference.RunError(f'--image {path} does not exist')
    detections, class_names = detect_images(args.workdir, args.image)
  except (inference.RunError, config_lib.ConfigError, checkpointing.CheckpointError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  os.makedirs(args.out, exist_ok=True)
  listed, written = {}, set()
  for n, path in enumerate(args.image):
    keep = detections['valid'][n] & (detections['scores'][n] >= args.score_threshold)
    boxes, classes = detections['boxes'][n][keep], detections['classes'][n][keep]
    scores = detections['scores'][n][keep]
    image = _original(path)
    height, width = image.shape[:2]
    listed[path] = [{'class': class_names[int(c)], 'score': round(float(s), 4),
                     'box': [round(float(v), 2) for v in b * [height, width, height, width]]}
                    for b, c, s in zip(boxes, classes, scores)]
    upscale = max(1, -(-MIN_DRAWN_SIDE // max(height, width)))
    drawn = np.repeat(np.repeat(image, upscale, 0), upscale, 1) if upscale > 1 else image
    name = os.path.splitext(os.path.basename(path))[0]
    out = os.path.join(args.out, f'{name}.png')
    if out in written:  # Two images of one name (in different folders) keep both.
      out = os.path.join(args.out, f'{name}_{n}.png')
    written.add(out)
    masks = None
    if 'masks' in detections:
      masks = [_resize_nearest(detections['masks'][n][keep] > 0.5, *drawn.shape[:2])]
    draw_detections(drawn[None], [(boxes, classes, scores)], class_names, out,
                    score_threshold=args.score_threshold, columns=1, masks=masks,
                    panel_inches=max(2.6, drawn.shape[1] / 100),
                    panel_titles=[f'{os.path.basename(path)}: {len(boxes)} objects'])
    found = ', '.join(f'{d["class"]} {d["score"]:.2f}' for d in listed[path]) or 'nothing'
    print(f'{path}: {found} -> {out}')
  with open(os.path.join(args.out, 'detections.json'), 'w', encoding='utf-8') as f:
    json.dump(listed, f, indent=1)
  return 0


if __name__ == '__main__':
  sys.exit(main())
