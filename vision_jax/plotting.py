"""Figures written next to the metrics (matplotlib, no display needed)."""

import math
from typing import Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top  # noqa: E402
import numpy as np  # noqa: E402


def _displayable(image: np.ndarray) -> np.ndarray:
  """Rescales any value range to [0, 1] for display; drops a single channel axis."""
  image = np.asarray(image, np.float32)
  low, high = image.min(), image.max()
  image = (image - low) / (high - low) if high > low else np.zeros_like(image)
  return image[..., 0] if image.shape[-1] == 1 else image


def labelled_image_grid(images: np.ndarray, labels: Sequence[str], path: str, *,
                        correct: Sequence[bool] | None = None, title: str = '',
                        columns: int = 8) -> None:
  """A grid of images, each titled with its label (green when right, red when wrong)."""
  count = len(images)
  rows = max(1, math.ceil(count / columns))
  # Room above each image for its label's lines (VQA's question and answers take three).
  lines = max((label.count('\n') + 1 for label in labels), default=1)
  fig, axes = plt.subplots(rows, columns, squeeze=False,
                           figsize=(1.6 * columns, (1.6 + 0.15 * lines) * rows + 0.4))
  for i, ax in enumerate(axes.flat):
    ax.axis('off')
    if i >= count:
      continue
    ax.imshow(_displayable(images[i]), cmap='gray', interpolation='nearest')
    color = 'black' if correct is None else ('tab:green' if correct[i] else 'tab:red')
    ax.set_title(labels[i], fontsize=8, color=color)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def confusion_matrix(counts: np.ndarray, class_names: Sequence[str], path: str) -> None:
  """Row-normalised confusion matrix (rows: true class, columns: predicted)."""
  counts = np.asarray(counts)
  fractions = counts / np.maximum(counts.sum(1, keepdims=True), 1)
  size = min(0.45 * len(class_names) + 2, 30)
  fig, ax = plt.subplots(figsize=(size, size))
  ax.imshow(fractions, cmap='Blues', vmin=0, vmax=1)
  if len(class_names) <= 30:
    ax.set_xticks(range(len(class_names)), class_names, rotation=90, fontsize=8)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=8)
    for (i, j), n in np.ndenumerate(counts):
      if n:
        ax.text(j, i, str(n), ha='center', va='center', fontsize=6,
                color='white' if fractions[i, j] > 0.5 else 'black')
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  ax.set_title('Confusion matrix')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def class_pixel_probabilities(probabilities: np.ndarray, class_names, class_counts,
                              path: str, *, max_classes: int = 100,
                              columns: int | None = None) -> None:
  """One panel per class: P(pixel on | class) on a fixed 0..1 scale, so panels compare."""
  count = min(len(probabilities), max_classes)
  columns = min(columns or (5 if count <= 10 else 10), count)
  rows = math.ceil(count / columns)
  fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns + 1.2, 1.7 * rows + 0.6),
                           squeeze=False, layout='constrained')
  shown = None
  for i, ax in enumerate(axes.flat):
    ax.axis('off')
    if i >= count:
      continue
    image = probabilities[i]
    if image.shape[-1] == 3:  # Colour: each channel's probability as that channel.
      shown = ax.imshow(image, interpolation='nearest')
    else:
      shown = ax.imshow(image.mean(-1), cmap='gray', vmin=0, vmax=1, interpolation='nearest')
    ax.set_title(f'{class_names[i]} (n={int(class_counts[i])})', fontsize=8)
  if shown is not None and probabilities.shape[-1] != 3:
    fig.colorbar(shown, ax=axes.ravel().tolist(), shrink=0.8, label='P(pixel on | class)')
  more = f' (first {count} of {len(probabilities)} classes)' if count < len(probabilities) else ''
  fig.suptitle('Bernoulli Naive Bayes: per-class pixel probabilities' + more, fontsize=10)
  fig.savefig(path, dpi=100)
  plt.close(fig)


