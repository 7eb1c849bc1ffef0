"""Preprocessing ops: keys, joint geometry, views, SimCLR colour ops, text, expansion, video."""

import numpy as np
import pytest
import scipy.ndimage
import tensorflow as tf

from vision_jax.data import generation
from vision_jax.data import ops_color
from vision_jax.data import preprocess
from vision_jax.data import text


def _seed(i=0):
  return tf.constant([7, i], tf.int64)


def _run(spec, example, seed=0, metadata=None):
  out = preprocess.parse(spec, metadata)({**example, preprocess.RNG_KEY: _seed(seed)})
  return tf.nest.map_structure(lambda x: x.numpy(), out)


def _coordinates(height, width):
  """uint8 image whose channels are row + 1, column + 1 and 0: pixels say where they were."""
  rows, cols = np.mgrid[:height, :width]
  return np.stack([rows + 1, cols + 1, np.zeros_like(rows)], -1).astype(np.uint8)


def _scene(height=16, width=20):
  """An image with two label maps and three boxes, which the maps and image encode."""
  segmentation = np.zeros((height, width, 1), np.uint8)
  boxes = np.array([[2, 2, 6, 8], [8, 10, 15, 19], [1, 12, 4, 16]], np.float32)
  for i, (y0, x0, y1, x1) in enumerate(boxes.astype(int), 1):
    segmentation[y0:y1, x0:x1] = i
  return {
      'image': tf.constant(np.repeat(segmentation * 40, 3, -1)),
      'segmentation': tf.constant(segmentation),
      'instances': tf.constant(segmentation * 2),
      'objects': {'bbox': tf.constant(boxes / np.float32([height, width] * 2)),
                  'shape': tf.constant([3, 1, 4], tf.int64),
                  'color': tf.constant([0, 5, 2], tf.int64)},
  }


JOINT = 'label_maps=("segmentation", "instances"), boxes=("objects/bbox",)'


# ----------------------------------------------------------------------------- parsing, keys


def test_unknown_ops_and_bad_arguments_are_one_line_errors():
  for spec, message in (('decode|no_such_op', "unknown preprocessing op 'no_such_op'"),
                        ('flip_lr(no_such_arg=1)', "bad arguments for preprocessing op"),
                        ('resize(32', 'cannot parse')):
    with pytest.raises(ValueError, match=message) as error:
      preprocess.parse(spec)
    assert '\n' not in str(error.value)


def test_inkey_outkey_and_key():
  image = tf.constant(np.full((2, 2, 3), 255, np.uint8))
  out = _run('value_range(0, 1, inkey="image", outkey="scaled")', {'image': image})
  assert out['image'].dtype == np.uint8 and (out['scaled'] == 1.0).all()
  out = _run('copy("image", "other")|value_range(0, 2, key="other")', {'image': image})
  assert out['image'].dtype == np.uint8 and (out['other'] == 2.0).all()
  out = _run('copy("image", "objects/picture")', {'image': image, 'objects': {'a': image}})
  assert set(out['objects']) == {'a', 'picture'}  # a path writes into the nested dict


def test_flip_moves_boxes_and_maps_together():
  scene = _scene()
  out = _run(f'flip_lr(prob=1.0, {JOINT})', scene)
  ymin, xmin, ymax, xmax = scene['objects']['bbox'].numpy().T
  np.testing.assert_allclose(out['objects']['bbox'],
                             np.stack([ymin, 1 - xmax, ymax, 1 - xmin], 1), atol=1e-6)
  np.testing.assert_array_equal(out['segmentation'], scene['segmentation'].numpy()[:, ::-1])
  np.testing.assert_array_equal(out['image'], scene['image'].numpy()[:, ::-1])
  same = _run(f'flip_lr(prob=0.0, {JOINT})', scene)
  np.testing.assert_array_equal(same['objects']['bbox'], scene['objects']['bbox'])


def test_flip_draws_one_coin_for_image_maps_and_boxes():
  scene = _scene()
  flips = set()
  for seed in range(12):
    out = _run(f'flip_lr({JOINT})', scene, seed)
    flipped = bool((out['image'] != scene['image'].numpy()).any())
    assert flipped == bool((out['segmentation'] != scene['segmentation'].numpy()).any())
    np.testing.assert_array_equal(out['image'][..., 0], out['segmentation'][..., 0] * 40)
    flips.add(flipped)
  assert flips == {True, False}


