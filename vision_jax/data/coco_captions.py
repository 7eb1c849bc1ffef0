r"""Your own captioned images as a TFDS dataset: `coco_captions_json:/path/to/root`.

The layout is COCO's own, so a downloaded COCO 2014 or 2017 unpacks into it as is:

  root/annotations/captions_<split>.json   # one file per split, e.g. captions_train2014.json
  root/<split>/<file_name>                 # that split's images, e.g. root/train2014/x.jpg
  root/images/<file_name>                  # or one folder for all splits, if root/<split>/
                                           # does not exist

Each JSON file is in the COCO captions annotation format,
`{"images": [{"id": 1, "file_name": "x.jpg"}, ...],
  "annotations": [{"image_id": 1, "caption": "a dog on a sofa."}, ...]}`;
the splits are named by the files found (`captions_val2014.json` is split 'val2014').
Images without a caption are left out, with a warning that counts them.

Examples: `image` (the file's own JPEG or PNG bytes, any size; the `decode` and
`resize` pp ops make them uniform), `image/id` (int), `image/filename` and `captions`
(every caption of the image). `metadata['vocabulary']` holds the words of the training
splits' captions (the splits whose name starts with 'train', or all splits if none
does) that occur at least `min_count` times, so `tokenize` and the captioning method
read it as they read the embedded datasets' vocabularies.

The dataset is prepared on first use into `data_dir` (`config.data.data_dir`), or
`root/_prepared` when none is given, under a name that fingerprints the root path, the
JSON files' contents and `min_count`: editing a JSON file prepares it anew. Changing an
image file does not: delete the prepared folder to re-read the images.
"""

import dataclasses
import hashlib
import json
import os
import re
import sys

import numpy as np
import tensorflow_datasets as tfds

from vision_jax.data import text
from vision_jax.data.pipeline import COCO_JSON_PREFIX as PREFIX
from vision_jax.data.pipeline import DatasetNotFoundError

ANNOTATIONS = 'annotations'
SHARED_IMAGES = 'images'
DEFAULT_MIN_COUNT = 5
_JSON_NAME = re.compile(r'^captions_(\w+)\.json$')


@dataclasses.dataclass(eq=False)
class CocoCaptionsJsonConfig(tfds.core.BuilderConfig):
  """Which files to read.

  Attributes:
    root: the dataset's root folder (absolute).
    min_count: the fewest occurrences in the training captions that put a word in the
      vocabulary.
    records: per split, `[(image_id, image path, [captions])]`, read and checked by
      `read_split`; only needed while preparing.
  """
  root: str = ''
  min_count: int = DEFAULT_MIN_COUNT
  records: dict | None = dataclasses.field(default=None, repr=False)


