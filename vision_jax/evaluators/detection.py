r"""Detection evaluator: COCO box AP by pycocotools, from any detector's `detect`.

Reads `data.split` of its data and calls the method's `pred` ('detect' by default), whose
outputs are the project's shared detection contract (`vision_jax.methods.detection`):
'boxes' [B, D, 4] normalised [ymin, xmin, ymax, xmax], 'scores' [B, D], 'classes' [B, D]
int32 and 'valid' [B, D] bool, and optionally 'masks' [B, D, H, W]. Nothing else of the
method is read but its class names, so FCOS and DETR are scored by the same code.

Ground truth per image: the boxes at `boxes_key` and classes at `classes_key`, from the
host-side fields when `keep_on_cpu` names them (variable-length, unpadded), else from
the device batch; padded objects are dropped with `objects_mask_key` when the batch has
it (`pad_sequence(G, 'objects')` writes 'objects_mask'). `crowd_key` (e.g.
'objects/is_crowd' of COCO) marks COCO's crowd regions, `image_id_key` (e.g. 'image/id')
the images' ids (else 1, 2, ... in the split's order). Boxes are scaled to the
evaluated image's size (`image`'s height and width after pp), which sets COCO's size
ranges: on 32x32 scenes every object is 'small' (area <= 32**2), so AP_medium and
AP_large are -1, pycocotools' value for a size range without ground truth (not 0:
there is nothing to find).

Each evaluation writes into `workdir/<name>/` the ground truth `instances_<split>.json`
(once: it does not change between evaluations) and the detections
`detections_<split>.json` (COCO's annotation and results formats, `vision_jax.coco_eval`),
and scores those files with pycocotools' COCOeval, so the numbers are what anyone gets
rescoring them. Metrics: `AP` (IoU .5:.95), `AP50`, `AP75`, `AP_small`, `AP_medium`,
`AP_large`, `AR100` (recall with 100 detections per image), `num_examples`,
`num_objects`, `num_detections`.

Masks (instance segmentation). When the predictions hold 'masks' (thresholded at
`mask_threshold`), the ground-truth masks come from the instance map at
`instances_key` (pixel value i marks objects[i - 1], as `scenes` and `coco_json:`
store it), every mask is written as RLE in the same files, and `segm/AP`, `segm/AP50`,
... are reported too.

Figures: `detections.png`, test images (nearest-neighbour upscaled) with their true
boxes beside the predicted ones scoring at least `figure_score_threshold`, each with
its class name (and score) and, with masks, each instance's mask in its own colour.
"""

import json
import math
import os
from typing import Sequence

import jax
import matplotlib

matplotlib.use('Agg')
import matplotlib.patches as mpatches  # noqa: E402  pylint: disable=g-import-not-at-top
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top
import numpy as np  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from vision_jax import coco_eval, config_lib, evaluators, parallel  # noqa: E402
from vision_jax.data.pipeline import MASK_KEY  # noqa: E402

CONTRACT = ('boxes', 'scores', 'classes', 'valid')


def _nested_feature(features, key: str):
  """The TFDS feature at 'objects/label' (through Sequence and dict features), or None."""
  node = features
  for part in key.split('/'):
    if isinstance(node, tfds.features.Sequence):
      node = node.feature
    try:
      node = node[part]
    except (KeyError, TypeError, ValueError):
      return None
  if isinstance(node, tfds.features.Sequence):
    node = node.feature
  return node


def class_names_of(method, builder, classes_key: str) -> tuple[str, ...]:
  """The detector's class names: the dataset's own (a ClassLabel at `classes_key`, as
  COCO's) when there are as many as the method's classes, else the method's."""
  method_names = tuple(getattr(method, 'class_names', None) or ())
  feature = _nested_feature(builder.info.features, classes_key)
  if isinstance(feature, tfds.features.ClassLabel):
    if not method_names or (feature.num_classes == len(method_names)
                            and method_names == tuple(map(str, range(len(method_names))))):
      return tuple(feature.names)
  return method_names