def image_rows(rows: Sequence[np.ndarray], path: str, *, row_labels: Sequence[str] = (),
               column_labels: Sequence[str] = (), title: str = '',
               cell_inches: float = 0.9) -> None:
  """Rows of images in [0, 1] (each row `[K, H, W, C]`), drawn on a fixed 0..1 scale so
  that samples, inputs and reconstructions compare; labels on the left and on top."""
  num_rows, columns = len(rows), max(len(r) for r in rows)
  # About 0.06 inch per character of the 8-point row labels.
  label_width = 0.15 + 0.06 * max(map(len, row_labels)) if any(row_labels) else 0.0
  # Square cells `side` inches wide, `gap` apart (touching images must part), laid out
  # by hand: at least 4 inches wide so that the title fits, the grid centred; the top
  # 0.45 inch is the title's (0.2 more for column labels).
  gap = 0.07
  side = cell_inches - gap
  grid_width, grid_height = (n * side + (n - 1) * gap for n in (columns, num_rows))
  top_space = 0.45 + (0.2 if column_labels else 0.0)
  width = max(label_width + grid_width + 0.1, 4.0)
  height = grid_height + top_space + 0.1
  fig, axes = plt.subplots(num_rows, columns, squeeze=False, figsize=(width, height))
  left = label_width + (width - label_width - grid_width) / 2
  fig.subplots_adjust(left=left / width, right=(left + grid_width) / width,
                      bottom=0.1 / height, top=1 - top_space / height,
                      wspace=gap / side, hspace=gap / side)
  for r, row in enumerate(rows):
    for c, ax in enumerate(axes[r]):
      ax.set_xticks([])
      ax.set_yticks([])
      for spine in ax.spines.values():
        spine.set_visible(False)
      if c >= len(row):
        continue
      image = np.clip(np.asarray(row[c], np.float32), 0, 1)
      if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap='gray', vmin=0, vmax=1, interpolation='nearest')
      else:
        ax.imshow(image, interpolation='nearest')
      if r == 0 and c < len(column_labels):
        ax.set_title(column_labels[c], fontsize=7)
    if r < len(row_labels):
      axes[r][0].set_ylabel(row_labels[r], fontsize=8, rotation=0, ha='right', va='center')
  if title:
    fig.suptitle(title, fontsize=9, y=1 - 0.1 / height, va='top')
  fig.savefig(path, dpi=100)
  plt.close(fig)


def embedding_scatter(points: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                      path: str, *, title: str = '', axis_labels: Sequence[str] = ()) -> None:
  """2D points (a projection of features) coloured by class, with a legend of class
  names beside the axes (up to 40 classes; more are coloured without names)."""
  points, labels = np.asarray(points), np.asarray(labels)
  num_classes = len(class_names)
  if num_classes <= 10:
    colors = plt.get_cmap('tab10').colors[:num_classes]
  elif num_classes <= 20:
    colors = plt.get_cmap('tab20').colors[:num_classes]
  else:
    colors = plt.get_cmap('turbo')(np.linspace(0.05, 0.95, num_classes))
  with_legend = num_classes <= 40
  legend_columns = 1 if num_classes <= 20 else 2
  fig, ax = plt.subplots(figsize=(6.5 + (1.4 * legend_columns if with_legend else 0), 6))
  size = float(np.clip(8000 / max(len(points), 1), 6, 40))
  order = np.random.default_rng(0).permutation(len(points))  # No class drawn on top.
  ax.scatter(points[order, 0], points[order, 1], s=size, c=np.asarray(colors)[labels[order]],
             alpha=0.8, linewidths=0)
  if with_legend:
    handles = [plt.Line2D([], [], linestyle='', marker='o', markersize=7, color=colors[k],
                          label=f'{class_names[k]} ({int(np.sum(labels == k))})')
               for k in range(num_classes)]
    ax.legend(handles=handles, loc='upper left', bbox_to_anchor=(1.01, 1), fontsize=8,
              frameon=False, ncols=legend_columns, title='class (points)', title_fontsize=8)
  if axis_labels:
    ax.set_xlabel(axis_labels[0], fontsize=9)
    ax.set_ylabel(axis_labels[1], fontsize=9)
  ax.tick_params(labelsize=7)
  if title:
    ax.set_title(title, fontsize=9, wrap=True)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def captioned_images(images: np.ndarray, texts: Sequence[Sequence[str]], path: str, *,
                     line_labels: Sequence[str] = (), title: str = '', columns: int = 4,
                     width_chars: int = 36) -> None:
  """Images, each above its texts (e.g. the generated and a reference caption), wrapped
  to fit; `line_labels` name the lines ('generated: ...')."""
  import textwrap  # pylint: disable=g-import-not-at-top
  count = len(images)
  rows = max(1, math.ceil(count / columns))
  blocks = []
  for lines in texts:
    wrapped = []
    for n, line in enumerate(lines):
      label = f'{line_labels[n]}: ' if n < len(line_labels) else ''
      wrapped += textwrap.wrap(label + (line or '(empty)'), width_chars)
    blocks.append('\n'.join(wrapped))
  # Laid out in inches: each cell is a square image over room for the longest text.
  side, gap, line_height, top = 2.0, 0.25, 0.13, 0.45
  text_height = line_height * max((b.count('\n') + 1 for b in blocks), default=1) + 0.1
  cell_width, cell_height = side + gap, side + text_height + gap
  width, height = columns * cell_width + gap, rows * cell_height + top
  fig = plt.figure(figsize=(width, height))
  for i in range(count):
    row, column = divmod(i, columns)
    left = gap + column * cell_width
    bottom = height - top - row * cell_height - side
    ax = fig.add_axes((left / width, bottom / height, side / width, side / height))
    ax.axis('off')
    ax.imshow(_displayable(images[i]), cmap='gray', interpolation='nearest')
    fig.text(left / width, (bottom - 0.06) / height, blocks[i], fontsize=7, va='top',
             ha='left')
  if title:
    fig.suptitle(title, fontsize=10, y=1 - 0.12 / height, va='top')
  fig.savefig(path, dpi=100)
  plt.close(fig)


