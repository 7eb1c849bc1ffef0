"""COCO detection and instance segmentation metrics, by pycocotools' own COCOeval.

AP on COCO is defined by its reference code (101-point interpolation, area ranges,
crowd handling, at most 100 detections per image), so nothing here recomputes it:
`CocoAccumulator` gathers an evaluation set's ground truth and detections on the host,
writes them as COCO files, and `evaluate_files` scores those files with COCOeval. The
numbers are therefore exactly what anyone gets rescoring the written JSON:

  instances_<split>.json   ground truth, the COCO annotation format: images (id,
                           width, height), categories (id, name), annotations (id,
                           image_id, category_id, bbox [x, y, w, h] in pixels, area,
                           iscrowd and, with masks, an RLE segmentation)
  detections_<split>.json  the COCO results format: [{image_id, category_id, bbox,
                           score, segmentation (RLE, with masks)}]

Traps of pycocotools handled here:
  * `loadRes([])` crashes; with no detections the results are an empty COCO set, so
    AP is 0 wherever there is ground truth.
  * COCOeval reads each ground-truth object's `area` (to pick its size range); it is
    the mask's pixel count with masks (as in COCO's files), the box's w * h without.
  * Annotation ids start at 1: COCOeval stores matched ids and reads id 0 as unmatched.
  * A size range without ground truth gives -1, kept as -1 (not 0: there is nothing to
    find). On 32x32 images every object is 'small' (area <= 32^2), so AP_medium and
    AP_large are -1 there.
  * `mask.encode` needs Fortran-ordered uint8 arrays, and gives `counts` as bytes,
    decoded to str for JSON.
  * For `segm`, a results file's boxes would set the detections' areas (loadRes
    prefers a box to a mask), so they are left out and mask AP's size ranges use mask
    areas, as detectron2 does.
  * pycocotools prints; its output is captured.
"""

import contextlib
import io
import json
import os
from typing import Sequence

import numpy as np
from pycocotools import coco as coco_api
from pycocotools import cocoeval
from pycocotools import mask as mask_utils

# COCOeval.stats[i] for the names logged; -1 where the size range holds no ground truth.
STATS = {'AP': 0, 'AP50': 1, 'AP75': 2, 'AP_small': 3, 'AP_medium': 4, 'AP_large': 5,
         'AR100': 8}


def encode_mask(mask: np.ndarray) -> dict:
  """A binary [H, W] mask as COCO's compressed RLE, JSON-ready (`counts` a str)."""
  rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, np.uint8)))
  return {'size': [int(s) for s in rle['size']], 'counts': rle['counts'].decode('ascii')}


def masks_from_instance_map(instances: np.ndarray, num_objects: int) -> np.ndarray:
  """[num_objects, H, W] bool masks from an instance-id map [H, W] or [H, W, 1] where
  pixel value i marks object i - 1 (the `instances` feature of the datasets)."""
  instances = np.asarray(instances)
  if instances.ndim == 3:
    instances = instances[..., 0]
  return instances[None] == np.arange(1, num_objects + 1)[:, None, None]


def _coco_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
  """Normalised [ymin, xmin, ymax, xmax] -> pixel [x, y, w, h], in float64."""
  ymin, xmin, ymax, xmax = np.asarray(boxes, np.float64).reshape(-1, 4).T
  return np.stack([xmin * width, ymin * height, (xmax - xmin) * width,
                   (ymax - ymin) * height], 1)


