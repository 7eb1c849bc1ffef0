"""Captioned images from COCO captions JSON files, and vocabularies for datasets without one."""

import collections
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from vision_jax import config_lib, train
from vision_jax.data import coco_captions, pipeline, text

EXPERIMENT = os.path.join(os.path.dirname(__file__), '..', '..', 'experiments',
                          'vision_language', 'caption_coco.py')
SIZES = ((24, 24), (20, 28))  # (height, width), alternating
CAPTIONS = ('A red circle on the left.', 'a red circle near a blue square',
            'A big red circle, a small square.')
SPLITS = {'train2014': (101, 102, 103), 'val2014': (201, 202, 203)}


def write_root(root) -> dict:
  """COCO's layout: 3 train and 3 val PNGs of two sizes, 2 or 3 captions each.

  Returns `{split: {image_id: (file name, (h, w), captions)}}`."""
  os.makedirs(os.path.join(root, 'annotations'))
  expected = {}
  for split, ids in SPLITS.items():
    os.makedirs(os.path.join(root, split))
    images, annotations, expected[split] = [], [], {}
    for k, image_id in enumerate(ids):
      name, size = f'COCO_{split}_{image_id:06d}.png', SIZES[k % 2]
      pixels = np.full((*size, 3), 40 * k, np.uint8)
      Image.fromarray(pixels).save(os.path.join(root, split, name))
      captions = [f'{c} ({split} {image_id})' if i == 0 else c
                  for i, c in enumerate(CAPTIONS[:2 + k % 2])]
      images.append({'id': image_id, 'file_name': name, 'height': size[0]})
      annotations += [{'image_id': image_id, 'id': 10 * image_id + i, 'caption': c}
                      for i, c in enumerate(captions)]
      expected[split][image_id] = (name, size, captions)
    with open(os.path.join(root, 'annotations', f'captions_{split}.json'), 'w') as f:
      json.dump({'info': {}, 'images': images, 'annotations': annotations}, f)
  return expected


@pytest.fixture(scope='module')
def coco_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('coco') / 'root')
  expected = write_root(root)
  pipeline.get_builder(coco_captions.PREFIX + root)  # Prepared once for the module.
  return root, expected


def read_split(builder, split):
  return list(tfds.as_numpy(builder.as_dataset(split, shuffle_files=False)))


def test_prepared_dataset_holds_the_files_captions_and_vocabulary(coco_root):
  root, expected = coco_root
  builder = pipeline.get_builder(coco_captions.PREFIX + root)
  assert builder.data_dir.startswith(os.path.join(root, '_prepared'))
  assert {s: v.num_examples for s, v in builder.info.splits.items()} == {
      'train2014': 3, 'val2014': 3}
  for split, images in expected.items():
    examples = read_split(builder, split)
    assert [int(ex['image/id']) for ex in examples] == list(images)  # the JSON's order
    for ex in examples:
      name, size, captions = images[int(ex['image/id'])]
      assert ex['image/filename'].decode() == name
      assert ex['image'].shape == (*size, 3)  # the original size
      assert [c.decode() for c in ex['captions']] == captions

  # The vocabulary: the words of the training captions seen at least 5 times.
  counts = collections.Counter(w for _, _, captions in expected['train2014'].values()
                               for c in captions for w in text.split_words(c))
  metadata = builder.info.metadata
  assert set(metadata['vocabulary']) == set(text.SPECIAL_TOKENS) | {
      w for w, n in counts.items() if n >= 5}
  assert 'val2014' not in metadata['vocabulary'] and 'circle' in metadata['vocabulary']
  assert metadata['vocabulary_splits'] == ['train2014'] and metadata['min_count'] == 5

  # min_count=1, prepared under a data dir of its own: every training word.
  data_dir = os.path.join(os.path.dirname(root), 'elsewhere')
  other = coco_captions.get_builder(root, data_dir, min_count=1)
  other.download_and_prepare()
  other = coco_captions.get_builder(root, data_dir, min_count=1)
  assert other.data_dir.startswith(data_dir)
  assert set(other.info.metadata['vocabulary']) == set(text.SPECIAL_TOKENS) | set(counts)

  # build-vocab counts the same words as the prepared metadata.
  out = os.path.join(os.path.dirname(root), 'vocab.json')
  text.main(['build-vocab', '--data', coco_captions.PREFIX + root, '--split', 'train2014',
             '--field', 'captions', '--out', out])
  assert text.Vocabulary.load(out).tokens == tuple(metadata['vocabulary'])


