r"""Your own detection data in COCO's format as a TFDS dataset: `coco_json:/path/to/x.json`.

One COCO instances file, with its images beside it:

  /path/to/train.json           # {"images", "annotations", "categories"}, COCO's format
  /path/to/<file_name>          # each image's file_name, relative to the JSON's folder

The file is one split, named by the file: `train.json` is split 'train',
`instances_val2017.json` split 'instances_val2017'; a second file (another
`coco_json:` name, e.g. an evaluator's `data.name`) gives another split.

Examples are shaped like the embedded `scenes` dataset's (the same `image`,
`objects/bbox` and `instances` features; the class is `objects/label`):
  image           the image file's own bytes (any size; `decode(channels=3)` makes
                  uint8 [H, W, 3] of grey and RGBA files too).
  image/id        COCO's image id; `image/filename` its file_name.
  objects         sequence, in the JSON's order: `bbox` (tfds BBox, normalised
                  [ymin, xmin, ymax, xmax]), `label` (the category's index, 0..K-1 in
                  the order of sorted category id; names from the categories),
                  `is_crowd` (COCO's crowd regions) and `id` (the annotation id).
  instances       uint8 [H, W, 1], only when annotations have a `segmentation`
                  (polygons, RLE or uncompressed RLE): 0 = background, i = the pixels
                  of objects[i - 1]. Where masks overlap the smaller object is drawn
                  on top; crowd regions and annotations without a segmentation are
                  not drawn. At most 255 objects per image then.
`metadata['category_ids']` holds the COCO id of each label, to write COCO files back
(`vision_jax.coco_eval`).

Everything is checked before anything is prepared, and bad input is a one-line error
naming the problem: a missing file, an image file that is missing or whose size is
not the JSON's, a box outside its image (a box may overhang by up to 1 pixel, as
rounding in other tools' exports does, and is then clipped), an unknown category or
image id, a malformed segmentation. Each image's header is read for its size.

The dataset is prepared on first use into `data_dir` (`config.data.data_dir`), or
`_prepared` beside the JSON file, under a name that fingerprints the file's path and
contents: editing the JSON prepares it anew. Changing an image file does not: delete
the prepared folder to re-read the images.
"""

import dataclasses
import hashlib
import json
import os
import re

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from vision_jax.data.pipeline import COCO_DETECTION_PREFIX as PREFIX
from vision_jax.data.pipeline import DatasetNotFoundError, UndecodableError

PREPARED = '_prepared'
OVERHANG = 1.0  # pixels a box may reach beyond its image before it is an error
VERSION = '1.0.0'


@dataclasses.dataclass
class Record:
  """One image and its objects, as read and checked from the JSON."""
  image_id: int
  path: str
  file_name: str
  height: int
  width: int
  boxes: list  # [ymin, xmin, ymax, xmax] normalised, of each object
  labels: list[int]
  is_crowd: list[bool]
  ids: list[int]
  segmentations: list  # COCO segmentation (or None) of each object


@dataclasses.dataclass(eq=False)
class CocoJsonConfig(tfds.core.BuilderConfig):
  """What to prepare.

  Attributes:
    path: the JSON file (absolute).
    split: the split's name.
    category_names: the label names, in the order of sorted category id.
    category_ids: the COCO id of each label.
    with_masks: whether the examples get an `instances` map.
    records: the checked images (`read_annotations`); only needed while preparing.
  """
  path: str = ''
  split: str = ''
  category_names: tuple[str, ...] = ()
  category_ids: tuple[int, ...] = ()
  with_masks: bool = False
  records: list | None = dataclasses.field(default=None, repr=False)


