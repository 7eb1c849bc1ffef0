"""Data layer: per-process shards, resumable order, masked eval, dataset lookup errors."""

import collections
import itertools
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from vision_jax.data import pipeline

# The module fixture trains a run: one xdist worker takes all of this file's tests,
# so that it trains once.
pytestmark = pytest.mark.xdist_group('test_pipeline')

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


@pytest.fixture
def folder_with_bad_files(tmp_path):
  """test/a/: three good PNGs, a truncated one and a text file named .png."""
  folder = tmp_path / 'test' / 'a'
  os.makedirs(folder)
  for i in range(3):
    Image.fromarray(np.full((4, 4), 50 * i, np.uint8)).save(folder / f'good{i}.png')
  data = (folder / 'good0.png').read_bytes()
  (folder / 'truncated.png').write_bytes(data[:len(data) // 2])
  (folder / 'notes.png').write_text('not an image')
  return tmp_path


def test_undecodable_files_are_named_or_skipped(folder_with_bad_files, capsys):
  builder = pipeline.get_builder(f'folder:{folder_with_bad_files}')
  with pytest.raises(pipeline.UndecodableError,
                     match=r'cannot decode image file .*/test/a/(notes|truncated)\.png'):
    list(pipeline.eval_batches(builder, 'test', batch_size=8, pp=PP))
  batches = list(pipeline.eval_batches(builder, 'test', batch_size=8, pp=PP,
                                       skip_undecodable=True))
  assert [b[pipeline.MASK_KEY].sum() for b in batches] == [3]
  assert sorted(b.mean() for b in batches[0]['image'][:3]) == pytest.approx(
      [0, 50 / 255, 100 / 255])
  assert 'skipping 2 undecodable image file(s)' in capsys.readouterr().err
  ds = pipeline.train_dataset(builder, 'test', batch_size=6, seed=0, pp=PP,
                              skip_undecodable=True)
  assert next(iter(ds.as_numpy_iterator()))['image'].shape == (6, 4, 4, 1)


@pytest.fixture(scope='module')
def tiny_scenes(tmp_path_factory):
  from vision_jax.data import scenes  # pylint: disable=g-import-not-at-top
  config = scenes.ScenesConfig(name='tiny_pipeline', num_train=24, num_validation=4,
                               num_test=10)
  builder = scenes.Scenes(config=config, data_dir=str(tmp_path_factory.mktemp('scenes')))
  builder.download_and_prepare()
  return builder


VQA_PP = ('per_question|decode|value_range(0, 1)|tokenize(12, inkey="question", '
          'outkey="question_tokens")|keep("image", "question_tokens", "question", "answer")')


def test_one_example_per_question_in_eval_with_host_side_texts(tiny_scenes):
  originals = list(tfds.as_numpy(tiny_scenes.as_dataset(split='test')))
  expected = sorted((q, a) for ex in originals for q, a in zip(ex['questions'], ex['answers']))
  assert len(expected) > len(originals)
  seen = []
  for batch in pipeline.eval_batches(tiny_scenes, 'test', batch_size=8, pp=VQA_PP,
                                     keep_on_cpu=('question', 'answer')):
    host = batch[pipeline.HOST_KEY]
    assert batch['question_tokens'].shape == (8, 12) and 'question' not in batch
    for valid, q, a in zip(batch[pipeline.MASK_KEY], host['question'], host['answer']):
      if valid:
        seen.append((q.item(), a.item()))
  assert sorted(seen) == expected


def test_expanded_training_stream_covers_every_pair_and_resumes(tiny_scenes):
  pp = 'per_question|tokenize(12, inkey="question", outkey="q")|keep("q")'
  num_pairs = sum(len(ex['questions']) for ex in tfds.as_numpy(
      tiny_scenes.as_dataset(split='train')))
  batch_size = 4
  steps = num_pairs // batch_size
  stream = pipeline.train_dataset(tiny_scenes, 'train', batch_size=batch_size, seed=1, pp=pp)
  batches = [b['q'] for b in itertools.islice(stream.as_numpy_iterator(), steps + 3)]
  first_epoch = np.concatenate(batches[:steps])
  every_pair = np.concatenate([b['q'][b[pipeline.MASK_KEY]] for b in pipeline.eval_batches(
      tiny_scenes, 'train', batch_size=64, pp=pp)])
  assert len(every_pair) == num_pairs
  # One epoch draws each pair once (less the remainder of a batch): no pair twice.
  assert not collections.Counter(map(bytes, first_epoch)) - collections.Counter(
      map(bytes, every_pair))
  assert len(first_epoch) == num_pairs - num_pairs % batch_size
  resumed = pipeline.train_dataset(tiny_scenes, 'train', batch_size=batch_size, seed=1, pp=pp,
                                   start_step=steps - 1)
  for expected, got in zip(batches[steps - 1:], resumed.as_numpy_iterator()):
    np.testing.assert_array_equal(expected, got['q'])
