"""COCO evaluation: the accumulator's files score as COCOeval scores them directly."""

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools import coco as coco_api
from pycocotools import cocoeval

from vision_jax import coco_eval

NAMES = ('circle', 'square')
IDS = (7, 3)  # not 1, 2: the files must carry the given ids


def random_scene(rng, height, width, count):
  """`count` objects as normalised yxyx boxes, classes and the masks filling them."""
  top = rng.integers(0, height // 2, count)
  left = rng.integers(0, width // 2, count)
  bottom = top + rng.integers(4, height // 2, count)
  right = left + rng.integers(4, width // 2, count)
  masks = np.zeros((count, height, width), bool)
  for i in range(count):
    masks[i, top[i]:bottom[i], left[i]:right[i]] = True
  boxes = np.stack([top / height, left / width, bottom / height, right / width], 1)
  return boxes, rng.integers(0, 2, count), masks


def cocoeval_stats(gt_path, det_path, iou_type='bbox'):
  """COCOeval as its README runs it, on the files."""
  with contextlib.redirect_stdout(io.StringIO()):
    ground_truth = coco_api.COCO(gt_path)
    evaluator = cocoeval.COCOeval(ground_truth, ground_truth.loadRes(det_path), iou_type)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  return evaluator.stats


def test_perfect_predictions_score_one_and_files_load(tmp_path):
  rng = np.random.default_rng(0)
  acc = coco_eval.CocoAccumulator(NAMES, IDS, with_masks=True)
  sizes = [(48, 64), (64, 40), (80, 80)]
  for image_id, (h, w) in zip((11, 12, 13), sizes):
    boxes, classes, masks = random_scene(rng, h, w, 3)
    acc.add(image_id, height=h, width=w, gt_boxes=boxes, gt_classes=classes,
            gt_masks=masks, det_boxes=boxes, det_scores=rng.uniform(0.5, 1, 3),
            det_classes=classes, det_masks=masks)
  metrics = acc.evaluate(str(tmp_path), 'val')
  for iou_type in ('bbox', 'segm'):
    for name in ('AP', 'AP50', 'AP75', 'AR100', 'AP_small', 'AP_medium'):
      assert metrics[f'{iou_type}/{name}'] == pytest.approx(1.0), (iou_type, name)
    assert metrics[f'{iou_type}/AP_large'] == -1  # no object above 96^2 pixels

  ground_truth = coco_api.COCO(str(tmp_path / 'instances_val.json'))
  assert sorted(ground_truth.getImgIds()) == [11, 12, 13]
  assert sorted(ground_truth.getCatIds()) == [3, 7]
  assert ground_truth.loadCats(7)[0]['name'] == 'circle'
  annotation = ground_truth.loadAnns(ground_truth.getAnnIds(imgIds=12))[0]
  assert annotation['id'] >= 1 and annotation['iscrowd'] == 0
  assert annotation['area'] == ground_truth.annToMask(annotation).sum()
  with contextlib.redirect_stdout(io.StringIO()):
    results = ground_truth.loadRes(str(tmp_path / 'detections_val.json'))
  assert len(results.getAnnIds()) == 9


def test_masks_round_trip_through_rle(tmp_path):
  rng = np.random.default_rng(1)
  gt_masks = rng.uniform(size=(2, 30, 20)) < 0.4  # ragged shapes, not boxes
  det_masks = rng.uniform(size=(1, 30, 20)) < 0.4
  acc = coco_eval.CocoAccumulator(NAMES, with_masks=True)
  acc.add(5, height=30, width=20, gt_boxes=np.array([[0, 0, 1, 1], [0, 0, .5, .5]]),
          gt_classes=[0, 1], gt_masks=gt_masks, det_boxes=np.array([[0, 0, 1, 1]]),
          det_scores=[0.5], det_classes=[1], det_masks=det_masks)
  gt_path, det_path = acc.write(str(tmp_path), 'test')
  json.loads(open(gt_path).read())  # plain JSON: counts are str
  ground_truth = coco_api.COCO(gt_path)
  for annotation, mask in zip(ground_truth.loadAnns(ground_truth.getAnnIds()), gt_masks):
    np.testing.assert_array_equal(ground_truth.annToMask(annotation), mask)
  with contextlib.redirect_stdout(io.StringIO()):
    results = ground_truth.loadRes(det_path)
  np.testing.assert_array_equal(results.annToMask(results.loadAnns(1)[0]), det_masks[0])
  # An instance-id map gives the masks of its objects.
  instances = np.zeros((30, 20, 1), np.uint8)
  instances[gt_masks[0]] = 1
  instances[gt_masks[1] & ~gt_masks[0]] = 2
  masks = coco_eval.masks_from_instance_map(instances, 2)
  np.testing.assert_array_equal(masks[0], gt_masks[0])
  np.testing.assert_array_equal(masks[1], gt_masks[1] & ~gt_masks[0])


def test_a_false_positive_above_the_true_one_halves_ap_as_cocoeval_says(tmp_path):
  # Hand-written files: one 40x40 object; a wrong box scores above the right one, so
  # precision is 0.5 at recall 1 and AP 0.5 at every IoU threshold.
  gt = {'images': [{'id': 1, 'width': 100, 'height': 100}],
        'categories': [{'id': 7, 'name': 'circle'}, {'id': 3, 'name': 'square'}],
        'annotations': [{'id': 1, 'image_id': 1, 'category_id': 7, 'bbox': [10, 20, 40, 40],
                         'area': 1600, 'iscrowd': 0}]}
  dets = [{'image_id': 1, 'category_id': 7, 'bbox': [60, 60, 20, 20], 'score': 0.9},
          {'image_id': 1, 'category_id': 7, 'bbox': [10, 20, 40, 40], 'score': 0.8}]
  (tmp_path / 'gt.json').write_text(json.dumps(gt))
  (tmp_path / 'dets.json').write_text(json.dumps(dets))
  direct = cocoeval_stats(str(tmp_path / 'gt.json'), str(tmp_path / 'dets.json'))

  acc = coco_eval.CocoAccumulator(NAMES, IDS)
  acc.add(1, height=100, width=100, gt_boxes=[[0.2, 0.1, 0.6, 0.5]], gt_classes=[0],
          det_boxes=[[0.6, 0.6, 0.8, 0.8], [0.2, 0.1, 0.6, 0.5]], det_scores=[0.9, 0.8],
          det_classes=[0, 0])
  metrics = acc.evaluate(str(tmp_path), 'val')
  for name, i in coco_eval.STATS.items():
    assert metrics[f'bbox/{name}'] == pytest.approx(direct[i]), name
  assert metrics['bbox/AP'] == pytest.approx(0.5) and metrics['bbox/AP75'] == pytest.approx(0.5)
  # 40^2 is 'medium'; the 20x20 false positive is 'small', so AP_medium ignores it.
  assert metrics['bbox/AP_medium'] == pytest.approx(1.0)
  assert metrics['bbox/AP_small'] == -1 and metrics['bbox/AP_large'] == -1
  written = json.loads((tmp_path / 'instances_val.json').read_text())['annotations']
  assert written[0]['bbox'] == pytest.approx([10, 20, 40, 40]) and written[0]['area'] == 1600

  # A detection on a crowd region is neither right nor wrong: the false positive there
  # no longer counts against the true one.
  acc = coco_eval.CocoAccumulator(NAMES, IDS)
  acc.add(1, height=100, width=100, gt_boxes=[[0.2, 0.1, 0.6, 0.5], [0.6, 0.6, 0.8, 0.8]],
          gt_classes=[0, 0], gt_is_crowd=[False, True],
          det_boxes=[[0.6, 0.6, 0.8, 0.8], [0.2, 0.1, 0.6, 0.5]], det_scores=[0.9, 0.8],
          det_classes=[0, 0])
  assert acc.evaluate(str(tmp_path), 'crowd')['bbox/AP'] == pytest.approx(1.0)


def test_zero_detections_score_zero_without_crashing(tmp_path):
  rng = np.random.default_rng(2)
  acc = coco_eval.CocoAccumulator(NAMES, with_masks=True)
  boxes, classes, masks = random_scene(rng, 32, 32, 2)
  acc.add(0, height=32, width=32, gt_boxes=boxes, gt_classes=classes, gt_masks=masks,
          det_boxes=np.zeros((0, 4)), det_scores=[], det_classes=[],
          det_masks=np.zeros((0, 32, 32), bool))
  metrics = acc.evaluate(str(tmp_path), 'val')
  assert json.loads((tmp_path / 'detections_val.json').read_text()) == []
  for iou_type in ('bbox', 'segm'):
    assert metrics[f'{iou_type}/AP'] == 0 and metrics[f'{iou_type}/AR100'] == 0
    # A 32x32 image: every object is small, the other size ranges are empty.
    assert metrics[f'{iou_type}/AP_small'] == 0
    assert metrics[f'{iou_type}/AP_medium'] == -1 and metrics[f'{iou_type}/AP_large'] == -1


def test_bad_additions_are_errors_that_keep_nothing(tmp_path):
  acc = coco_eval.CocoAccumulator(NAMES)
  kwargs = dict(height=10, width=10, gt_boxes=[[0, 0, 1, 1]], gt_classes=[0],
                det_boxes=[[0, 0, 1, 1]], det_scores=[0.5], det_classes=[0])
  with pytest.raises(ValueError, match='detection class 2 is not one of the 2'):
    acc.add(1, **(kwargs | {'det_classes': [2]}))
  assert acc.num_images == 0 and acc.ground_truth()['annotations'] == []
  acc.add(1, **kwargs)
  with pytest.raises(ValueError, match='image id 1 was added twice'):
    acc.add(1, **kwargs)
  with pytest.raises(ValueError, match='masks given'):
    acc.add(2, **kwargs, gt_masks=np.ones((1, 10, 10)))
  with pytest.raises(ValueError, match='2 category ids for 1'):
    coco_eval.CocoAccumulator(['a'], [1, 2])
  with pytest.raises(ValueError, match='segm evaluation needs a segmentation'):
    coco_eval.evaluate_files(*acc.write(str(tmp_path), 'val'), iou_types=('segm',))
