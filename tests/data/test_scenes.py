"""`scenes` and `scenes_video`: annotations agree with pixels, texts are true, data is fixed."""

import ast
import hashlib
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from vision_jax.data import generation
from vision_jax.data import scenes
from vision_jax.data import scenes_language as language
from vision_jax.data import scenes_preview
from vision_jax.data import scenes_reader as reader
from vision_jax.data import scenes_render as render
from vision_jax.data import scenes_video
from vision_jax.data import text

TINY = scenes.ScenesConfig(name='tiny', num_train=60, num_validation=20, num_test=20,
                           held_out=('red circle', 'blue star', 'white square'))
TINY_VIDEO = scenes_video.ScenesVideoConfig(name='tiny', num_train=30, num_validation=10,
                                            num_test=10)


def _prepare(builder_cls, config, data_dir):
  builder = builder_cls(config=config, data_dir=str(data_dir))
  builder.download_and_prepare()
  return builder


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  return _prepare(scenes.Scenes, TINY, tmp_path_factory.mktemp('scenes'))


@pytest.fixture(scope='module')
def examples(tiny):
  return {split: list(tfds.as_numpy(tiny.as_dataset(split=split)))
          for split in tiny.info.splits}


def _all(examples):
  return [ex for split in examples.values() for ex in split]


def _objects(ex):
  return reader.objects_from_features(**ex['objects'])


# ---------------------------------------------------------------- tests


def test_builders_are_registered_with_their_configs(tmp_path):
  builder = lambda name: tfds.builder(name, data_dir=str(tmp_path))  # nothing is prepared
  single = builder('scenes/single')
  assert single.info.features['label'].names[:2] == ['red circle', 'red square']
  assert set(single.builder_config.split_sizes()) == {'train', 'validation', 'test'}
  assert builder('scenes/multi').builder_config.split_sizes()['train'] == 20_000
  assert builder('scenes/multi64').info.features['image'].shape == (64, 64, 3)
  assert builder('scenes/compositional').builder_config.split_sizes()['test_novel'] == 2000
  assert builder('scenes_video').info.features['label'].names == list(scenes_video.MOTIONS)


def test_features_and_splits(tiny, examples):
  assert {k: v.num_examples for k, v in tiny.info.splits.items()} == {
      'train': 60, 'validation': 20, 'test': 20, 'test_novel': 20}
  ex = examples['train'][0]
  assert ex['image'].shape == (32, 32, 3) and ex['image'].dtype == np.uint8
  assert ex['segmentation'].shape == ex['instances'].shape == (32, 32, 1)
  assert len(ex['captions']) == TINY.num_captions
  assert len(ex['questions']) == len(ex['answers']) == TINY.num_questions
  counts = [len(e['objects']['shape']) for e in _all(examples)]
  assert min(counts) == 1 and max(counts) == 4


def test_boxes_are_tight_boxes_of_the_visible_pixels(examples):
  for ex in _all(examples):
    instances = ex['instances'][..., 0]
    assert instances.max() == len(ex['objects']['bbox'])  # every annotated object is visible
    for i, box in enumerate(ex['objects']['bbox'], 1):
      rows, cols = np.nonzero(instances == i)
      tight = np.array([rows.min(), cols.min(), rows.max() + 1, cols.max() + 1]) / 32
      np.testing.assert_allclose(box, tight, atol=1e-6)


def test_segmentation_is_the_class_map_of_the_instances(examples):
  for ex in _all(examples):
    shape_of_instance = np.concatenate([[0], ex['objects']['shape'] + 1])
    np.testing.assert_array_equal(ex['segmentation'], shape_of_instance[ex['instances']])


def test_label_is_the_most_visible_object(examples):
  for ex in _all(examples):
    visible = np.bincount(ex['instances'].ravel())[1:]
    main = np.argmax(visible)
    assert ex['label'] == ex['objects']['color'][main] * 5 + ex['objects']['shape'][main]