def attention_maps(rows, path: str, *, title: str = '', max_words: int = 12) -> None:
  """One row per image: the image, then for each word the image under that word's
  attention map (`rows`: `(image [H, W, C], words, maps [T, h, w])`), titled with it."""
  columns = 1 + min(max_words, max(len(words) for _, words, _ in rows))
  fig, axes = plt.subplots(len(rows), columns, figsize=(1.25 * columns, 1.45 * len(rows) + 0.5),
                           squeeze=False)
  for r, (image, words, maps) in enumerate(rows):
    image = _displayable(image)
    height, width = image.shape[:2]
    for c, ax in enumerate(axes[r]):
      ax.axis('off')
      if c == 0:
        ax.imshow(image, cmap='gray', interpolation='nearest')
        ax.set_title('image', fontsize=8)
        continue
      if c - 1 >= len(words) or c - 1 >= max_words:
        continue
      ax.imshow(image, cmap='gray', interpolation='nearest')
      # Each grid cell covers its patch of the image; darker where the word looks less.
      ax.imshow(maps[c - 1], cmap='magma', alpha=0.6, interpolation='bilinear',
                extent=(-0.5, width - 0.5, height - 0.5, -0.5),
                vmin=0, vmax=float(maps[c - 1].max()) or 1.0)
      ax.set_title(words[c - 1], fontsize=8)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def clip_strips(clips: np.ndarray, labels: Sequence[str], path: str, *,
                correct: Sequence[bool] | None = None, attention: np.ndarray | None = None,
                title: str = '') -> None:
  """Video clips [N, T, H, W, C], one row of frames each, with its label above (green
  when right, red when wrong) and, given `attention` [N, T'] (weights over T' time
  tokens, each covering T / T' frames), the weights as bars under the frames."""
  count, num_frames = len(clips), clips.shape[1]
  cell = 0.55
  rows_per_clip = 2 if attention is not None else 1
  ratios = ([1, 0.45] if attention is not None else [1]) * count
  # Wide enough for the title at 9 points (about 0.075 inch a character).
  width = max(cell * num_frames + 0.6, 0.075 * len(title) + 0.3, 4.0)
  fig = plt.figure(figsize=(width, count * (cell + 0.3 + (0.3 if attention is not None else 0))
                            + 0.5))
  grid = fig.add_gridspec(count * rows_per_clip, num_frames, height_ratios=ratios,
                          wspace=0.05, hspace=0.5, left=0.4 / width, right=1 - 0.1 / width,
                          top=1 - 0.45 / fig.get_figheight(), bottom=0.02)
  for i in range(count):
    color = 'black' if correct is None else ('tab:green' if correct[i] else 'tab:red')
    for t in range(num_frames):
      ax = fig.add_subplot(grid[i * rows_per_clip, t])
      ax.imshow(_displayable(clips[i, t]), cmap='gray', interpolation='nearest')
      ax.axis('off')
      if t == 0:
        ax.set_title(labels[i], fontsize=8, color=color, loc='left')
    if attention is not None:
      ax = fig.add_subplot(grid[i * rows_per_clip + 1, :])
      weights = np.asarray(attention[i], np.float32)
      span = num_frames / len(weights)
      ax.bar((np.arange(len(weights)) + 0.5) * span - 0.5, weights, width=span * 0.9,
             color='tab:blue')
      ax.set_xlim(-0.5, num_frames - 0.5)
      ax.set_ylim(0, max(float(weights.max()), 1e-6) * 1.1)
      ax.set_xticks([])
      ax.tick_params(labelsize=6)
  if title:
    fig.suptitle(title, fontsize=9, y=1 - 0.1 / fig.get_figheight(), va='top')
  fig.savefig(path, dpi=100)
  plt.close(fig)