class CocoAccumulator:
  """An evaluation set's ground truth and detections, image by image, as COCO files.

  Class indices (the datasets' `label`, a detector's classes) are positions in
  `category_names`; the files use COCO category ids, `category_ids[index]`.

  Attributes:
    category_ids: the COCO id of each class index (1, 2, ... unless given).
    category_names: the name of each class index.
    with_masks: whether every image brings instance masks (then `segm` is scored too).
  """

  def __init__(self, category_names: Sequence[str],
               category_ids: Sequence[int] | None = None, *, with_masks: bool = False):
    self.category_names = [str(n) for n in category_names]
    self.category_ids = ([int(i) for i in category_ids] if category_ids is not None
                         else list(range(1, len(self.category_names) + 1)))
    if len(self.category_ids) != len(self.category_names):
      raise ValueError(f'{len(self.category_ids)} category ids for '
                       f'{len(self.category_names)} category names')
    if len(set(self.category_ids)) != len(self.category_ids):
      raise ValueError(f'category ids repeat: {self.category_ids}')
    self.with_masks = with_masks
    self._images, self._annotations, self._detections = [], [], []
    self._image_ids = set()

  @property
  def num_images(self) -> int:
    return len(self._images)

  def _category_ids(self, classes, what: str, image_id: int) -> list[int]:
    classes = np.asarray(classes).reshape(-1).astype(np.int64)
    bad = classes[(classes < 0) | (classes >= len(self.category_ids))]
    if bad.size:
      raise ValueError(f'image {image_id}: {what} class {int(bad[0])} is not one of the '
                       f'{len(self.category_ids)} categories')
    return [self.category_ids[c] for c in classes]

  def _masks(self, masks, count: int, height: int, width: int, what: str, image_id: int):
    if not self.with_masks:
      if masks is not None:
        raise ValueError(f'image {image_id}: {what} masks given to a CocoAccumulator made '
                         'with with_masks=False')
      return [None] * count
    if masks is None:
      raise ValueError(f'image {image_id}: {what} masks are needed (with_masks=True)')
    masks = np.asarray(masks)
    if masks.shape != (count, height, width):
      raise ValueError(f'image {image_id}: {what} masks have shape {masks.shape}, expected '
                       f'{(count, height, width)} (one [height, width] mask per object)')
    return [encode_mask(m) for m in masks]

  def add(self, image_id: int, *, height: int, width: int, gt_boxes, gt_classes,
          det_boxes, det_scores, det_classes, gt_masks=None, det_masks=None,
          gt_is_crowd=None) -> None:
    """Adds one image: its real objects and its detections (no padding rows).

    Args:
      image_id: the image's id in the files (unique).
      height: the image's height in pixels; boxes are scaled by it and `width`.
      width: the image's width in pixels.
      gt_boxes: [G, 4] normalised [ymin, xmin, ymax, xmax] (the datasets' bbox).
      gt_classes: [G] class indices.
      det_boxes: [D, 4] normalised [ymin, xmin, ymax, xmax].
      det_scores: [D] confidences.
      det_classes: [D] class indices.
      gt_masks: [G, H, W] binary masks, when the accumulator takes masks.
      det_masks: [D, H, W] binary masks (thresholded), when it takes masks.
      gt_is_crowd: [G] bool, COCO's crowd regions (matching one costs nothing).
    """
    image_id, height, width = int(image_id), int(height), int(width)
    if image_id in self._image_ids:
      raise ValueError(f'image id {image_id} was added twice')
    # Everything is checked before anything is kept, so a failed add leaves no trace.
    boxes = _coco_boxes(gt_boxes, height, width)
    categories = self._category_ids(gt_classes, 'ground-truth', image_id)
    crowd = (np.zeros(len(boxes), bool) if gt_is_crowd is None
             else np.asarray(gt_is_crowd, bool).reshape(-1))
    if not len(boxes) == len(categories) == len(crowd):
      raise ValueError(f'image {image_id}: {len(boxes)} ground-truth boxes, '
                       f'{len(categories)} classes, {len(crowd)} crowd flags')
    masks = self._masks(gt_masks, len(boxes), height, width, 'ground-truth', image_id)
    annotations = []
    for box, category, is_crowd, rle in zip(boxes, categories, crowd, masks):
      annotation = {'id': len(self._annotations) + len(annotations) + 1,
                    'image_id': image_id, 'category_id': category,
                    'bbox': [float(v) for v in box], 'area': float(box[2] * box[3]),
                    'iscrowd': int(is_crowd)}
      if rle is not None:
        annotation['segmentation'] = rle
        annotation['area'] = float(mask_utils.area(rle))
      annotations.append(annotation)

    boxes = _coco_boxes(det_boxes, height, width)
    categories = self._category_ids(det_classes, 'detection', image_id)
    scores = np.asarray(det_scores, np.float64).reshape(-1)
    if not len(boxes) == len(categories) == len(scores):
      raise ValueError(f'image {image_id}: {len(boxes)} detection boxes, '
                       f'{len(categories)} classes, {len(scores)} scores')
    masks = self._masks(det_masks, len(boxes), height, width, 'detection', image_id)
    detections = []
    for box, category, score, rle in zip(boxes, categories, scores, masks):
      detection = {'image_id': image_id, 'category_id': category,
                   'bbox': [float(v) for v in box], 'score': float(score)}
      if rle is not None:
        detection['segmentation'] = rle
      detections.append(detection)

    self._image_ids.add(image_id)
    self._images.append({'id': image_id, 'width': width, 'height': height})
    self._annotations += annotations
    self._detections += detections

  def ground_truth(self) -> dict:
    """The ground truth in the COCO annotation format."""
    return {'info': {'description': 'vision_jax.coco_eval ground truth'},
            'images': list(self._images),
            'categories': [{'id': i, 'name': n}
                           for i, n in zip(self.category_ids, self.category_names)],
            'annotations': list(self._annotations)}

  def detections(self) -> list[dict]:
    """The detections in the COCO results format."""
    return list(self._detections)

  def write(self, outdir: str, split: str) -> tuple[str, str]:
    """Writes `instances_<split>.json` and `detections_<split>.json` into `outdir`;
    returns their paths."""
    os.makedirs(outdir, exist_ok=True)
    gt_path = os.path.join(outdir, f'instances_{split}.json')
    det_path = os.path.join(outdir, f'detections_{split}.json')
    with open(gt_path, 'w') as f:
      json.dump(self.ground_truth(), f)
    with open(det_path, 'w') as f:
      json.dump(self.detections(), f)
    return gt_path, det_path

  def evaluate(self, outdir: str, split: str) -> dict[str, float]:
    """Writes the files (`write`) and scores them: `bbox/AP`, ... and, with masks,
    `segm/AP`, ... (see `evaluate_files`)."""
    iou_types = ('bbox', 'segm') if self.with_masks else ('bbox',)
    return evaluate_files(*self.write(outdir, split), iou_types=iou_types)


