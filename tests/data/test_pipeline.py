"""Data layer: per-process shards, resumable order, masked eval, dataset lookup errors."""

import os

import jax
import numpy as np
import pytest
from PIL import Image

from vision_jax.data import pipeline

PP = 'decode|value_range(0, 1)'


@pytest.fixture(scope='module')
def digits(data_dir):
  return pipeline.get_builder('digits', data_dir)


def _fingerprints(images, labels):
  return sorted(hash((img.tobytes(), int(lab))) for img, lab in zip(images, labels))


def _as_process(monkeypatch, index, count):
  monkeypatch.setattr(jax, 'process_index', lambda: index)
  monkeypatch.setattr(jax, 'process_count', lambda: count)


def test_digits_is_real_and_fixed(digits):
  info = pipeline.dataset_info(digits, 'digits')
  assert info.num_examples == {'train': 1437, 'test': 360}
  assert info.num_classes == 10


@pytest.mark.parametrize('process_count', [1, 3])
@pytest.mark.parametrize('batch_size', [1, 7, 64, 500])
def test_masked_eval_counts_every_example_once(digits, monkeypatch, process_count, batch_size):
  reference = next(pipeline.eval_batches(digits, 'test', batch_size=360, pp=PP))
  seen, batch_counts = [], []
  for index in range(process_count):
    _as_process(monkeypatch, index, process_count)
    batches = list(pipeline.eval_batches(digits, 'test', batch_size=batch_size, pp=PP))
    batch_counts.append(len(batches))
    for batch in batches:
      assert batch['image'].shape[0] == batch_size
      mask = batch[pipeline.MASK_KEY]
      seen += _fingerprints(batch['image'][mask], batch['label'][mask])
  assert len(set(batch_counts)) == 1  # Collectives need equal counts everywhere.
  assert sorted(seen) == _fingerprints(reference['image'], reference['label'])


def test_train_shards_cover_the_split_once_per_epoch(digits, monkeypatch):
  process_count, batch_size = 3, 479  # 1437 = 3 * 479: one epoch is one batch each.
  everything = next(pipeline.eval_batches(digits, 'train', batch_size=1437, pp=PP))
  seen = []
  for index in range(process_count):
    _as_process(monkeypatch, index, process_count)
    ds = pipeline.train_dataset(digits, 'train', batch_size=batch_size, seed=3, pp=PP)
    batch = next(iter(ds.as_numpy_iterator()))
    seen += _fingerprints(batch['image'], batch['label'])
  assert sorted(seen) == _fingerprints(everything['image'], everything['label'])


def test_resumed_stream_equals_uninterrupted_stream(digits):
  pp = PP + '|random_crop(8, pad=2)|flip_lr'
  full = pipeline.train_dataset(digits, 'train', batch_size=100, seed=5, pp=pp)
  batches = [b for _, b in zip(range(30), full.as_numpy_iterator())]
  for start in (1, 14, 29):  # Within the first epoch and across epoch boundaries.
    resumed = pipeline.train_dataset(digits, 'train', batch_size=100, seed=5, pp=pp,
                                     start_step=start)
    first = next(iter(resumed.as_numpy_iterator()))
    np.testing.assert_array_equal(first['image'], batches[start]['image'])
    np.testing.assert_array_equal(first['label'], batches[start]['label'])
  # A different seed gives a different order; epochs are reshuffled.
  other = pipeline.train_dataset(digits, 'train', batch_size=100, seed=6, pp=pp)
  assert not np.array_equal(next(iter(other.as_numpy_iterator()))['label'], batches[0]['label'])
  assert not np.array_equal(batches[0]['label'], batches[15]['label'])


def test_image_folder_grey_and_colour(tmp_path):
  rng = np.random.default_rng(0)
  for split, count in (('train', 6), ('test', 4)):
    for name in ('cat', 'dog'):
      os.makedirs(tmp_path / split / name)
      for i in range(count):
        if i % 2:
          pixels = rng.integers(0, 255, (10, 12), np.uint8)
        else:
          pixels = rng.integers(0, 255, (10, 12, 3), np.uint8)
        Image.fromarray(pixels).save(tmp_path / split / name / f'{i}.png')
  builder = pipeline.get_builder(f'folder:{tmp_path}')
  info = pipeline.dataset_info(builder, 'mine')
  assert info.class_names == ('cat', 'dog') and info.num_examples['test'] == 8
  pp = 'decode(channels=3)|resize(8)|value_range(0, 1)'
  batch = next(iter(pipeline.train_dataset(builder, 'train', batch_size=4, seed=0, pp=pp)
                    .as_numpy_iterator()))
  assert batch['image'].shape == (4, 8, 8, 3)
  gray = next(pipeline.eval_batches(builder, 'test', batch_size=8,
                                    pp='decode(channels=3)|to_gray|value_range(0, 1)'))
  assert gray['image'].shape == (8, 10, 12, 1) and gray[pipeline.MASK_KEY].all()


@pytest.mark.parametrize('name, message', [
    ('no_such_dataset_xyz', 'unknown dataset'),
    ('folder:/does/not/exist', 'image folder /does/not/exist does not exist'),
])
def test_missing_datasets_say_so(name, message, tmp_path):
  with pytest.raises(pipeline.DatasetNotFoundError, match=message):
    pipeline.get_builder(name, str(tmp_path))


def test_unprepared_tfds_dataset_offline_says_where_it_looked(tmp_path, monkeypatch):
  monkeypatch.setattr(pipeline, '_online', lambda: False)
  with pytest.raises(pipeline.DatasetNotFoundError) as error:
    pipeline.get_builder('mnist', str(tmp_path))
  assert str(tmp_path) in str(error.value) and 'folder:' in str(error.value)


def test_missing_split_is_named(digits):
  with pytest.raises(pipeline.DatasetNotFoundError, match="no split 'validation'"):
    pipeline.split_size(digits, 'validation')