class Evaluator(evaluators.Evaluator):
  """Options: boxes_key, classes_key, objects_mask_key, crowd_key, image_id_key,
  instances_key, mask_threshold, num_figure_images, figure_score_threshold."""
  OPTIONS = {'pred': 'detect', 'boxes_key': 'objects/bbox', 'classes_key': 'objects/label',
             'objects_mask_key': 'objects_mask', 'crowd_key': '', 'image_id_key': '',
             'instances_key': 'instances', 'mask_threshold': 0.5, 'num_figure_images': 8,
             'figure_score_threshold': 0.5}

  def __init__(self, method, config, **kwargs):
    super().__init__(method, config, **kwargs)
    self.class_names = class_names_of(method, self.builder, self.config.classes_key)
    if not self.class_names:
      raise config_lib.ConfigError(
          f'evals.{self.name}: a detection evaluator needs a method with class_names '
          f'(a detector), not {method.config.method}')
    num_classes = getattr(method, 'num_classes', len(self.class_names))
    if num_classes != len(self.class_names):
      raise config_lib.ConfigError(
          f'evals.{self.name}: dataset {self.data_info.name} has {len(self.class_names)} '
          f'classes at {self.config.classes_key}, the method {num_classes}')
    ids = (self.data_info.metadata or {}).get('category_ids')
    self.category_ids = (tuple(int(i) for i in ids)
                         if ids is not None and len(ids) == len(self.class_names) else None)
    self._written_ground_truth = False
    self._last = None  # (step, figure rows) of the last evaluation

  # --------------------------------------------------------------- reading the split

  def _field(self, key: str, batch, host, local: dict, i: int):
    """Row i of field `key`: host-side if kept there, else the device batch's; None if
    the batch has neither."""
    if key in host:
      return np.asarray(host[key][i])
    if key not in batch:
      return None
    if key not in local:
      local[key] = parallel.local_rows(batch[key])
    return np.asarray(local[key][i])

  def _required(self, what, key, *args):
    value = self._field(key, *args)
    if value is None:
      raise config_lib.ConfigError(
          f'evals.{self.name}: the preprocessed batch has no {what} {key!r} (set '
          f'evals.{self.name}.{what}, keep it in pp or name it in keep_on_cpu)')
    return value

  def _rows(self, state, first_batch_only: bool = False):
    """One dict per real image of the split (on process 0; None elsewhere), and the
    first batch's images with their rows, for the figures (with `first_batch_only`,
    those alone: `(None, first)`)."""
    c = self.config
    rows, first = [], None
    for batch, host in self.batches():
      outputs = self.predict(state, batch)
      missing = [k for k in CONTRACT if k not in outputs]
      if missing:
        raise ValueError(f'evals.{self.name}: prediction {c.pred} returns no {missing}; a '
                         "detector's detect returns boxes, scores, classes and valid")
      outputs, mask = evaluators.local_outputs(outputs, batch[MASK_KEY])
      local = {}
      images = parallel.local_rows(batch['image'])
      height, width = images.shape[1:3]
      batch_rows = []
      for i in np.flatnonzero(mask):
        args = (batch, host, local, i)
        gt_boxes = self._required('boxes_key', c.boxes_key, *args).reshape(-1, 4)
        gt_classes = self._required('classes_key', c.classes_key, *args).reshape(-1)
        keep = self._field(c.objects_mask_key, *args)
        keep = (np.ones(len(gt_boxes), bool) if keep is None
                else np.asarray(keep, bool).reshape(-1))
        crowd = (self._required('crowd_key', c.crowd_key, *args).reshape(-1).astype(bool)
                 if c.crowd_key else np.zeros(len(gt_boxes), bool))
        valid = outputs['valid'][i].astype(bool)
        row = {'image_id': (int(self._required('image_id_key', c.image_id_key, *args))
                            if c.image_id_key else None),
               'height': int(height), 'width': int(width),
               'gt_boxes': gt_boxes[keep], 'gt_classes': gt_classes[keep],
               'gt_is_crowd': crowd[keep],
               'det_boxes': outputs['boxes'][i][valid],
               'det_scores': outputs['scores'][i][valid],
               'det_classes': outputs['classes'][i][valid]}
        if 'masks' in outputs:
          instances = self._required('instances_key', c.instances_key, *args)
          row['gt_masks'] = coco_eval.masks_from_instance_map(instances, len(keep))[keep]
          row['det_masks'] = outputs['masks'][i][valid] > c.mask_threshold
        batch_rows.append(row)
      if first is None:
        first = (images[np.flatnonzero(mask)], batch_rows)
        if first_batch_only:
          return None, first
      rows += batch_rows
    rows = evaluators.gather_rows(rows)
    if rows is not None:
      for index, row in enumerate(rows):
        if row['image_id'] is None:
          row['image_id'] = index + 1
    return rows, first

  # --------------------------------------------------------------- scoring

  def evaluate(self, state, *, step, rng):
    del rng
    rows, first = self._rows(state)
    self._last = (step, first)
    if rows is None:
      return {}
    with_masks = bool(rows) and 'det_masks' in rows[0]
    accumulator = coco_eval.CocoAccumulator(self.class_names, self.category_ids,
                                            with_masks=with_masks)
    for row in rows:
      accumulator.add(**row)
    gt_path, det_path = self.write_files(accumulator)
    metrics = coco_eval.evaluate_files(gt_path, det_path,
                                       iou_types=('bbox', 'segm') if with_masks else ('bbox',))
    results = {name[len('bbox/'):] if name.startswith('bbox/') else name: value
               for name, value in metrics.items()}
    results['num_examples'] = float(len(rows))
    results['num_objects'] = float(sum(len(r['gt_boxes']) for r in rows))
    results['num_detections'] = float(sum(len(r['det_boxes']) for r in rows))
    return results

  def write_files(self, accumulator: coco_eval.CocoAccumulator) -> tuple[str, str]:
    """Writes `instances_<split>.json` (the first time) and `detections_<split>.json`."""
    outdir = self.make_outdir()
    split = self.config.data.split.replace('/', '_')
    gt_path = os.path.join(outdir, f'instances_{split}.json')
    det_path = os.path.join(outdir, f'detections_{split}.json')
    if not self._written_ground_truth:
      with open(gt_path, 'w') as f:
        json.dump(accumulator.ground_truth(), f)
      self._written_ground_truth = True
    with open(det_path, 'w') as f:
      json.dump(accumulator.detections(), f)
    return gt_path, det_path

  # --------------------------------------------------------------- figures

  def figures(self, state, *, step, rng):
    del rng
    if self._last is not None and self._last[0] == step:
      _, first = self._last
    else:  # No evaluation at this step: the first batch is enough.
      _, first = self._rows(state, first_batch_only=True)
    if jax.process_index() != 0 or first is None:
      return []
    images, rows = first
    count = min(self.config.num_figure_images, len(rows))
    path = os.path.join(self.make_outdir(), 'detections.png')
    draw_detections(
        images[:count], [(r['det_boxes'], r['det_classes'], r['det_scores'])
                         for r in rows[:count]],
        self.class_names, path, truths=[(r['gt_boxes'], r['gt_classes']) for r in rows[:count]],
        masks=[r['det_masks'] for r in rows[:count]] if 'det_masks' in rows[0] else None,
        true_masks=[r['gt_masks'] for r in rows[:count]] if 'gt_masks' in rows[0] else None,
        score_threshold=self.config.figure_score_threshold,
        title=f'{self.name}: {self.data_info.name} {self.config.data.split}, step {step}: '
              'true boxes (left), detections scoring at least '
              f'{self.config.figure_score_threshold} (right)')
    return [path]