def _load_results(ground_truth: coco_api.COCO, detections: list[dict],
                  iou_type: str) -> coco_api.COCO:
  if not detections:  # loadRes([]) fails on anns[0]: an empty results set instead.
    results = coco_api.COCO()
    results.dataset = {'images': ground_truth.dataset['images'],
                       'categories': ground_truth.dataset['categories'],
                       'annotations': []}
    results.createIndex()
    return results
  # loadRes adds fields to what it is given: copies. For masks the box is dropped, so
  # loadRes takes each detection's area from its mask, not its box (as detectron2 does;
  # the size ranges of segm AP are then those of the masks).
  if iou_type == 'segm' and not all('segmentation' in d for d in detections):
    raise ValueError('segm evaluation needs a segmentation (RLE) in every detection')
  drop = ('bbox',) if iou_type == 'segm' else ()
  return ground_truth.loadRes([{k: v for k, v in d.items() if k not in drop}
                               for d in detections])


def evaluate_files(gt_path: str, det_path: str,
                   iou_types: Sequence[str] = ('bbox',)) -> dict[str, float]:
  """COCOeval's summary of a ground-truth file and a results file.

  For `segm`, the detections' boxes are left out (see `_load_results`); rescore the
  masks of a results file with COCOeval the same way.

  Returns:
    `{f'{iou_type}/{name}': value}` for the names of `STATS` (AP at IoU .5:.95, AP50,
    AP75, AP by size, AR with 100 detections per image); -1 where there is no ground
    truth to score (a size range without objects, or no annotations at all).
  """
  with contextlib.redirect_stdout(io.StringIO()):
    ground_truth = coco_api.COCO(gt_path)
    with open(det_path) as f:
      detections = json.load(f)
    metrics = {}
    for iou_type in iou_types:
      results = _load_results(ground_truth, detections, iou_type)
      evaluator = cocoeval.COCOeval(ground_truth, results, iou_type)
      evaluator.evaluate()
      evaluator.accumulate()
      evaluator.summarize()
      metrics.update({f'{iou_type}/{name}': float(evaluator.stats[i])
                      for name, i in STATS.items()})
  return metrics
