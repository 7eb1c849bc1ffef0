"""Detection data in COCO's format: `coco_json:/path/to/annotations.json`."""

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from pycocotools import coco as coco_api
from pycocotools import mask as mask_utils

from vision_jax.data import coco_json, pipeline

SIZES = {1: (24, 32), 2: (20, 20), 3: (16, 24)}  # image id: (height, width)


def _rle(mask, compressed=True):
  if compressed:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {'size': list(rle['size']), 'counts': rle['counts'].decode()}
  runs, flat, value = [], mask.T.ravel(), 0  # COCO's uncompressed RLE: column-major runs
  for start in range(len(flat) + 1):
    if start == len(flat) or flat[start] != value:
      runs.append(start - sum(runs))
      value = 1 - value
  return {'size': list(mask.shape), 'counts': runs}


def write_dataset(folder, name='train.json', segmentations=True) -> str:
  """Three PNGs (one in a sub-folder, one without objects) and their annotations:
  a polygon on top of a larger RLE mask, an uncompressed RLE, a crowd region and a
  box without a mask."""
  os.makedirs(os.path.join(folder, 'sub'), exist_ok=True)
  files = {1: 'a.png', 2: 'sub/b.png', 3: 'c.png'}
  for image_id, (h, w) in SIZES.items():
    Image.fromarray(np.full((h, w, 3), 30 * image_id, np.uint8)).save(
        os.path.join(folder, files[image_id]))
  big = np.zeros(SIZES[1], bool)
  big[1:20, 0:30] = True
  small = np.zeros(SIZES[2], bool)
  small[5:15, 5:15] = True
  crowd = np.zeros(SIZES[2], bool)
  crowd[0:5, 0:5] = True
  annotations = [
      {'id': 11, 'image_id': 1, 'category_id': 9, 'bbox': [4, 2, 10, 8], 'iscrowd': 0,
       'segmentation': [[4, 2, 14, 2, 14, 10, 4, 10]]},
      {'id': 12, 'image_id': 1, 'category_id': 2, 'bbox': [0, 1, 30, 19], 'iscrowd': 0,
       'segmentation': _rle(big)},
      {'id': 13, 'image_id': 2, 'category_id': 2, 'bbox': [5, 5, 10, 10.5],
       'segmentation': _rle(small, compressed=False)},
      {'id': 14, 'image_id': 2, 'category_id': 9, 'bbox': [0, 0, 5, 5], 'iscrowd': 1,
       'segmentation': _rle(crowd)},
      {'id': 15, 'image_id': 2, 'category_id': 9, 'bbox': [12, 0, 8, 20], 'segmentation': []},
  ]
  if not segmentations:
    for annotation in annotations:
      annotation.pop('segmentation')
  data = {'images': [{'id': i, 'file_name': files[i], 'height': h, 'width': w}
                     for i, (h, w) in SIZES.items()],
          'annotations': annotations,
          'categories': [{'id': 9, 'name': 'square'}, {'id': 2, 'name': 'circle'}]}
  path = os.path.join(folder, name)
  with open(path, 'w') as f:
    json.dump(data, f)
  return path


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  path = write_dataset(str(tmp_path_factory.mktemp('coco')))
  return path, pipeline.get_builder(coco_json.PREFIX + path)


def test_prepared_examples_hold_the_boxes_labels_and_instance_maps(dataset):
  path, builder = dataset
  assert builder.data_dir.startswith(os.path.join(os.path.dirname(path), '_prepared'))
  assert {s: v.num_examples for s, v in builder.info.splits.items()} == {'train': 3}
  objects = builder.info.features['objects']
  assert objects['label'].names == ['circle', 'square']  # by sorted category id: 2, 9
  assert builder.info.metadata['category_ids'] == [2, 9]
  examples = list(tfds.as_numpy(builder.as_dataset('train', shuffle_files=False)))
  assert [int(ex['image/id']) for ex in examples] == [1, 2, 3]  # the JSON's order
  assert [ex['image/filename'].decode() for ex in examples] == ['a.png', 'sub/b.png', 'c.png']
  for ex, (h, w) in zip(examples, SIZES.values()):
    assert ex['image'].shape == (h, w, 3) and ex['image'].dtype == np.uint8
    assert ex['instances'].shape == (h, w, 1)
  one, two, three = (ex['objects'] for ex in examples)
  np.testing.assert_allclose(one['bbox'], [[2 / 24, 4 / 32, 10 / 24, 14 / 32],
                                           [1 / 24, 0, 20 / 24, 30 / 32]], rtol=1e-6)
  np.testing.assert_allclose(two['bbox'][0], [0.25, 0.25, 15.5 / 20, 0.75], rtol=1e-6)
  assert one['label'].tolist() == [1, 0] and two['label'].tolist() == [0, 1, 1]
  assert two['is_crowd'].tolist() == [False, True, False] and two['id'].tolist() == [13, 14, 15]
  assert three['bbox'].shape == (0, 4)

  # The masks as pycocotools decodes them; the smaller object drawn on top.
  reference = coco_api.COCO(path)
  mask = lambda ann_id: reference.annToMask(reference.loadAnns(ann_id)[0]).astype(bool)
  expected = np.zeros(SIZES[1], np.uint8)
  expected[mask(12)] = 2
  expected[mask(11)] = 1
  assert mask(11).sum() == 80 and (expected == 2).sum() == mask(12).sum() - 80
  np.testing.assert_array_equal(examples[0]['instances'][..., 0], expected)
  # Image 2: its uncompressed RLE; neither the crowd region nor the box without a mask.
  np.testing.assert_array_equal(examples[1]['instances'][..., 0], mask(13).astype(np.uint8))
  assert not examples[2]['instances'].any()

  # Prepared: read back from its folder, with the same features.
  again = pipeline.get_builder(coco_json.PREFIX + path)
  assert again.is_prepared() and again.data_dir == builder.data_dir
  assert again.info.features['objects']['label'].names == ['circle', 'square']


