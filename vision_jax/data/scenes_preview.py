"""Preview images of the synthetic datasets, to look at the data and its annotations.

  python -m vision_jax.data.scenes_preview --config multi --out /tmp/scenes
  python -m vision_jax.data.scenes_preview --config video --out /tmp/scenes

`--config` is a `scenes` config (single, multi, compositional, multi64) or `video`
(`scenes_video`). Examples are generated directly, nothing is prepared or written
besides the pictures.
"""

import argparse
import math
import os

import numpy as np

from vision_jax.data import scenes
from vision_jax.data import scenes_video


def preview_scenes(config: scenes.ScenesConfig, split: str, num: int, out: str) -> str:
  """Writes one row per example: boxes, instances, segmentation and all its text."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(num, 4, figsize=(18, 2.6 * num),
                           gridspec_kw={'width_ratios': [1, 1, 1, 3.6]}, squeeze=False)
  palette = [plt.get_cmap('tab10')(i)[:3] for i in range(10)]
  shape_colors = np.array([(0, 0, 0)] + palette[:len(scenes.SHAPES)])
  for row, index in zip(axes, range(num)):
    ex = scenes.generate_example(config, split, index)
    row[0].imshow(ex['image'])
    lines = [f'#{index}  label: {scenes.CLASS_NAMES[ex["label"]]}   objects:']
    for i, (box, s, c, z) in enumerate(zip(*(ex['objects'][k] for k in
                                             ('bbox', 'shape', 'color', 'size')))):
      y0, x0, y1, x1 = box * config.image_size - 0.5
      row[0].add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False,
                                     edgecolor=palette[i], linewidth=1.5))
      row[0].text(x0, y0, str(i + 1), fontsize=7, color='black', backgroundcolor=palette[i],
                  va='top')
      lines[0] += f'  {i + 1}: {scenes.SIZES[z]} {scenes.COLORS[c]} {scenes.SHAPES[s]}'
    instances = ex['instances'][..., 0]
    tint = np.array([(0, 0, 0)] + palette)[instances]
    row[1].imshow(0.35 * ex['image'] / 255 + 0.65 * tint)
    row[2].imshow(shape_colors[ex['segmentation'][..., 0]])
    lines += ex['captions'] + [f'Q: {q}  A: {a}' for q, a in zip(ex['questions'], ex['answers'])]
    row[3].text(0, 1, '\n'.join(lines), fontsize=8, va='top', family='monospace')
    for ax, title in zip(row, ('image and boxes', 'instances', 'segmentation', '')):
      ax.set_title(title, fontsize=7)
      ax.axis('off')
  fig.suptitle('segmentation: ' + ', '.join(f'{s} {c}' for s, c in zip(
      scenes.SHAPES, ('blue', 'orange', 'green', 'red', 'purple'))), fontsize=9)
  fig.tight_layout()
  path = os.path.join(out, f'scenes_{config.name}_{split}.png')
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path

def preview_video(config: scenes_video.ScenesVideoConfig, split: str, num: int,
                  out: str) -> list[str]:
  """Writes a frame strip (one clip per row) and an animated GIF of the clips."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  zoom, label_width, pad = 3, 150, 2
  clips = [scenes_video.generate_clip(config, split, i) for i in range(num)]
  size = config.image_size * zoom
  strip = Image.new('RGB', (label_width + config.num_frames * (size + pad), num * (size + pad)),
                    'white')
  draw = ImageDraw.Draw(strip)
  for row, clip in enumerate(clips):
    top = row * (size + pad)
    draw.text((4, top + size // 2 - 6), scenes_video.MOTIONS[clip['label']], fill='black')
    for col, frame in enumerate(clip['video']):
      strip.paste(Image.fromarray(frame).resize((size, size), Image.NEAREST),
                  (label_width + col * (size + pad), top))
  strip_path = os.path.join(out, f'scenes_video_{split}_frames.png')
  strip.save(strip_path)

  columns = math.ceil(math.sqrt(num))
  rows = math.ceil(num / columns)
  gif_frames = []
  for t in range(config.num_frames):
    canvas = Image.new('RGB', (columns * (size + pad), rows * (size + pad + 12)), 'white')
    draw = ImageDraw.Draw(canvas)
    for i, clip in enumerate(clips):
      left, top = (i % columns) * (size + pad), (i // columns) * (size + pad + 12)
      canvas.paste(Image.fromarray(clip['video'][t]).resize((size, size), Image.NEAREST),
                   (left, top))
      draw.text((left + 2, top + size), scenes_video.MOTIONS[clip['label']], fill='black')
    gif_frames.append(canvas)
  gif_path = os.path.join(out, f'scenes_video_{split}.gif')
  gif_frames[0].save(gif_path, save_all=True, append_images=gif_frames[1:], duration=120,
                     loop=0)
  return [strip_path, gif_path]


def main(argv=None):
  parser = argparse.ArgumentParser(description='Writes preview images of the data.')
  parser.add_argument('--config', default='multi',
                      help='a scenes config (single, multi, compositional, multi64) or video')
  parser.add_argument('--out', required=True, help='directory for the preview files')
  parser.add_argument('--split', default='train')
  parser.add_argument('--num', type=int, default=8, help='number of examples')
  args = parser.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  if args.config == 'video':
    paths = preview_video(scenes_video.ScenesVideo.BUILDER_CONFIGS[0], args.split,
                          args.num, args.out)
  else:
    configs = {c.name: c for c in scenes.Scenes.BUILDER_CONFIGS}
    if args.config not in configs:
      parser.error(f'unknown config {args.config!r}; choose from {sorted(configs)} or video')
    paths = [preview_scenes(configs[args.config], args.split, args.num, args.out)]
  print('\n'.join(paths))


if __name__ == '__main__':
  main()