# ------------------------------------------------------------------- drawing


INSTANCE_COLOURS = matplotlib.colormaps['Set1']  # a colour per mask (its first 8: not grey)


def class_colours(num_classes: int) -> list[tuple[float, float, float]]:
  """A distinct colour per class (matplotlib's tab10, then tab20's light ones)."""
  tab10, tab20 = matplotlib.colormaps['tab10'], matplotlib.colormaps['tab20']
  colours = [tab10(i)[:3] for i in range(10)] + [tab20(2 * i + 1)[:3] for i in range(10)]
  return [colours[k % len(colours)] for k in range(num_classes)]


def _display(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image, np.float32)
  if image.max() > 1.0 + 1e-6 or image.min() < -1e-6:  # not [0, 1]: stretch
    low, high = image.min(), image.max()
    image = (image - low) / max(high - low, 1e-6)
  return image[..., 0] if image.shape[-1] == 1 else np.clip(image, 0, 1)


def draw_boxes(ax, image: np.ndarray, boxes: np.ndarray, classes: np.ndarray,
               class_names: Sequence[str], scores: np.ndarray | None = None, *,
               masks: np.ndarray | None = None, title: str = '') -> None:
  """One image with its boxes (normalised [ymin, xmin, ymax, xmax]) and their labels,
  and each box's mask [H, W] (when given) in a colour of its own over the image in
  grey.

  The image is shown pixel for pixel (nearest neighbours), so small images stay sharp
  when the panel upscales them."""
  height, width = image.shape[:2]
  shown = _display(image)
  if masks is not None and shown.ndim == 3:  # grey, so that the masks' colours stand out
    shown = shown.mean(-1)
  ax.imshow(shown, cmap='gray', vmin=0, vmax=1, interpolation='nearest',
            extent=(0, width, height, 0))
  colours = class_colours(len(class_names))
  fontsize = 7
  boxes, classes = np.asarray(boxes).reshape(-1, 4), np.asarray(classes).reshape(-1)
  # The best last, so that its box and label are drawn over the others'.
  order = np.argsort(scores, kind='stable') if scores is not None else range(len(boxes))
  if masks is not None:
    overlay = np.zeros((height, width, 4))
    for n, k in enumerate(order):
      overlay[np.asarray(masks[k], bool)] = (*INSTANCE_COLOURS(n % 8)[:3], 0.75)
    ax.imshow(overlay, interpolation='nearest', extent=(0, width, height, 0))
  for k in order:
    box, cls = boxes[k], classes[k]
    ymin, xmin, ymax, xmax = box * np.array([height, width, height, width])
    colour = colours[int(cls)]
    ax.add_patch(mpatches.Rectangle((xmin, ymin), xmax - xmin, ymax - ymin, fill=False,
                                    edgecolor=colour, linewidth=1.5))
    label = class_names[int(cls)]
    if scores is not None:
      label += f' {float(scores[k]):.2f}'
    at_top = ymin < 0.08 * height  # no room above the box: the label goes inside it
    ax.text(xmin, ymin, label, fontsize=fontsize, color='white',
            va='top' if at_top else 'bottom', ha='left',
            bbox=dict(facecolor=colour, edgecolor='none', pad=1, alpha=0.85), clip_on=True)
  ax.set_xlim(0, width)
  ax.set_ylim(height, 0)
  ax.set_xticks([])
  ax.set_yticks([])
  if title:
    ax.set_title(title, fontsize=8)