class CocoCaptionsJson(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Captioned images from a folder and COCO captions JSON files (see the module)."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'Captioned images of {self.builder_config.root}.',
        features=tfds.features.FeaturesDict({
            # Shape (None, None, 3): TFDS's own decoding makes grey JPEGs RGB; the
            # pipeline's `decode(channels=3)` does the same.
            'image': tfds.features.Image(shape=(None, None, 3)),
            'image/id': tfds.features.Scalar(dtype=np.int64),
            'image/filename': tfds.features.Text(),
            'captions': tfds.features.Sequence(tfds.features.Text()),
        }),
        disable_shuffling=True,  # The JSON files' order: stable across preparations.
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded.
    records = self.builder_config.records
    if records is None:
      raise ValueError('CocoCaptionsJson is prepared through coco_captions.get_builder')
    vocab_splits = training_splits(records)
    captions = [c for s in vocab_splits for _, _, caps in records[s] for c in caps]
    metadata = text.dataset_metadata({'captions': captions},
                                     min_count=self.builder_config.min_count)
    metadata['vocabulary_splits'] = list(vocab_splits)
    metadata['min_count'] = self.builder_config.min_count
    self.info.metadata.update(metadata)
    return {split: self._generate_examples(rows) for split, rows in records.items()}

  def _generate_examples(self, rows):
    for image_id, path, captions in rows:
      yield image_id, {'image': path, 'image/id': image_id,
                       'image/filename': os.path.basename(path), 'captions': captions}


def training_splits(splits) -> list[str]:
  """The splits the vocabulary is counted on: those named 'train...', else all."""
  train = sorted(s for s in splits if s.startswith('train'))
  return train or sorted(splits)


def annotation_files(root: str) -> dict[str, str]:
  """`{split: path}` of the captions JSON files of `root`."""
  folder = os.path.join(root, ANNOTATIONS)
  names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
  files = {}
  for name in names:
    match = _JSON_NAME.match(name)
    if match:
      files[match.group(1)] = os.path.join(folder, name)
  if not files:
    raise DatasetNotFoundError(
        f'no captions JSON file in {folder}: expected {folder}/captions_<split>.json '
        f'(e.g. captions_train2014.json) beside the image folders root/<split>/')
  return files


def image_folder(root: str, split: str) -> str:
  """`root/<split>`, else the shared `root/images`."""
  for folder in (os.path.join(root, split), os.path.join(root, SHARED_IMAGES)):
    if os.path.isdir(folder):
      return folder
  raise DatasetNotFoundError(
      f'no image folder for split {split!r}: neither {os.path.join(root, split)} nor '
      f'{os.path.join(root, SHARED_IMAGES)} exists')


def _field(entry, key: str, kind, what: str, path: str):
  if not isinstance(entry, dict) or key not in entry:
    raise ValueError(f'{path}: an entry of {what!r} has no {key!r}: {str(entry)[:100]}')
  value = entry[key]
  if not isinstance(value, kind) or isinstance(value, bool):
    raise ValueError(f'{path}: {what}[...].{key} must be {kind.__name__}, got {value!r:.100}')
  return value


def read_split(json_path: str, images: str) -> list[tuple[int, str, list[str]]]:
  """`[(image_id, image path, [captions])]` of one captions JSON file, in its order.

  Raises:
    DatasetNotFoundError: the JSON file or an image file it names is missing.
    ValueError: the file is not JSON, or not in the COCO captions format.
  """
  try:
    with open(json_path, encoding='utf-8') as f:
      data = json.load(f)
  except FileNotFoundError:
    raise DatasetNotFoundError(f'captions file {json_path} does not exist') from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f'captions file {json_path} is not valid JSON: {e}') from None
  if not isinstance(data, dict) or not all(
      isinstance(data.get(k), list) for k in ('images', 'annotations')):
    raise ValueError(f'captions file {json_path} is not in the COCO captions format: it '
                     'needs lists "images" ({"id", "file_name"}) and "annotations" '
                     '({"image_id", "caption"})')
  files, order = {}, []
  for image in data['images']:
    image_id = _field(image, 'id', int, 'images', json_path)
    if image_id in files:
      raise ValueError(f'captions file {json_path}: image id {image_id} appears twice')
    files[image_id] = _field(image, 'file_name', str, 'images', json_path)
    order.append(image_id)
  captions = {i: [] for i in order}
  for annotation in data['annotations']:
    image_id = _field(annotation, 'image_id', int, 'annotations', json_path)
    if image_id not in captions:
      raise ValueError(f'captions file {json_path}: a caption names image id {image_id}, '
                       'which "images" lacks')
    captions[image_id].append(_field(annotation, 'caption', str, 'annotations', json_path))
  rows, uncaptioned = [], 0
  for image_id in order:
    path = os.path.join(images, files[image_id])
    if not os.path.isfile(path):
      raise DatasetNotFoundError(
          f'image file {path} (image id {image_id} of {json_path}) does not exist')
    if captions[image_id]:
      rows.append((image_id, path, [c.strip() for c in captions[image_id]]))
    else:
      uncaptioned += 1
  if uncaptioned:
    print(f'warning: {json_path}: leaving out {uncaptioned} image(s) without a caption',
          file=sys.stderr)
  if not rows:
    raise ValueError(f'captions file {json_path} has no captioned image')
  return rows


def _fingerprint(root: str, files: dict[str, str], min_count: int) -> str:
  digest = hashlib.sha1(root.encode())
  for split, path in sorted(files.items()):
    digest.update(split.encode())
    with open(path, 'rb') as f:
      digest.update(f.read())
  return f'min{min_count}_{digest.hexdigest()[:12]}'


def get_builder(root: str, data_dir: str | None = None, *,
                min_count: int = DEFAULT_MIN_COUNT) -> CocoCaptionsJson:
  """The builder of the captioned images of `root` (see the module for the layout).

  The files are read and checked only when the dataset is not prepared yet; the
  builder returned is then not prepared either (`download_and_prepare()` prepares it,
  which `pipeline.get_builder` does once per data dir).

  Raises:
    DatasetNotFoundError: `root`, its captions files, or an image file is missing.
    ValueError: a captions file is not JSON in the COCO captions format.
  """
  if not root:
    raise DatasetNotFoundError(f'{PREFIX} needs a folder: --config.data.name={PREFIX}'
                               '/path/to/root (root/annotations/captions_<split>.json)')
  root = os.path.abspath(os.path.expanduser(root))
  if not os.path.isdir(root):
    raise DatasetNotFoundError(
        f'captioned image folder {root} does not exist; expected '
        f'root/{ANNOTATIONS}/captions_<split>.json and root/<split>/<image>')
  files = annotation_files(root)
  data_dir = os.path.expanduser(data_dir) if data_dir else os.path.join(root, '_prepared')
  config = CocoCaptionsJsonConfig(name=_fingerprint(root, files, min_count),
                                  root=root, min_count=min_count)
  builder = CocoCaptionsJson(config=config, data_dir=data_dir)
  if not builder.is_prepared():
    config.records = {split: read_split(path, image_folder(root, split))
                      for split, path in files.items()}
  return builder