def test_batches_through_the_pipeline_with_boxes_and_maps_moved_together(dataset):
  _, builder = dataset
  pp = ("decode|flip_lr(label_maps=('instances',), boxes=('objects/bbox',))|"
        "resize(16, label_maps=('instances',))|pad_sequence(4, 'objects')")
  batch = next(pipeline.eval_batches(builder, 'train', batch_size=4, pp=pp))
  assert batch['image'].shape == (4, 16, 16, 3) and batch['instances'].shape == (4, 16, 16, 1)
  assert batch['objects/bbox'].shape == (4, 4, 4)
  assert batch['objects_mask'].sum(1).tolist() == [2, 3, 0, 0]
  assert batch['_mask'].tolist() == [True, True, True, False]


def test_without_segmentations_there_is_no_instance_map(tmp_path):
  path = write_dataset(str(tmp_path), 'val2017.json', segmentations=False)
  builder = pipeline.get_builder(coco_json.PREFIX + path)
  assert list(builder.info.splits) == ['val2017'] and 'instances' not in builder.info.features


def _break(folder, how):
  path = write_dataset(folder)
  with open(path) as f:
    data = json.load(f)
  named = path
  if how == 'missing json':
    os.remove(path)
  elif how == 'corrupt':
    with open(path, 'w') as f:
      f.write(json.dumps(data)[:-20])
    return path
  elif how == 'missing image':
    os.remove(os.path.join(folder, 'sub', 'b.png'))
    named = os.path.join(folder, 'sub', 'b.png')
  elif how == 'box outside':
    data['annotations'][2]['bbox'] = [5, 5, 10, 17]  # y + h = 22 > 20 + 1
    named = 'annotation 13 of image 2 (sub/b.png'
  elif how == 'unknown category':
    data['annotations'][0]['category_id'] = 5
    named = 'annotation 11 of image 1 (a.png'
  elif how == 'wrong size':
    data['images'][0]['width'] = 33
    named = 'image 1 (a.png)'
  elif how == 'bad segmentation':
    data['annotations'][1]['segmentation']['size'] = [10, 10]
    named = 'annotation 12 of image 1'
  elif how == 'not coco':
    data = data['annotations']
  elif how == 'repeated names':
    data['categories'][0]['name'] = 'circle'
  if how != 'missing json':
    with open(path, 'w') as f:
      json.dump(data, f)
  return path, named


@pytest.mark.parametrize('how, error, words', [
    ('missing json', pipeline.DatasetNotFoundError, 'does not exist'),
    ('corrupt', ValueError, 'is not valid JSON'),
    ('not coco', ValueError, 'not in the COCO format'),
    ('missing image', pipeline.DatasetNotFoundError, 'does not exist'),
    ('box outside', ValueError, 'lies outside the image'),
    ('unknown category', ValueError, 'category id 5, not one of the categories [2, 9]'),
    ('wrong size', ValueError, 'is 33x24 in the JSON but the file is 32x24'),
    ('bad segmentation', ValueError, 'RLE segmentation of size [10, 10]'),
    ('repeated names', ValueError, 'category names repeat (circle)'),
])
def test_bad_input_is_a_one_line_error_naming_the_problem(tmp_path, how, error, words):
  folder = str(tmp_path)
  result = _break(folder, how)
  path, named = result if isinstance(result, tuple) else (result, result)
  with pytest.raises(error) as info:
    pipeline.get_builder(coco_json.PREFIX + path)
  message = str(info.value)
  assert words in message and named in message and '\n' not in message, message
  assert not os.path.exists(os.path.join(folder, '_prepared'))


def test_no_file_named_says_how_to_name_one():
  with pytest.raises(pipeline.DatasetNotFoundError, match='coco_json:/path/to/annotations'):
    pipeline.get_builder(coco_json.PREFIX)
