"""Users' own clips as `folder:/root`: frame folders and GIFs, the pipeline, bad input."""

import importlib.util
import os

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from vision_jax.data import pipeline, video_folder

# Frame file names whose text order (frame10 < frame2) differs from their natural order.
FRAME_NAMES = ('frame1', 'frame2', 'frame3', 'frame4', 'frame5', 'frame10')
# Flat colours for the GIFs: a palette of a few colours survives GIF quantisation exactly.
COLOURS = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255),
                    (255, 0, 255), (255, 255, 255), (0, 0, 0)], np.uint8)
SIZE = 16
PP = "temporal_crop(4, stride=1, outkey='image')|resize(8, key='image')|value_range(-1, 1)"


def write_frames(folder, frames, names=FRAME_NAMES):
  os.makedirs(folder)
  for frame, name in zip(frames, names):
    Image.fromarray(frame).save(os.path.join(folder, name + '.png'))


def write_gif(path, frames):
  images = [Image.fromarray(f) for f in frames]
  images[0].save(path, save_all=True, append_images=images[1:], duration=40, loop=0)


def random_clip(rng, num_frames=len(FRAME_NAMES), size=SIZE):
  return rng.integers(0, 256, (num_frames, size, size, 3), np.uint8)


def flat_clip(shift, num_frames=len(FRAME_NAMES), size=SIZE):
  """Left and right halves in flat colours; consecutive frames differ, so none merge,
  and only a part changes, so the GIF writer crops frames and decoding must compose."""
  clip = np.empty((num_frames, size, size, 3), np.uint8)
  for t in range(num_frames):
    clip[t, :, :size // 2] = COLOURS[(shift + t) % len(COLOURS)]
    clip[t, :, size // 2:] = COLOURS[(shift + t // 2) % len(COLOURS)]
  return clip


def write_root(root, splits=('train', 'test'), classes=('cat', 'dog')) -> dict:
  """Per split and class one frame folder and one GIF, beside hidden files. Returns
  {relative path: (frames, label)}."""
  rng = np.random.default_rng(0)
  expected = {}
  for s, split in enumerate(splits):
    for label, name in enumerate(classes):
      folder = os.path.join(root, split, name)
      frames = random_clip(rng)
      write_frames(os.path.join(folder, 'walk'), frames)
      expected[os.path.join(split, name, 'walk')] = (frames, label)
      frames = flat_clip(3 * s + label)
      write_gif(os.path.join(folder, 'wave.gif'), frames)
      expected[os.path.join(split, name, 'wave.gif')] = (frames, label)
      for hidden in (os.path.join(folder, '.DS_Store'), os.path.join(folder, 'walk', '.x.png')):
        with open(hidden, 'w') as f:  # Hidden files are not clips nor frames.
          f.write('x')
  os.makedirs(os.path.join(root, '.cache', 'cat'))
  return expected


@pytest.fixture(scope='module')
def clips(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('clips') / 'root')
  expected = write_root(root)
  return root, expected, pipeline.get_builder('folder:' + root)  # Prepared once.


def test_clips_decode_to_the_written_frames(clips):
  root, expected, builder = clips
  assert isinstance(builder, video_folder.VideoFolder)
  assert builder.data_dir.startswith(os.path.join(root, '_prepared'))
  info = pipeline.dataset_info(builder, 'mine')
  assert info.class_names == ('cat', 'dog')
  assert info.num_examples == {'train': 4, 'test': 4}
  assert builder.info.supervised_keys == ('video', 'label')
  seen = set()
  for split in ('train', 'test'):
    for ex in tfds.as_numpy(builder.as_dataset(split, shuffle_files=False)):
      name = ex['video/filename'].decode()
      assert name.startswith(split + os.sep)
      frames, label = expected[name]
      np.testing.assert_array_equal(ex['video'], frames)  # In natural order, exactly.
      assert ex['label'] == label
      seen.add(name)
  assert seen == set(expected)


def test_natural_order():
  names = sorted(FRAME_NAMES, key=video_folder.natural_key)
  assert names == list(FRAME_NAMES) and sorted(FRAME_NAMES) != list(FRAME_NAMES)


def test_one_pipeline_batch_of_clips(clips):
  root, _, _ = clips
  data = ml_collections.ConfigDict({'name': 'folder:' + root, 'data_dir': None})
  builder, name, note = pipeline.training_builder(data)
  assert isinstance(builder, video_folder.VideoFolder) and note == ''
  pp = PP + "|keep('image', 'label')"
  batch = next(pipeline.train_batches(builder, 'train', batch_size=4, seed=0, pp=pp))
  assert batch['image'].shape == (4, 4, 8, 8, 3) and batch['image'].dtype == np.float32
  assert batch['image'].min() >= -1 and batch['image'].max() <= 1
  assert sorted(batch['label'].tolist()) == [0, 0, 1, 1]
  batch = next(pipeline.eval_batches(builder, 'test', batch_size=5, pp=pp))
  assert batch['image'].shape == (5, 4, 8, 8, 3)
  assert batch[pipeline.MASK_KEY].tolist() == [True] * 4 + [False]


def test_prepared_once_and_again_when_a_clip_is_added(tmp_path, monkeypatch):
  root = str(tmp_path / 'root')
  rng = np.random.default_rng(1)
  for name in ('a', 'b'):
    write_frames(os.path.join(root, 'train', name, 'clip'), random_clip(rng, 3, 4))
  first = pipeline.get_builder('folder:' + root)
  assert first.info.splits['train'].num_examples == 2

  def no_decoding(path):
    raise AssertionError(f'decoded {path} again')
  monkeypatch.setattr(video_folder, 'load_clip', no_decoding)
  again = pipeline.get_builder('folder:' + root)
  assert again.data_dir == first.data_dir and again.is_prepared()
  monkeypatch.undo()

  write_frames(os.path.join(root, 'train', 'b', 'clip2'), random_clip(rng, 3, 4))
  assert not video_folder.get_builder(root).is_prepared()
  grown = pipeline.get_builder('folder:' + root)
  assert grown.data_dir != first.data_dir and grown.info.splits['train'].num_examples == 3


def test_still_images_stay_an_image_folder(tmp_path):
  for name in ('a', 'b'):
    os.makedirs(tmp_path / 'train' / name)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / 'train' / name / '0.png')
  assert not video_folder.is_video_folder(str(tmp_path))
  builder = pipeline.get_builder(f'folder:{tmp_path}')
  assert isinstance(builder, tfds.folder_dataset.ImageFolder)


def _clip(folder, name='clip', size=4):
  write_frames(os.path.join(folder, name), np.zeros((2, size, size, 3), np.uint8))


def _empty_class(root):
  _clip(os.path.join(root, 'train', 'a'))
  os.makedirs(os.path.join(root, 'train', 'b'))
  return [os.path.join(root, 'train', 'b'), 'no clips']


def _no_frames(root):
  _clip(os.path.join(root, 'train', 'a'))
  os.makedirs(os.path.join(root, 'train', 'b', 'empty'))
  with open(os.path.join(root, 'train', 'b', 'empty', 'notes.txt'), 'w') as f:
    f.write('x')
  return [os.path.join(root, 'train', 'b', 'empty'), 'no frames', 'notes.txt']


def _frame_sizes(root):
  clip = os.path.join(root, 'train', 'a', 'clip')
  os.makedirs(clip)
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(os.path.join(clip, 'f1.png'))
  Image.fromarray(np.zeros((6, 5, 3), np.uint8)).save(os.path.join(clip, 'f2.png'))
  return [clip, 'f1.png is 4x4', 'f2.png is 6x5']


def _bad_frame(root):
  _clip(os.path.join(root, 'train', 'a'))
  clip = os.path.join(root, 'train', 'a', 'clip')
  data = open(os.path.join(clip, 'frame1.png'), 'rb').read()
  with open(os.path.join(clip, 'frame3.png'), 'wb') as f:
    f.write(data[:len(data) // 2])
  return [os.path.join(clip, 'frame3.png'), 'cannot decode frame']


def _bad_gif(root):
  _clip(os.path.join(root, 'train', 'a'))
  with open(os.path.join(root, 'train', 'a', 'broken.gif'), 'w') as f:
    f.write('not a gif')
  return [os.path.join(root, 'train', 'a', 'broken.gif'), 'cannot decode GIF']


def _unsupported(root):
  _clip(os.path.join(root, 'train', 'a'))
  with open(os.path.join(root, 'train', 'a', 'labels.csv'), 'w') as f:
    f.write('x')
  return [os.path.join(root, 'train', 'a', 'labels.csv'), 'not a clip', '.png', '.gif',
          '.mp4']


def _mixed(root):
  _clip(os.path.join(root, 'train', 'a'))
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(os.path.join(root, 'train', 'a', 'x.png'))
  return [os.path.join(root, 'train', 'a'), 'mixes clips (clip) and still images (x.png)']


def _mixed_elsewhere(root):  # The first class folder decides; the full scan finds the rest.
  _clip(os.path.join(root, 'train', 'a'))
  os.makedirs(os.path.join(root, 'train', 'b'))
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(os.path.join(root, 'train', 'b', 'x.png'))
  return [os.path.join(root, 'train', 'b'), 'still images (x.png)']


def _other_classes(root):
  for split, names in (('train', ('a', 'b')), ('test', ('a', 'c'))):
    for name in names:
      _clip(os.path.join(root, split, name))
  return ["split 'train'", "only in 'train': ['b']", "missing from 'train': ['c']"]


def _video_without_pyav(root):
  if importlib.util.find_spec('av') is not None:
    pytest.skip('PyAV is installed')
  os.makedirs(os.path.join(root, 'train', 'a'))
  with open(os.path.join(root, 'train', 'a', 'run.mp4'), 'wb') as f:
    f.write(b'\0' * 16)
  path = os.path.join(root, 'train', 'a', 'run.mp4')
  return [path, 'pip install av', f'ffmpeg -i {path} {path[:-4]}/%05d.png']


@pytest.mark.parametrize('make, error', [
    (_empty_class, pipeline.DatasetNotFoundError),
    (_no_frames, pipeline.DatasetNotFoundError),
    (_frame_sizes, pipeline.UndecodableError),
    (_bad_frame, pipeline.UndecodableError),
    (_bad_gif, pipeline.UndecodableError),
    (_unsupported, pipeline.DatasetNotFoundError),
    (_mixed, pipeline.DatasetNotFoundError),
    (_mixed_elsewhere, pipeline.DatasetNotFoundError),
    (_other_classes, pipeline.DatasetNotFoundError),
    (_video_without_pyav, pipeline.DatasetNotFoundError),
])
def test_bad_input_is_a_one_line_error_naming_it(tmp_path, make, error):
  root = str(tmp_path / 'root')
  words = make(root)
  with pytest.raises(error) as raised:
    pipeline.get_builder('folder:' + root)
  message = str(raised.value)
  assert '\n' not in message
  for word in words:
    assert word in message