def test_a_hidden_object_is_left_out():
  style = render.random_object_style(np.random.default_rng(0), 2, 32, [0, 1])
  style['shape'][:] = [0, 1]  # a circle behind a square
  style['radius'][:] = [3.5, 7.0]

  class SameSpot:  # every layout try puts both at the centre
    def uniform(self, low, high, shape):
      return np.full(shape, 16.0)

  sdfs, keep = render.place_objects(SameSpot(), style, 32)
  assert keep.tolist() == [False, True] and len(sdfs) == 1


def test_every_caption_is_true(examples):
  for ex in _all(examples):
    objects = _objects(ex)
    for caption in ex['captions']:
      reading = reader.read_caption(caption.decode(), objects)
      assert reading.readable and reading.true, (caption, objects)


def test_every_answer_is_right(examples):
  answers = set()
  for ex in _all(examples):
    objects = _objects(ex)
    for question, answer in zip(ex['questions'], ex['answers']):
      assert answer.decode() == reader.answer(question.decode(), objects), question
      assert reader.question_type(question.decode()) in reader.QUESTION_TYPES, question
      answers.add(answer.decode())
  assert answers <= set(scenes.ANSWERS) and {'yes', 'no', 'left', 'zero'} <= answers


def test_texts_vary():
  texts = [t for i in range(40) for t in (lambda ex: ex['captions'] + ex['questions'])(
      scenes.generate_example(TINY, 'train', i))]
  assert len(set(texts)) > 0.8 * len(texts)
  words = {w for t in texts for w in text.split_words(t)}
  assert {'disc', 'box', 'violet', 'big', 'left', 'above', 'how', 'many'} <= words


def test_splits_share_no_image(examples):
  digests = [hashlib.sha1(ex['image'].tobytes()).digest() for ex in _all(examples)]
  assert len(set(digests)) == len(digests)


def test_held_out_pairs_appear_only_in_test_novel(examples):
  held_out = {scenes.CLASS_NAMES.index(name) for name in TINY.held_out}
  for split, exs in examples.items():
    for ex in exs:
      pairs = set(ex['objects']['color'] * 5 + ex['objects']['shape'])
      assert pairs <= held_out if split == 'test_novel' else not pairs & held_out, split


def test_vocabulary_in_metadata(tiny, examples):
  root = os.path.dirname(os.path.dirname(os.path.dirname(tiny.data_dir)))  # root/scenes/tiny/1.0.0
  vocab = scenes.vocabulary(tfds.builder('scenes', config=TINY, data_dir=root))  # read from disk
  assert vocab.tokens[:4] == text.SPECIAL_TOKENS
  for ex in examples['train'][:10]:
    for t in list(ex['captions']) + list(ex['questions']) + list(ex['answers']):
      t = t.decode()
      ids = vocab.encode(t, max_len=40)
      assert vocab.unk_id not in ids and vocab.decode(ids) == t


def test_regeneration_gives_identical_bytes(tiny, tmp_path):
  again = _prepare(scenes.Scenes, TINY, tmp_path)
  files = sorted(f for f in os.listdir(tiny.data_dir) if 'tfrecord' in f or f == 'metadata.json')
  assert len(files) == 5
  for name in files:
    with open(os.path.join(tiny.data_dir, name), 'rb') as a, \
         open(os.path.join(again.data_dir, name), 'rb') as b:
      assert a.read() == b.read(), name


def test_workers_give_what_one_process_gives():
  workers = generation.Workers(count=2, chunk=8)
  try:
    parallel = list(workers.map(scenes.encoded_example, 30, TINY, 'validation'))
  finally:
    workers.close()
  assert parallel == [scenes.encoded_example(TINY, 'validation', i) for i in range(30)]


