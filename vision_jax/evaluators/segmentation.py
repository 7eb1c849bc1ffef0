"""Semantic segmentation evaluator: mean IoU, pixel accuracy and per-class IoU.

Reads `data.split` of its data (an `image` and its `segmentation` label map [H, W, 1] or
[H, W]) with the method's per-pixel logits (`pred`, 'predict' by default: [B, H, W, K]).
As in scenic's segmentation model, every metric comes from one K x K confusion matrix
(rows: true class, columns: predicted) summed over every labelled pixel of the whole
split, under the padding mask (so every example counts once whatever the batch size and
device count); each global batch's matrix is summed inside jit across devices and
processes, and the batches' matrices add up on the host in int64. Nothing is averaged
per batch or per image. Pixels with `segmentation.ignore_label` count nowhere.

From the matrix C: IoU_k = C_kk / (sum_j C_kj + sum_i C_ik - C_kk), `mean_iou` is the
mean of IoU_k over the classes present in the truth or the predictions (a class absent
from both has no IoU: it is left out of the mean, and `num_classes_absent` says how many
were), `pixel_accuracy` = trace(C) / sum(C), `mean_class_accuracy` the mean over the
classes present in the truth of C_kk / sum_j C_kj, `loss` the mean per-pixel
cross-entropy, and `iou_<class name>` each present class's IoU (spaces in names become
underscores). A labelled pixel whose class is not below K is an error that says so.

Figures, in `workdir/<name>/`: `segmentations.png` (test images beside their true and
predicted maps, in a fixed palette with a legend), `confusion_matrix.png` and
`per_class_iou.json` (null for absent classes).
"""

import functools
import json
import math
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use('Agg')
import matplotlib.patches as mpatches  # noqa: E402  pylint: disable=g-import-not-at-top
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top
import numpy as np  # noqa: E402

from vision_jax import config_lib, evaluators, metrics, parallel, plotting  # noqa: E402
from vision_jax.data.pipeline import MASK_KEY  # noqa: E402
from vision_jax.methods.segmentation import pixel_cross_entropy, pixel_labels  # noqa: E402


def _voc_colour(k: int) -> tuple[int, int, int]:
  """Class k's colour in the PASCAL VOC colour map (the bits of k, interleaved)."""
  rgb = [0, 0, 0]
  for shift in range(7, -1, -1):
    for channel in range(3):
      rgb[channel] |= ((k >> channel) & 1) << shift
    k >>= 3
  return tuple(rgb)


def palette(num_classes: int) -> np.ndarray:
  """RGB [0, 1] per class, the same for every run and dataset: class 0 (the background
  of most datasets) black, classes 1-10 matplotlib's tab10, 11-20 the light tab20 ones,
  and beyond the PASCAL VOC colour map. White is kept for ignored pixels."""
  cmap10, cmap20 = matplotlib.colormaps['tab10'], matplotlib.colormaps['tab20']
  colours = [(0.0, 0.0, 0.0)] + [cmap10(i)[:3] for i in range(10)]
  colours += [cmap20(2 * i + 1)[:3] for i in range(10)]
  colours += [tuple(c / 255 for c in _voc_colour(k)) for k in range(21, max(num_classes, 21))]
  return np.array(colours[:num_classes])


IGNORED_COLOUR = (1.0, 1.0, 1.0)


def colourise(labels: np.ndarray, num_classes: int, ignore_label: int) -> np.ndarray:
  """Label map [H, W] -> RGB [H, W, 3] in `palette`, ignored pixels white."""
  colours = palette(num_classes)
  ignored = (labels == ignore_label) | (labels < 0) | (labels >= num_classes)
  rgb = colours[np.where(ignored, 0, labels)]
  rgb[ignored] = IGNORED_COLOUR
  return rgb


def scores(confusion: np.ndarray) -> dict[str, np.ndarray | float]:
  """IoU and accuracies from a confusion matrix [true, predicted].

  Returns `iou` [K] (NaN for a class absent from truth and predictions), `present` [K]
  bool, `mean_iou` (over present classes), `pixel_accuracy` and `mean_class_accuracy`.
  """
  confusion = np.asarray(confusion, np.float64)
  true, predicted, hits = confusion.sum(1), confusion.sum(0), np.diag(confusion)
  union = true + predicted - hits
  present = union > 0
  iou = np.where(present, hits / np.maximum(union, 1), np.nan)
  in_truth = true > 0
  return {
      'iou': iou, 'present': present,
      'mean_iou': float(iou[present].mean()) if present.any() else float('nan'),
      'pixel_accuracy': float(hits.sum() / max(confusion.sum(), 1)),
      'mean_class_accuracy': (float((hits[in_truth] / true[in_truth]).mean())
                              if in_truth.any() else float('nan')),
  }