def test_crops_move_boxes_by_the_crop_offset():
  height, width = 16, 20
  boxes = np.array([[0.25, 0.25, 0.75, 0.5]], np.float32)
  example = {'image': tf.constant(_coordinates(height, width)),
             'objects/bbox': tf.constant(boxes)}  # the flat form
  for seed in range(5):
    out = _run('random_crop((10, 12), pad=2, boxes="objects/bbox")', example, seed)
    pixel = out['image'][5, 5].astype(int)
    top, left = pixel[0] - 1 - 5, pixel[1] - 1 - 5  # in the unpadded image (may be < 0)
    pixels = boxes * [height, width, height, width] - [top, left, top, left]
    expected = np.clip(pixels / [10, 12, 10, 12], 0, 1)
    np.testing.assert_allclose(out['objects/bbox'], expected, atol=1e-5)
  out = _run('central_crop(8, boxes="objects/bbox")', example)
  assert out['image'][0, 0, 0] - 1 == 4 and out['image'][0, 0, 1] - 1 == 6
  np.testing.assert_allclose(out['objects/bbox'], [[0, 0, 1, 4 / 8]], atol=1e-6)


def test_boxes_cut_away_are_dropped_with_their_labels_and_cut_ones_clipped():
  scene = _scene()  # boxes in pixels: [2,2,6,8], [8,10,15,19], [1,12,4,16]
  out = _run(f'central_crop(8, {JOINT})', scene)  # rows 4..12, columns 6..14
  np.testing.assert_array_equal(out['objects']['shape'], [3, 1])
  np.testing.assert_array_equal(out['objects']['color'], [0, 5])
  np.testing.assert_allclose(out['objects']['bbox'],
                             [[0, 0, 2 / 8, 2 / 8], [4 / 8, 4 / 8, 1, 1]], atol=1e-6)
  # The kept boxes are still the boxes of what the maps show.
  for i, box in zip((1, 2), out['objects']['bbox']):
    rows, cols = np.nonzero(out['segmentation'][..., 0] == i)
    np.testing.assert_allclose(box, [rows.min() / 8, cols.min() / 8, (rows.max() + 1) / 8,
                                     (cols.max() + 1) / 8], atol=1e-6)


def test_instance_maps_are_renumbered_when_a_crop_drops_objects():
  scene = _scene()
  # The object the crop drops first: objects (3, 1, 2) of `_scene`, ids in that order.
  order = [2, 0, 1]
  scene['objects'] = {k: tf.gather(v, order) for k, v in scene['objects'].items()}
  scene['instances'] = tf.constant(np.array([0, 2, 3, 1], np.uint8)[
      scene['segmentation'].numpy()])
  joint = 'instance_maps=("instances",), boxes=("objects/bbox",)'
  out = _run(f'central_crop(8, {joint})', scene)
  np.testing.assert_array_equal(out['objects']['shape'], [3, 1])
  assert set(np.unique(out['instances'])) == {0, 1, 2}
  for i, box in enumerate(out['objects']['bbox'], 1):  # id i is the i-th kept object
    rows, cols = np.nonzero(out['instances'][..., 0] == i)
    np.testing.assert_allclose(box, [rows.min() / 8, cols.min() / 8, (rows.max() + 1) / 8,
                                     (cols.max() + 1) / 8], atol=1e-6)
  flipped = _run(f'flip_lr(prob=1.0, {joint})', scene)
  np.testing.assert_array_equal(flipped['instances'], scene['instances'].numpy()[:, ::-1])
  with pytest.raises(ValueError, match='instance_maps need the one boxes key'):
    _run('flip_lr(instance_maps=("instances",))', scene)