def test_rotation_is_counterclockwise():
  # A triangle points up at angle 0; turned a quarter counterclockwise it points left.
  # Centred on pixel (15, 15), its tip reaches 8 pixels out, its base 4.
  up = render.object_sdf('triangle', 15.5, 15.5, 6.0, 0.0, 32)
  left = render.object_sdf('triangle', 15.5, 15.5, 6.0, np.pi / 2, 32)
  assert up[9, 15] < 0 < up[21, 15]
  assert left[15, 9] < 0 < left[15, 21]


def _imports(module):
  """The vision_jax.data modules that `module` imports (read from its source)."""
  tree = ast.parse(open(module.__file__).read())
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module == 'vision_jax.data':
      names |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith('vision_jax.data.'):
      names.add(node.module.split('.')[2])
  return names


def test_the_scenes_modules_form_no_cycle():
  assert _imports(render) == set()
  assert _imports(language) == {'scenes_render'}
  assert _imports(generation) == set()
  assert _imports(scenes) == {'generation', 'scenes_language', 'scenes_render', 'text'}
  assert _imports(scenes_video) == {'generation', 'scenes_render', 'text'}
  assert _imports(scenes_preview) == {'scenes', 'scenes_video'}
  assert _imports(reader) == {'scenes_language', 'scenes_render'}


@pytest.mark.parametrize('motion', scenes_video.MOTIONS)
def test_motion_paths(motion):
  path = scenes_video.motion_path(np.random.default_rng(1), motion, 16, 32)
  cx, cy, radius, angle = (path[k] for k in ('cx', 'cy', 'radius', 'angle'))
  steps = {k: np.diff(v) for k, v in path.items()}
  moves = {k for k, d in steps.items() if np.abs(d).max() > 1e-4}
  expected = {'moving left': {'cx'}, 'moving right': {'cx'}, 'moving up': {'cy'},
              'moving down': {'cy'}, 'growing': {'radius'}, 'shrinking': {'radius'},
              'rotating clockwise': {'angle'}, 'rotating counterclockwise': {'angle'},
              'bouncing': {'cy'}, 'circling': {'cx', 'cy'}}[motion]
  assert moves == expected
  sign = {'moving left': ('cx', -1), 'moving right': ('cx', 1), 'moving up': ('cy', -1),
          'moving down': ('cy', 1), 'growing': ('radius', 1), 'shrinking': ('radius', -1),
          'rotating clockwise': ('angle', -1), 'rotating counterclockwise': ('angle', 1)}
  if motion in sign:
    key, direction = sign[motion]
    assert (steps[key] * direction > 0).all()
  if motion == 'bouncing':
    assert (steps['cy'] > 0).any() and (steps['cy'] < 0).any()
  reach = render.SHAPE_EXTENT * radius
  assert (cx - reach >= 0).all() and (cx + reach <= 32).all()
  assert (cy - reach >= 0).all() and (cy + reach <= 32).all()


def test_video_clips(tmp_path):
  builder = _prepare(scenes_video.ScenesVideo, TINY_VIDEO, tmp_path)
  clips = list(tfds.as_numpy(builder.as_dataset(split='train')))
  assert len(clips) == 30
  for clip in clips:
    assert clip['video'].shape == (16, 32, 32, 3) and clip['video'].dtype == np.uint8
    change = np.abs(clip['video'].astype(int) - clip['video'][0]).max(axis=(1, 2, 3))
    assert change.max() > 80  # the actor moves, beyond the pixel noise
    assert clip['caption'].decode().endswith(scenes_video.MOTIONS[clip['label']])
  assert 'bouncing' in scenes.vocabulary(builder).tokens


def test_preview_writes_images(tmp_path):
  scenes_preview.main(['--config', 'single', '--out', str(tmp_path), '--num', '2'])
  scenes_preview.main(['--config', 'video', '--out', str(tmp_path), '--num', '2'])
  assert sorted(os.listdir(tmp_path)) == [
      'scenes_single_train.png', 'scenes_video_train.gif', 'scenes_video_train_frames.png']