def test_an_edited_json_file_is_prepared_anew(coco_root, tmp_path):
  root = str(tmp_path / 'root')
  shutil.copytree(coco_root[0], root, ignore=shutil.ignore_patterns('_prepared'))
  first = pipeline.get_builder(coco_captions.PREFIX + root)
  path = os.path.join(root, 'annotations', 'captions_val2014.json')
  with open(path) as f:
    data = json.load(f)
  data['annotations'][0]['caption'] = 'an edited caption'
  with open(path, 'w') as f:
    json.dump(data, f)
  second = pipeline.get_builder(coco_captions.PREFIX + root)
  assert second.data_dir != first.data_dir
  assert read_split(second, 'val2014')[0]['captions'][0] == b'an edited caption'


def test_one_shared_image_folder_and_images_without_captions(tmp_path, capsys):
  root = str(tmp_path / 'root')
  write_root(root)
  os.rename(os.path.join(root, 'val2014'), os.path.join(root, 'images'))
  shutil.rmtree(os.path.join(root, 'train2014'))
  os.remove(os.path.join(root, 'annotations', 'captions_train2014.json'))
  path = os.path.join(root, 'annotations', 'captions_val2014.json')
  with open(path) as f:
    data = json.load(f)
  data['annotations'] = [a for a in data['annotations'] if a['image_id'] != 202]
  with open(path, 'w') as f:
    json.dump(data, f)
  builder = pipeline.get_builder(coco_captions.PREFIX + root)
  assert [int(ex['image/id']) for ex in read_split(builder, 'val2014')] == [201, 203]
  assert f'{path}: leaving out 1 image(s) without a caption' in capsys.readouterr().err
  # No 'train...' split: the vocabulary counts them all.
  assert builder.info.metadata['vocabulary_splits'] == ['val2014']


def _break(root, split, how):
  path = os.path.join(root, 'annotations', f'captions_{split}.json')
  with open(path) as f:
    data = json.load(f)
  if how == 'corrupt':
    with open(path, 'w') as f:
      f.write(json.dumps(data)[:-20])
    return path
  if how == 'missing image':
    os.remove(os.path.join(root, split, data['images'][1]['file_name']))
    return os.path.join(root, split, data['images'][1]['file_name'])
  if how == 'unknown image id':
    data['annotations'][0]['image_id'] = 999
  elif how == 'not coco':
    data = data['annotations']
  with open(path, 'w') as f:
    json.dump(data, f)
  return path


@pytest.mark.parametrize('how, error, words', [
    ('missing root', pipeline.DatasetNotFoundError, 'does not exist'),
    ('missing json', pipeline.DatasetNotFoundError, 'no captions JSON file'),
    ('missing image', pipeline.DatasetNotFoundError, 'does not exist'),
    ('unknown image id', ValueError, 'names image id 999'),
    ('corrupt', ValueError, 'is not valid JSON'),
    ('not coco', ValueError, 'not in the COCO captions format'),
])
def test_bad_input_is_a_one_line_error_naming_the_file(tmp_path, how, error, words):
  root = str(tmp_path / 'root')
  if how == 'missing root':
    named = root
  else:
    write_root(root)
    if how == 'missing json':
      shutil.rmtree(os.path.join(root, 'annotations'))
      named = os.path.join(root, 'annotations')
    else:
      named = _break(root, 'train2014', how)
  with pytest.raises(error) as info:
    pipeline.get_builder(coco_captions.PREFIX + root)
  message = str(info.value)
  assert words in message and named in message and '\n' not in message, message
  assert not os.path.exists(os.path.join(root, '_prepared', 'coco_captions_json'))