class CocoJson(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Boxes and masks from a COCO instances JSON file (see the module)."""

  VERSION = tfds.core.Version(VERSION)

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    features = {
        # Shape (None, None, 3): decoding makes grey or RGBA images RGB.
        'image': tfds.features.Image(shape=(None, None, 3)),
        'image/id': tfds.features.Scalar(dtype=np.int64),
        'image/filename': tfds.features.Text(),
        'objects': tfds.features.Sequence({
            'bbox': tfds.features.BBoxFeature(),
            'label': tfds.features.ClassLabel(names=list(c.category_names)),
            'is_crowd': tfds.features.Scalar(dtype=np.bool_),
            'id': tfds.features.Scalar(dtype=np.int64),
        }),
    }
    if c.with_masks:
      features['instances'] = tfds.features.Image(shape=(None, None, 1),
                                                  encoding_format='png', use_colormap=True)
    return tfds.core.DatasetInfo(
        builder=self, description=f'COCO annotations of {c.path}.',
        features=tfds.features.FeaturesDict(features),
        disable_shuffling=True,  # The JSON file's order: stable across preparations.
        metadata=tfds.core.MetadataDict(category_ids=list(c.category_ids)))

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded.
    if self.builder_config.records is None:
      raise ValueError('CocoJson is prepared through coco_json.get_builder')
    return {self.builder_config.split: self._generate_examples(self.builder_config.records)}

  def _generate_examples(self, records):
    for r in records:
      example = {
          'image': r.path, 'image/id': r.image_id, 'image/filename': r.file_name,
          'objects': {'bbox': np.array(r.boxes, np.float32).reshape(-1, 4),
                      'label': r.labels,
                      'is_crowd': r.is_crowd, 'id': r.ids}}
      if self.builder_config.with_masks:
        example['instances'] = instance_map(r)
      yield r.image_id, example


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
  """A COCO segmentation (polygons, RLE or uncompressed RLE) as a bool [H, W] mask."""
  if isinstance(segmentation, list):  # polygons, merged into one mask
    rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
  elif isinstance(segmentation['counts'], list):
    rle = mask_utils.frPyObjects(segmentation, height, width)
  else:
    rle = segmentation
  return mask_utils.decode(rle).astype(bool)


def instance_map(record: Record) -> np.ndarray:
  """uint8 [H, W, 1]: i on the pixels of object i - 1, smaller objects on top."""
  ids = np.zeros((record.height, record.width), np.uint8)
  masks = [(i, decode_segmentation(s, record.height, record.width))
           for i, s in enumerate(record.segmentations)
           if s is not None and not record.is_crowd[i]]
  for i, mask in sorted(masks, key=lambda item: -item[1].sum()):
    ids[mask] = i + 1
  return ids[..., None]


def _field(entry, key: str, kind: type, what: str, path: str):
  if not isinstance(entry, dict) or key not in entry:
    raise ValueError(f'{path}: an entry of {what!r} has no {key!r}: {str(entry)[:100]}')
  value = entry[key]
  if not isinstance(value, kind) or isinstance(value, bool):
    raise ValueError(f'{path}: {what}[...].{key} must be {kind.__name__}, got {value!r:.100}')
  return value


def _check_segmentation(segmentation, height: int, width: int, where: str) -> None:
  if isinstance(segmentation, list):
    if not segmentation or not all(
        isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and
        all(isinstance(v, (int, float)) for v in p) for p in segmentation):
      raise ValueError(f'{where}: a polygon segmentation must be a list of polygons, each '
                       '[x1, y1, x2, y2, ...] with at least 3 points')
  elif isinstance(segmentation, dict) and isinstance(segmentation.get('counts'), (str, list)):
    if list(segmentation.get('size', ())) != [height, width]:
      raise ValueError(f'{where}: RLE segmentation of size {segmentation.get("size")}, '
                       f'the image is [{height}, {width}]')
  else:
    raise ValueError(f'{where}: segmentation must be polygons or an RLE '
                     f'{{"size", "counts"}}, got {str(segmentation)[:80]}')


def _image_size(path: str, image_id: int, json_path: str) -> tuple[int, int]:
  if not os.path.isfile(path):
    raise DatasetNotFoundError(
        f'image file {path} (image id {image_id} of {json_path}) does not exist')
  try:
    with Image.open(path) as image:
      width, height = image.size
  except (UnidentifiedImageError, OSError) as e:
    raise UndecodableError(f'image file {path} (image id {image_id} of {json_path}) '
                           f'cannot be read as an image: {e}') from None
  return height, width


def read_annotations(json_path: str) -> tuple[list[Record], list[int], list[str]]:
  """`(records, category_ids, category_names)` of a COCO instances file, checked.

  Raises:
    DatasetNotFoundError: the JSON file or an image file it names is missing.
    UndecodableError: an image file is not an image.
    ValueError: the file is not JSON in COCO's format, or an annotation is not
      valid for its image (the message names the annotation and the image).
  """
  try:
    with open(json_path, encoding='utf-8') as f:
      data = json.load(f)
  except FileNotFoundError:
    raise DatasetNotFoundError(f'COCO annotations file {json_path} does not exist') from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f'COCO annotations file {json_path} is not valid JSON: {e}') from None
  if not isinstance(data, dict) or not all(
      isinstance(data.get(k), list) for k in ('images', 'annotations', 'categories')):
    raise ValueError(f'COCO annotations file {json_path} is not in the COCO format: it '
                     'needs lists "images" ({"id", "file_name"}), "annotations" ({"id", '
                     '"image_id", "category_id", "bbox"}) and "categories" ({"id", "name"})')
  categories = {}
  for category in data['categories']:
    category_id = _field(category, 'id', int, 'categories', json_path)
    if category_id in categories:
      raise ValueError(f'{json_path}: category id {category_id} appears twice')
    categories[category_id] = _field(category, 'name', str, 'categories', json_path)
  if not categories:
    raise ValueError(f'COCO annotations file {json_path} has no categories')
  names = sorted(categories.values())
  repeated = sorted({a for a, b in zip(names, names[1:]) if a == b})
  if repeated:
    raise ValueError(f'{json_path}: category names repeat ({", ".join(repeated)}); each '
                     'category needs a name of its own')
  category_ids = sorted(categories)
  label_of = {c: i for i, c in enumerate(category_ids)}

  records, by_id = [], {}
  folder = os.path.dirname(json_path)
  for image in data['images']:
    image_id = _field(image, 'id', int, 'images', json_path)
    if image_id in by_id:
      raise ValueError(f'{json_path}: image id {image_id} appears twice')
    file_name = _field(image, 'file_name', str, 'images', json_path)
    path = os.path.join(folder, file_name)
    height, width = _image_size(path, image_id, json_path)
    if (image.get('height', height), image.get('width', width)) != (height, width):
      raise ValueError(f'{json_path}: image {image_id} ({file_name}) is '
                       f'{image.get("width")}x{image.get("height")} in the JSON but the '
                       f'file is {width}x{height}')
    by_id[image_id] = Record(image_id, path, file_name, height, width, [], [], [], [], [])
    records.append(by_id[image_id])

  ann_ids = set()
  for annotation in data['annotations']:
    ann_id = _field(annotation, 'id', int, 'annotations', json_path)
    if ann_id in ann_ids:
      raise ValueError(f'{json_path}: annotation id {ann_id} appears twice')
    ann_ids.add(ann_id)
    where = f'{json_path}: annotation {ann_id}'
    image_id = _field(annotation, 'image_id', int, 'annotations', json_path)
    if image_id not in by_id:
      raise ValueError(f'{where} names image id {image_id}, which "images" lacks')
    r = by_id[image_id]
    where += f' of image {image_id} ({r.file_name}, {r.width}x{r.height})'
    category_id = _field(annotation, 'category_id', int, 'annotations', json_path)
    if category_id not in label_of:
      raise ValueError(f'{where} has category id {category_id}, not one of the '
                       f'categories {category_ids}')
    bbox = annotation.get('bbox')
    if not (isinstance(bbox, list) and len(bbox) == 4 and
            all(isinstance(v, (int, float)) and np.isfinite(v) for v in bbox)):
      raise ValueError(f'{where}: bbox must be [x, y, width, height], got {bbox!r:.80}')
    x, y, w, h = (float(v) for v in bbox)
    if (w < 0 or h < 0 or x < -OVERHANG or y < -OVERHANG or x + w > r.width + OVERHANG or
        y + h > r.height + OVERHANG):
      raise ValueError(f'{where}: bbox [x, y, width, height] = {bbox} lies outside the '
                       'image')
    box = np.array([y / r.height, x / r.width, (y + h) / r.height, (x + w) / r.width])
    segmentation = annotation.get('segmentation') or None  # box-only exports write []
    if segmentation is not None:
      _check_segmentation(segmentation, r.height, r.width, where)
    r.boxes.append(np.clip(box, 0, 1))
    r.labels.append(label_of[category_id])
    r.is_crowd.append(bool(annotation.get('iscrowd', 0)))
    r.ids.append(ann_id)
    r.segmentations.append(segmentation)

  if any(s is not None for r in records for s in r.segmentations):
    for r in records:
      if len(r.ids) > 255:
        raise ValueError(f'{json_path}: image {r.image_id} ({r.file_name}) has '
                         f'{len(r.ids)} objects; the uint8 instance map holds 255')
  if not records:
    raise ValueError(f'COCO annotations file {json_path} has no images')
  return records, category_ids, [categories[c] for c in category_ids]


def split_name(json_path: str) -> str:
  """The split a JSON file is: its name without '.json', non-word characters as '_'."""
  return re.sub(r'\W', '_', os.path.splitext(os.path.basename(json_path))[0])


def _fingerprint(json_path: str) -> str:
  digest = hashlib.sha1(json_path.encode())
  with open(json_path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return f'{split_name(json_path)}_{digest.hexdigest()[:12]}'


def get_builder(json_path: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """The builder of the COCO instances file `json_path` (see the module).

  A prepared dataset is read back from its folder (its features and label names are
  in it); otherwise the file is read and checked, and the builder returned is not
  prepared (`download_and_prepare()` prepares it, which `pipeline.get_builder` does
  once per data dir).

  Raises:
    DatasetNotFoundError: the JSON file or an image file is missing.
    ValueError: the file is not a valid COCO instances file (see `read_annotations`).
  """
  if not json_path:
    raise DatasetNotFoundError(f'{PREFIX} needs a file: --config.data.name={PREFIX}'
                               '/path/to/annotations.json (images beside it)')
  json_path = os.path.abspath(os.path.expanduser(json_path))
  if not os.path.isfile(json_path):
    raise DatasetNotFoundError(f'COCO annotations file {json_path} does not exist')
  data_dir = (os.path.expanduser(data_dir) if data_dir else
              os.path.join(os.path.dirname(json_path), PREPARED))
  name = _fingerprint(json_path)
  prepared = os.path.join(data_dir, CocoJson.name, name, VERSION)
  if os.path.isfile(os.path.join(prepared, 'dataset_info.json')):
    return tfds.builder_from_directory(prepared)
  records, category_ids, category_names = read_annotations(json_path)
  config = CocoJsonConfig(
      name=name, path=json_path, split=split_name(json_path),
      category_names=tuple(category_names), category_ids=tuple(category_ids),
      with_masks=any(s is not None for r in records for s in r.segmentations),
      records=records)
  return CocoJson(config=config, data_dir=data_dir)