def test_label_maps_stay_integer_and_aligned_through_resizing_crops():
  scene = _scene()
  values = set(np.unique(scene['segmentation']))
  for seed in range(6):
    out = _run(f'random_resized_crop(12, method="nearest", area_min=0.3, {JOINT})',
               scene, seed)
    assert out['segmentation'].dtype == np.uint8 and out['segmentation'].shape == (12, 12, 1)
    np.testing.assert_array_equal(out['image'][..., 0], out['segmentation'][..., 0] * 40)
    np.testing.assert_array_equal(out['instances'], out['segmentation'] * 2)
    out = _run(f'random_resized_crop(12, {JOINT})|resize(7, {JOINT})', scene, seed)
    assert set(np.unique(out['segmentation'])) <= values  # nearest: no blended labels
    assert out['image'].dtype == np.uint8 and out['instances'].shape == (7, 7, 1)


def test_two_views_are_independent_and_reproducible():
  image = tf.constant(np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8))
  spec = ('copy("image", "view1")|copy("image", "view2")|'
          'simclr_augment(16, key="view1")|simclr_augment(16, key="view2")')
  first, again = _run(spec, {'image': image}, 3), _run(spec, {'image': image}, 3)
  assert first['view1'].shape == first['view2'].shape == (16, 16, 3)
  assert not np.array_equal(first['view1'], first['view2'])
  np.testing.assert_array_equal(first['view1'], again['view1'])
  np.testing.assert_array_equal(first['view2'], again['view2'])
  assert not np.array_equal(first['view1'], _run(spec, {'image': image}, 4)['view1'])


# ----------------------------------------------------------------------------- colour


def test_jitter_at_strength_zero_is_the_identity():
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (8, 8, 3), np.uint8)
  for seed in range(4):
    out = _run('color_jitter(0.0, prob=1.0)', {'image': tf.constant(image)}, seed)
    np.testing.assert_array_equal(out['image'], image)
  floats = rng.random((8, 8, 3), np.float32)
  out = _run('color_jitter(0.0, prob=1.0)', {'image': tf.constant(floats)})
  np.testing.assert_allclose(out['image'], floats, atol=1e-5)
  changed = _run('color_jitter(1.0, prob=1.0)', {'image': tf.constant(floats)})
  assert np.abs(changed['image'] - floats).max() > 0.05
  assert changed['image'].min() >= 0 and changed['image'].max() <= 1


def test_grayscale_has_equal_channels():
  image = tf.constant(np.random.default_rng(2).integers(0, 256, (6, 6, 3), np.uint8))
  out = _run('random_grayscale(prob=1.0)', {'image': image})['image']
  assert out.shape == (6, 6, 3)
  np.testing.assert_array_equal(out[..., 0], out[..., 1])
  np.testing.assert_array_equal(out[..., 0], out[..., 2])
  assert not np.array_equal(out, image.numpy())