def top_k_bars(images: np.ndarray, names: Sequence[Sequence[str]], scores: np.ndarray,
               true_names: Sequence[str], path: str, *, title: str = '',
               columns: int = 3) -> None:
  """Each image beside horizontal bars of its top-k classes (`names[i]`, best first,
  with `scores[i]` in [0, 1]); the true class's bar is green, the others grey, and the
  true class is written under the image."""
  count, k = len(images), len(names[0]) if len(names) else 0
  rows = max(1, math.ceil(count / columns))
  fig = plt.figure(figsize=(5.0 * columns, 1.6 * rows + 0.6))
  # Per image: the image, a gap for the bars' class names, the bars.
  grid = fig.add_gridspec(rows, 3 * columns, width_ratios=[1, 0.8, 1.5] * columns,
                          wspace=0.05, hspace=0.55, left=0.02, right=0.98,
                          top=1 - 0.55 / fig.get_figheight(), bottom=0.2 / fig.get_figheight())
  for i in range(count):
    row, column = divmod(i, columns)
    ax = fig.add_subplot(grid[row, 3 * column])
    ax.imshow(_displayable(images[i]), cmap='gray', interpolation='nearest')
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f'true: {true_names[i]}', fontsize=8)
    bars = fig.add_subplot(grid[row, 3 * column + 2])
    colors = ['tab:green' if n == true_names[i] else 'tab:gray' for n in names[i]]
    bars.barh(np.arange(k), scores[i], color=colors)
    bars.set_yticks(np.arange(k), names[i], fontsize=8)
    bars.invert_yaxis()  # best at the top
    bars.set_xlim(0, 1)
    bars.tick_params(axis='x', labelsize=7)
    for side in ('top', 'right'):
      bars.spines[side].set_visible(False)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.savefig(path, dpi=100)
  plt.close(fig)


def similarity_matrix(similarity: np.ndarray, images: np.ndarray, texts: Sequence[str],
                      path: str, *, title: str = '', width_chars: int = 48) -> None:
  """A matrix of image-text similarities [texts, images] (the cosines of a test batch),
  the images along the top and the texts down the left, each cell with its value."""
  import textwrap  # pylint: disable=g-import-not-at-top
  num_texts, num_images = similarity.shape
  cell = 0.75
  label_width = 0.065 * min(width_chars, max(len(t) for t in texts)) + 0.3
  width = label_width + cell * num_images + 1.0
  height = cell * (num_texts + 1) + 0.9
  fig = plt.figure(figsize=(width, height))
  left, bottom = label_width / width, 0.25 / height
  matrix_w, matrix_h = cell * num_images / width, cell * num_texts / height
  ax = fig.add_axes((left, bottom, matrix_w, matrix_h))
  shown = ax.imshow(similarity, cmap='viridis', aspect='auto')
  for (r, c), value in np.ndenumerate(similarity):
    ax.text(c, r, f'{value:.2f}', ha='center', va='center', fontsize=7,
            color='white' if value < (similarity.min() + similarity.max()) / 2 else 'black')
  ax.set_xticks([])
  ax.set_yticks(np.arange(num_texts),
                ['\n'.join(textwrap.wrap(t, width_chars)) for t in texts], fontsize=7)
  for c in range(num_images):
    image_ax = fig.add_axes((left + c * cell / width, bottom + matrix_h + 0.05 / height,
                             cell / width, cell / height))
    image_ax.imshow(_displayable(images[c]), cmap='gray', interpolation='nearest')
    image_ax.axis('off')
  colorbar_ax = fig.add_axes((left + matrix_w + 0.15 / width, bottom, 0.15 / width, matrix_h))
  fig.colorbar(shown, cax=colorbar_ax).ax.tick_params(labelsize=7)
  if title:
    fig.suptitle(title, fontsize=9, y=1 - 0.1 / height, va='top')
  fig.savefig(path, dpi=100)
  plt.close(fig)