@functools.lru_cache(maxsize=None)
def _jitted_sums(predict, num_classes: int, ignore_label: int, mesh):
  """`(state, batch) -> (sums, predicted classes)`: the sums replicated, the classes
  [B, H, W] data-sharded (for the figure, so that it needs no compile of its own)."""
  return jax.jit(parallel.under_mesh(mesh, functools.partial(
      _batch_sums, predict, num_classes, ignore_label)),
                 out_shardings=(parallel.replicated(mesh), parallel.data_sharded(mesh)))


def _batch_sums(predict, num_classes, ignore_label, state, batch):
  if 'segmentation' not in batch:  # Traced once, so this is checked on the first batch.
    raise config_lib.ConfigError(
        f'the segmentation evaluator needs a `segmentation` label map; its pp gives '
        f'{sorted(k for k in batch if not k.startswith("_"))} (a map of another name '
        "takes a copy('mask', 'segmentation') op)")
  logits = predict(state, batch).astype(jnp.float32)
  labels = pixel_labels(batch['segmentation'])
  example_mask = batch[MASK_KEY]
  counted = (labels != ignore_label) & example_mask[:, None, None]
  in_range = (labels >= 0) & (labels < num_classes)
  scored = counted & in_range
  loss, _ = pixel_cross_entropy(logits, labels, ignore_label, weights=scored)
  predictions = jnp.argmax(logits, -1).astype(jnp.int32)
  sums = {
      'confusion': metrics.confusion_matrix(
          jnp.where(in_range, labels, 0).reshape(-1), predictions.reshape(-1), num_classes,
          scored.reshape(-1)),
      'loss': loss, 'num_pixels': jnp.sum(scored.astype(jnp.int32)),  # exact, unlike float32
      'num_out_of_range': jnp.sum(counted & ~in_range),
      'num_examples': jnp.sum(example_mask.astype(jnp.int32)),
  }
  return sums, predictions


class Evaluator(evaluators.Evaluator):
  """Options: num_figure_images (test images drawn in segmentations.png)."""
  OPTIONS = {'num_figure_images': 8}

  def __init__(self, method, config, **kwargs):
    super().__init__(method, config, **kwargs)
    if not hasattr(method, 'num_classes') or not hasattr(method, 'class_names'):
      raise config_lib.ConfigError(
          f'evals.{self.name}: a segmentation evaluator needs a method with per-pixel '
          f'classes (method segmentation), not {method.config.method}')
    self.num_classes = method.num_classes
    self.class_names = tuple(method.class_names)
    self.ignore_label = int(method.options.ignore_label)
    self._sums = _jitted_sums(self.predict, self.num_classes, self.ignore_label, self.mesh)
    self._last = None

  def confusion_matrix(self, state) -> tuple[np.ndarray, dict[str, float]]:
    """The split's confusion matrix (int64 [K, K]) and its other sums."""
    confusion = np.zeros((self.num_classes, self.num_classes), np.int64)
    totals = {'loss': 0.0, 'num_pixels': 0, 'num_out_of_range': 0, 'num_examples': 0}
    for batch, _ in self.batches():
      sums = parallel.fetch(self._sums(state, batch)[0])
      confusion += sums.pop('confusion').astype(np.int64)
      for key, value in sums.items():
        totals[key] += value.item()
    return confusion, totals

  def evaluate(self, state, *, step, rng):
    del step, rng
    confusion, totals = self.confusion_matrix(state)
    if totals['num_out_of_range']:
      raise ValueError(
          f'evals.{self.name}: {totals["num_out_of_range"]} labelled pixels of '
          f'{self.data_info.name} {self.config.data.split} have a class outside 0..'
          f'{self.num_classes - 1} that is not the ignore label {self.ignore_label}; set '
          'segmentation.class_names (or num_classes) and segmentation.ignore_label to the '
          "dataset's")
    found = scores(confusion)
    self._last = (confusion, found)
    results = {
        'mean_iou': found['mean_iou'], 'pixel_accuracy': found['pixel_accuracy'],
        'mean_class_accuracy': found['mean_class_accuracy'],
        'loss': totals['loss'] / max(totals['num_pixels'], 1.0),
        'num_classes_absent': float((~found['present']).sum()),
        'num_pixels': float(totals['num_pixels']),
        'num_examples': float(totals['num_examples']),
    }
    for name, iou, present in zip(self.class_names, found['iou'], found['present']):
      if present:
        results[f'iou_{name.replace(" ", "_")}'] = float(iou)
    return results

  def per_class_iou(self) -> dict[str, float | None]:
    """From the last `evaluate` call: class name -> IoU, None where absent."""
    _, found = self._last
    return {name: (float(iou) if present else None)
            for name, iou, present in zip(self.class_names, found['iou'], found['present'])}

  def figures(self, state, *, step, rng):
    if self._last is None:
      self.evaluate(state, step=step, rng=rng)
    batch, _ = next(self.batches())
    predicted, mask = evaluators.local_outputs(self._sums(state, batch)[1], batch[MASK_KEY])
    if jax.process_index() != 0:
      return []
    outdir = self.make_outdir()
    keep = np.nonzero(mask)[0][:self.config.num_figure_images]
    images = parallel.local_rows(batch['image'])[keep]
    truth = np.asarray(pixel_labels(parallel.local_rows(batch['segmentation'])[keep]))
    paths = [os.path.join(outdir, name) for name in (
        'segmentations.png', 'confusion_matrix.png', 'per_class_iou.json')]
    confusion, found = self._last
    segmentation_figure(
        images, truth, predicted[keep], self.class_names, paths[0],
        ignore_label=self.ignore_label,
        title=f'{self.name}: {self.data_info.name} {self.config.data.split}, step {step}: '
              f'mean IoU {found["mean_iou"]:.3f}, pixel accuracy '
              f'{found["pixel_accuracy"]:.3f}')
    plotting.confusion_matrix(confusion, self.class_names, paths[1])
    absent = [n for n, iou in self.per_class_iou().items() if iou is None]
    with open(paths[2], 'w', encoding='utf-8') as f:
      json.dump({'per_class_iou': self.per_class_iou(), 'mean_iou': found['mean_iou'],
                 'absent_classes (not in the mean)': absent}, f, indent=1)
    return paths