def test_blur_matches_scipy():
  image = np.random.default_rng(3).random((20, 24, 3)).astype(np.float32)
  for sigma, size in ((1.0, 7), (0.6, 5)):
    ours = ops_color.gaussian_blur_image(tf.constant(image), sigma, size).numpy()
    theirs = scipy.ndimage.gaussian_filter(image, sigma=(sigma, sigma, 0), mode='reflect',
                                           truncate=(size // 2) / sigma)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
  out = _run('gaussian_blur(prob=1.0, sigma_min=1.0, sigma_max=1.0, kernel_size=7)',
             {'image': tf.constant(image)})
  np.testing.assert_allclose(out['image'], ops_color.gaussian_blur_image(
      tf.constant(image), 1.0, 7).numpy(), atol=1e-6)
  assert ops_color.blur_kernel_size(224) == 23 and ops_color.blur_kernel_size(32) == 3


# ----------------------------------------------------------------------------- text


CAPTIONS = ['a red circle.', 'two blue stars and a box.', 'a tiny disc on the left.']
METADATA = {'vocabulary': list(text.Vocabulary.build(CAPTIONS).tokens)}


def test_tokenize_round_trips_through_the_vocabulary():
  vocab = text.from_metadata(METADATA)
  for caption in CAPTIONS:
    out = _run('tokenize(12)', {'caption': tf.constant(caption)}, metadata=METADATA)
    assert out['tokens'].shape == (12,) and out['tokens'].dtype == np.int32
    assert vocab.decode(out['tokens']) == caption
  out = _run('tokenize(12, inkey="captions", outkey="ids")',
             {'captions': tf.constant(CAPTIONS)}, metadata=METADATA)
  assert out['ids'].shape == (3, 12)
  with pytest.raises(ValueError, match='needs a vocabulary'):
    preprocess.parse('tokenize(12)', metadata={'held_out': []})


def test_choose_one_is_fixed_per_seed_and_varies_across_seeds():
  example = {'captions': tf.constant(CAPTIONS)}
  chosen = [_run('choose_one', example, seed)['caption'] for seed in range(20)]
  assert chosen == [_run('choose_one', example, seed)['caption'] for seed in range(20)]
  assert set(chosen) == {c.encode() for c in CAPTIONS}


def test_swap_word_replaces_one_word_by_one_of_another_group():
  groups = '(("circle", "disc"), ("square", "box"), ("star",))'
  caption = 'a red disc is left of a blue box.'
  swapped = {_run(f'swap_word({groups})', {'caption': tf.constant(caption)}, seed
                  )['negative_caption'].decode() for seed in range(30)}
  # One word changes, to the first word of another group, punctuation kept; never to a
  # synonym (a false negative).
  assert swapped == {'a red square is left of a blue box.', 'a red star is left of a blue box.',
                     'a red disc is left of a blue circle.', 'a red disc is left of a blue star.'}
  draw = lambda seed: _run(f'swap_word({groups})', {'caption': tf.constant(caption)}, seed)
  assert draw(3)['negative_caption'] == draw(3)['negative_caption']  # fixed per seed
  out = _run(f'swap_word({groups}, outkey="caption")', {'caption': tf.constant('two objects.')})
  assert out['caption'] == b'two objects.'  # nothing to swap
  with pytest.raises(ValueError, match='two or more groups'):
    preprocess.parse('swap_word((("circle", "disc"),))')


def test_pad_sequence_pads_truncates_and_masks():
  scene = _scene()
  out = _run('pad_sequence(5, "objects")', scene)
  assert out['objects']['bbox'].shape == (5, 4) and out['objects']['shape'].shape == (5,)
  np.testing.assert_array_equal(out['objects_mask'], [1, 1, 1, 0, 0])
  np.testing.assert_array_equal(out['objects']['shape'], [3, 1, 4, 0, 0])
  out = _run('pad_sequence(2, "objects/bbox", "objects/color", mask_key="box_mask", value=-1)',
             scene)
  assert out['objects']['bbox'].shape == (2, 4) and out['box_mask'].all()
  out = _run('pad_sequence(4, "captions")', {'captions': tf.constant(CAPTIONS)})
  assert out['captions'].tolist()[3] == b'' and out['captions_mask'].tolist() == [1, 1, 1, 0]
  # Padded, examples with different object counts batch.
  ds = tf.data.Dataset.range(1, 4).map(lambda n: preprocess.parse('pad_sequence(3, "boxes")')(
      {'boxes': tf.zeros([n, 4])}))
  batch = next(iter(ds.batch(3)))
  np.testing.assert_array_equal(batch['boxes_mask'].numpy().sum(1), [1, 2, 3])


# ----------------------------------------------------------------------------- expansion


def test_split_expanding():
  assert preprocess.split_expanding('per_question|decode|tokenize(8)') == (
      'per_question', 'decode|tokenize(8)')
  assert preprocess.split_expanding('decode') == ('', 'decode')
  with pytest.raises(ValueError, match="'per_question' must come before"):
    preprocess.split_expanding('decode|per_question')
  with pytest.raises(ValueError, match='expands one example'):
    preprocess.parse('per_question|decode')


def test_per_question_gives_one_example_per_question():
  questions = [['what color is the circle?', 'is there a star?', 'how many things?'],
               ['what shape is it?', 'is it big?']]
  answers = [['red', 'no', 'two'], ['star', 'yes']]
  examples = [{'image': tf.fill([4, 4, 3], tf.constant(i, tf.uint8)),
               'objects': {'bbox': tf.zeros([i + 1, 4])},
               'questions': tf.constant(q), 'answers': tf.constant(a),
               preprocess.RNG_KEY: _seed(i)}
              for i, (q, a) in enumerate(zip(questions, answers))]
  expand = preprocess.parse_expansion('per_question', METADATA)
  rows = []
  for example in examples:
    ds = tf.data.Dataset.from_tensor_slices(expand(example))
    rows.append(list(ds.as_numpy_iterator()))
  assert [len(r) for r in rows] == [len(q) for q in questions]
  for i, (r, q, a) in enumerate(zip(rows, questions, answers)):
    assert [row['question'].decode() for row in r] == q
    assert [row['answer'].decode() for row in r] == a
    assert all((row['image'] == i).all() and row['objects']['bbox'].shape == (i + 1, 4)
               and 'questions' not in row for row in r)
    assert len({tuple(row[preprocess.RNG_KEY]) for row in r}) == len(r)  # own seeds
  # As the pipeline does it: expand, then preprocess each row.
  ds = tf.data.Dataset.from_tensor_slices(
      {'questions': tf.constant([questions[0]]), 'answers': tf.constant([answers[0]]),
       preprocess.RNG_KEY: tf.constant([[1, 2]], tf.int64)})
  ds = ds.flat_map(lambda ex: tf.data.Dataset.from_tensor_slices(expand(ex)))
  rest = preprocess.parse('tokenize(8, inkey="answer", outkey="answer_tokens")', METADATA)
  assert len(list(ds.map(rest).as_numpy_iterator())) == 3


# ----------------------------------------------------------------------------- video


def _clip(frames=16, size=8):
  """uint8 [T, H, W, 3]: frame t is the coordinate image plus t in the last channel."""
  coords = _coordinates(size, size)
  return np.stack([coords + np.array([0, 0, t], np.uint8) for t in range(frames)])


def _assert_same_for_all_frames(clip):
  """The coordinate channels of every frame equal those of the first."""
  np.testing.assert_array_equal(clip[..., :2], np.broadcast_to(clip[:1, ..., :2],
                                                                clip[..., :2].shape))


def test_a_clip_gets_one_flip_and_one_crop_for_all_frames():
  clip = _clip()
  flips = set()
  for seed in range(10):
    out = _run('flip_lr(key="video")|random_crop(6, pad=1, key="video")',
               {'video': tf.constant(clip)}, seed)['video']
    assert out.shape == (16, 6, 6, 3)
    _assert_same_for_all_frames(out)
    flips.add(bool(out[0, 3, 1, 1] > out[0, 3, 4, 1]))
  assert flips == {True, False}
  out = _run('random_resized_crop(4, key="video")', {'video': tf.constant(clip)})['video']
  assert out.shape == (16, 4, 4, 3)
  _assert_same_for_all_frames(out)


def test_temporal_crop():
  video = {'video': tf.constant(_clip())}
  starts = set()
  for seed in range(10):
    out = _run('temporal_crop(4, stride=3)', video, seed)['video']
    frames = out[:, 0, 0, 2]
    assert out.shape == (4, 8, 8, 3) and (np.diff(frames) == 3).all() and frames[-1] <= 15
    starts.add(frames[0])
  assert len(starts) > 1
  out = _run('temporal_crop(4, stride=3, central=True)', video)['video']
  np.testing.assert_array_equal(out[:, 0, 0, 2], [3, 6, 9, 12])  # 16 - 10 = 6 spare frames
  assert _run('temporal_subsample(4)', video)['video'][:, 0, 0, 2].tolist() == [0, 4, 8, 12]


def test_temporal_clips_are_evenly_spaced_and_keep_frame_order():
  video = {'video': tf.constant(_clip())}
  out = _run('central_crop(6, key="video")|temporal_clips(3, 4, stride=2, outkey="image")',
             video)['image']
  assert out.shape == (3, 4, 6, 6, 3)
  # Spans of 7 frames start at 0, (16 - 7) / 2 rounded and 16 - 7 = 9.
  np.testing.assert_array_equal(out[:, :, 0, 0, 2], [[0, 2, 4, 6], [4, 6, 8, 10],
                                                     [9, 11, 13, 15]])
  _assert_same_for_all_frames(out.reshape(12, 6, 6, 3))
  with pytest.raises(tf.errors.InvalidArgumentError, match='needs 31 frames'):
    _run('temporal_clips(2, 16, stride=2)', video)


def test_decode_takes_encoded_frames():
  clip = _clip(frames=3)
  frames = tf.constant([generation.png(frame) for frame in clip])
  np.testing.assert_array_equal(_run('decode(key="video")', {'video': frames})['video'], clip)