def draw_detections(images: np.ndarray, detections, class_names: Sequence[str], path: str, *,
                    truths=None, score_threshold: float = 0.5, title: str = '',
                    columns: int = 4, panel_inches: float = 2.6,
                    panel_titles: Sequence[str] | None = None, masks=None,
                    true_masks=None) -> None:
  """A grid of images with their detections, beside their true boxes when given.

  Args:
    images: [N, H, W, C].
    detections: per image `(boxes [D, 4] normalised yxyx, classes [D], scores [D])`;
      those scoring below `score_threshold` are left out.
    class_names: the classes' names.
    path: the PNG to write.
    truths: per image `(boxes [G, 4], classes [G])`, drawn in a panel to the left.
    score_threshold: the least score drawn.
    title: the figure's title.
    columns: images per row.
    panel_inches: each panel's side (32x32 images become about 8x upscaled at 100 dpi).
    panel_titles: per image, a title for its detections' panel.
    masks: per image, the detections' masks [D, H, W] (instance segmentation).
    true_masks: per image, the true objects' masks [G, H, W].
  """
  count = len(images)
  per_image = 2 if truths is not None else 1
  columns = max(1, min(columns, count))
  rows = max(1, math.ceil(count / columns))
  fig, axes = plt.subplots(rows, columns * per_image, squeeze=False,
                           figsize=(panel_inches * columns * per_image,
                                    (panel_inches + 0.3) * rows + 0.5))
  for ax in axes.flat:
    ax.axis('off')
  for n in range(count):
    row, col = divmod(n, columns)
    boxes, classes, scores = (np.asarray(a) for a in detections[n])
    shown = scores >= score_threshold
    if truths is not None:
      ax = axes[row, col * per_image]
      ax.axis('on')
      draw_boxes(ax, images[n], truths[n][0], truths[n][1], class_names,
                 masks=None if true_masks is None else true_masks[n],
                 title=f'true ({len(truths[n][0])})')
    ax = axes[row, col * per_image + per_image - 1]
    ax.axis('on')
    panel_title = (panel_titles[n] if panel_titles is not None
                   else f'detected ({int(shown.sum())})')
    draw_boxes(ax, images[n], boxes[shown], classes[shown], class_names, scores[shown],
               masks=None if masks is None else np.asarray(masks[n])[shown],
               title=panel_title)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