def _image_for_display(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image, np.float32)
  low, high = image.min(), image.max()
  image = (image - low) / (high - low) if high > low else np.zeros_like(image)
  return np.repeat(image, 3, -1) if image.shape[-1] == 1 else image


def segmentation_figure(images: np.ndarray, truth: np.ndarray, predicted: np.ndarray,
                        class_names: Sequence[str], path: str, *, ignore_label: int = 255,
                        title: str = '', groups_per_row: int = 2) -> None:
  """Each image beside its true and its predicted map (the latter titled with the image's
  pixel accuracy), `groups_per_row` such triples a row, and a legend of the classes'
  colours (and of ignored pixels, white, where the truth has any)."""
  count, k = len(images), len(class_names)
  groups_per_row = max(1, min(groups_per_row, count))
  rows = max(1, math.ceil(count / groups_per_row))
  columns = 3 * groups_per_row
  fig, axes = plt.subplots(rows, columns, squeeze=False, layout='constrained',
                           figsize=(1.5 * columns, 1.65 * rows + 0.8))
  for i, ax in enumerate(axes.flat):
    ax.set_xticks([])
    ax.set_yticks([])
    example = (i // columns) * groups_per_row + (i % columns) // 3
    part = i % 3  # image, truth, prediction
    if example >= count:
      ax.axis('off')
      continue
    labelled = truth[example] != ignore_label
    if part == 0:
      ax.imshow(_image_for_display(images[example]), interpolation='nearest')
      ax.set_title('image', fontsize=8)
    elif part == 1:
      ax.imshow(colourise(truth[example], k, ignore_label), interpolation='nearest')
      ax.set_title('true', fontsize=8)
    else:
      ax.imshow(colourise(predicted[example], k, ignore_label), interpolation='nearest')
      accuracy = (predicted[example] == truth[example])[labelled].mean() if labelled.any() else 0
      ax.set_title(f'predicted ({accuracy:.0%} right)', fontsize=8)
  colours = palette(k)
  handles = [mpatches.Patch(facecolor=colours[c], edgecolor='black', linewidth=0.5,
                            label=name) for c, name in enumerate(class_names)]
  if np.any(truth == ignore_label):
    handles.append(mpatches.Patch(facecolor=IGNORED_COLOUR, edgecolor='black', linewidth=0.5,
                                  label=f'ignored ({ignore_label})'))
  fig.legend(handles=handles, loc='outside lower center', ncol=min(len(handles), 7),
             fontsize=8, frameon=False)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.savefig(path, dpi=100)
  plt.close(fig)