def test_no_folder_named_says_how_to_name_one():
  with pytest.raises(pipeline.DatasetNotFoundError, match='coco_captions_json:/path'):
    pipeline.get_builder(coco_captions.PREFIX)


# Both runs compile the same steps (same vocabulary size, shapes and schedule), so the
# second finds them in the session's compilation cache.
FAST = {'batch_size': '8', 'total_steps': '2', 'captioning.beam_size': '1'}


def _local_json_config(root, **overrides):
  config = config_lib.load_config(EXPERIMENT + ':local,data=json')
  config_lib.apply_overrides(config, {'data.name': coco_captions.PREFIX + root,
                                      **FAST, **overrides})
  return config


def test_caption_coco_trains_and_evaluates_on_the_json_dataset(coco_root, tmp_path):
  root, expected = coco_root
  config = _local_json_config(root)
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['val/num_examples'] == 3
  for name in ('bleu1', 'bleu4', 'cider'):
    assert 0 <= results[f'val/{name}'] <= (10 if name == 'cider' else 1), name
  outdir = tmp_path / 'run' / 'val'
  captions = json.loads((outdir / 'captions_val2014.json').read_text())
  assert sorted(c['image_id'] for c in captions) == list(SPLITS['val2014'])  # COCO's ids
  references = json.loads((outdir / 'references_val2014.json').read_text())
  by_image = collections.defaultdict(list)
  for annotation in references['annotations']:
    by_image[annotation['image_id']].append(annotation['caption'])
  assert dict(by_image) == {i: v[2] for i, v in expected['val2014'].items()}


# ------------------------------------------- a dataset without a vocabulary (TFDS coco_captions)

class TinyCocoKarpathy(tfds.core.GeneratorBasedBuilder):
  """TFDS coco_captions' features and splits, and like it no vocabulary in its metadata."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(encoding_format='png'),
        'image/id': np.int64,
        'captions': tfds.features.Sequence({'text': tfds.features.Text(), 'id': np.int64}),
    }), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split, first)
            for split, first in (('train', 0), ('restval', 10), ('test', 20))}

  def _generate_examples(self, split, first):
    del split
    for i in range(first, first + 2):
      captions = [{'text': f'{c} {i}', 'id': 100 * i + k} for k, c in enumerate(CAPTIONS)]
      yield i, {'image': np.full((20 + i % 2 * 8, 24, 3), 10 * i, np.uint8), 'image/id': i,
                'captions': captions}


@pytest.fixture(scope='module')
def karpathy_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  tfds.builder('tiny_coco_karpathy', data_dir=data_dir).download_and_prepare()
  return data_dir


def test_build_vocab_counts_the_training_words(karpathy_dir, tmp_path, capsys):
  vocab_path = str(tmp_path / 'vocab.json')
  text.main(['build-vocab', '--data', 'tiny_coco_karpathy', '--data_dir', karpathy_dir,
             '--split', 'train+restval', '--field', 'captions/text', '--min_count', '1',
             '--out', vocab_path])
  words = set(text.Vocabulary.load(vocab_path).tokens)
  assert {'0', '11', 'circle', ','} <= words and '20' not in words  # test's words are not
  assert 'words with at least 1 occurrences' in capsys.readouterr().out
  with pytest.raises(SystemExit, match="no feature 'caption'"):
    text.main(['build-vocab', '--data', 'tiny_coco_karpathy', '--data_dir', karpathy_dir,
               '--field', 'caption', '--out', vocab_path])


def test_data_vocabulary_gives_a_dataset_without_one_its_words(
    karpathy_dir, coco_root, tmp_path, capsys):
  metadata = pipeline.get_builder('tiny_coco_karpathy', karpathy_dir).info.metadata
  assert 'vocabulary' not in (metadata or {})
  # Any word list will do; this one has the size the JSON run compiled for.
  vocab_path = str(tmp_path / 'vocab.json')
  words = pipeline.get_builder(coco_captions.PREFIX + coco_root[0]).info.metadata['vocabulary']
  text.Vocabulary(words).save(vocab_path)

  args = ['--workdir', str(tmp_path / 'run'), '--config', EXPERIMENT + ':local,data=tfds',
          '--config.data.name=tiny_coco_karpathy', f'--config.data.data_dir={karpathy_dir}',
          *(f'--config.{k}={v}' for k, v in FAST.items())]
  # Without a vocabulary: a one-line error that says which field gives one.
  assert train.main(args) == 2
  error = capsys.readouterr().err
  assert 'data.pp_train' in error and 'data.vocabulary' in error
  assert error.count('\n') == 1 and not (tmp_path / 'run').exists()

  assert train.main(args + [f'--config.data.vocabulary={vocab_path}']) == 0
  captions = json.loads((tmp_path / 'run' / 'test' / 'captions_test.json').read_text())
  assert sorted(c['image_id'] for c in captions) == [20, 21]
  # The evaluators' builders of the same dataset get the vocabulary too.
  assert 'circle' in pipeline.get_builder('tiny_coco_karpathy', karpathy_dir).info.metadata[
      'vocabulary']

  not_a_list = tmp_path / 'bad.json'
  not_a_list.write_text('{"a": 1}')
  assert train.main(args + [f'--config.data.vocabulary={not_a_list}']) == 2
  assert 'data.vocabulary' in capsys.readouterr().err


@pytest.mark.parametrize('arg', ['', ':data=json'])
def test_full_recipe_is_the_documented_one_and_its_parts_fit(arg, karpathy_dir, coco_root,
                                                             tmp_path):
  config = config_lib.load_config(EXPERIMENT + arg)
  assert (config.batch_size, config.total_epochs, config.lr) == (256, 30, 3e-4)
  assert config.optimizer.name == 'adamw' and config.captioning.beam_size == 3
  assert dict(config.model.encoder) == {'name': 'resnet', 'depth': 50}
  assert config.model.grid_key == 'stage4'
  assert (config.model.width, config.model.num_layers, config.model.num_heads) == (512, 3, 8)
  (name, evaluator), = config.evals.items()
  assert evaluator.image_id_key == 'image/id'
  assert (config.data.train_split, name, evaluator.data.split) == (
      ('train+restval', 'test', 'test') if not arg else ('train2014', 'val', 'val2014'))

  # The full recipe's preprocessing on the stand-ins (the same features), at 224x224.
  data = config_lib.complete({}, config.data, 'data')
  if arg:
    data.name, split = coco_captions.PREFIX + coco_root[0], 'val2014'
  else:
    vocab_path = str(tmp_path / 'vocab.json')
    text.Vocabulary(['a', 'red', 'circle']).save(vocab_path)
    data.name, data.data_dir, data.vocabulary, split = (
        'tiny_coco_karpathy', karpathy_dir, vocab_path, 'test')
  builder, _, _ = pipeline.training_builder(data)
  batch = next(pipeline.eval_batches(builder, split, batch_size=2, pp=data.pp_train))
  assert batch['image'].shape == (2, 224, 224, 3) and batch['tokens'].shape == (2, 22)
  vocab = text.from_metadata(builder.info.metadata)
  assert vocab.decode(batch['tokens'][0]).startswith('a red circle')
  batch = next(pipeline.eval_batches(builder, split, batch_size=2, pp=evaluator.pp,
                                     keep_on_cpu=evaluator.keep_on_cpu))
  assert batch['image'].shape == (2, 224, 224, 3)
  assert len(batch['_host']['references'][0]) in (2, 3)

  # ResNet-50's stage4 at 224x224 is a 7x7 grid, projected to the decoder's width.
  import jax  # pylint: disable=g-import-not-at-top
  from vision_jax.methods import get_method_class  # pylint: disable=g-import-not-at-top
  method = get_method_class('captioning')(config, pipeline.dataset_info(builder, data.name),
                                          total_steps=10, steps_per_epoch=1)
  example = method.synthetic_batch(1, config.data.input_shape, np.random.default_rng(0))
  variables = jax.eval_shape(method.init_variables, jax.random.key(0), example)
  memory = jax.eval_shape(lambda v, x: method.model.apply(v, x, method='encode'),
                          variables, example['image'])
  assert memory.shape == (1, 49, 512)
