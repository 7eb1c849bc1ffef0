r"""Your own video clips as a TFDS dataset: `folder:/path/to/root` with clips for images.

The layout is TFDS ImageFolder's, one level deeper:

  root/<split>/<class>/<clip>/frame1.png   # a clip as a folder of frames
  root/<split>/<class>/<clip>.gif          # an animated GIF
  root/<split>/<class>/<clip>.mp4          # a video file (.mp4 .avi .mov .mkv .webm)

The splits are the sub-folders of root (e.g. train, validation, test); every split has
the same class folders. Names starting with '.' are ignored, and so is `root/_prepared`.

Decoders, all on the host, none needing the network:
  * frame folders: PIL, each .png/.jpg/.jpeg/.bmp file a frame, in the natural order of
    the file names (frame2 before frame10), converted to RGB;
  * GIFs: PIL's `ImageSequence`, each frame converted to RGB, so GIF disposal and
    per-frame palettes give the frames as shown;
  * video files: PyAV (`pip install av`), only if it is installed. Without it, convert
    the file to a frame folder: `ffmpeg -i clip.mp4 clip/%05d.png`.

Examples: `video` (uint8 [T, H, W, 3], frames PNG-encoded; clips may differ in length
and size, so `temporal_crop` and `resize(..., key=...)` make them uniform), `label`
(the class folder names, sorted) and `video/filename` (the clip's path relative to
root, to name clips in errors and figures). `supervised_keys` is ('video', 'label').

The dataset is prepared on first use into `data_dir` (`config.data.data_dir`), or
`root/_prepared` when none is given, under a name that fingerprints the root path and
every clip file's path, size and modification time: adding, removing or changing a clip
prepares it anew.
"""

import dataclasses
import hashlib
import importlib.util
import os
import re

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageSequence

from vision_jax.data.pipeline import DatasetNotFoundError, UndecodableError

PREFIX = 'folder:'
PREPARED = '_prepared'
FRAME_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp')
GIF_SUFFIX = '.gif'
VIDEO_SUFFIXES = ('.mp4', '.avi', '.mov', '.mkv', '.webm')
SUPPORTED = ('a folder of frames (' + ' '.join(FRAME_SUFFIXES) + '), an animated GIF (.gif), '
             'or a video file (' + ' '.join(VIDEO_SUFFIXES) + ', needs PyAV)')


def natural_key(name: str) -> list:
  """Sorts runs of digits by value, so 'frame2' comes before 'frame10'."""
  # re.split with a group alternates text and digits, so the types line up.
  return [int(part) if part.isdigit() else part.lower() for part in re.split(r'(\d+)', name)]


def _listdir(folder: str) -> list[str]:
  """The visible entries of `folder`, in natural order."""
  return sorted((n for n in os.listdir(folder) if not n.startswith('.')), key=natural_key)


def _kind(path: str) -> str:
  """'clip', 'image' (a still) or 'other'."""
  suffix = os.path.splitext(path)[1].lower()
  if os.path.isdir(path) or suffix == GIF_SUFFIX or suffix in VIDEO_SUFFIXES:
    return 'clip'
  return 'image' if suffix in FRAME_SUFFIXES else 'other'


def splits_of(root: str) -> list[str]:
  """The split folders of `root`, sorted."""
  return sorted(n for n in os.listdir(root) if not n.startswith('.') and n != PREPARED
                and os.path.isdir(os.path.join(root, n)))


def _classes_of(split_folder: str) -> list[str]:
  return sorted(n for n in _listdir(split_folder)
                if os.path.isdir(os.path.join(split_folder, n)))


def _mixed_error(folder: str, clip: str, image: str) -> DatasetNotFoundError:
  return DatasetNotFoundError(
      f'class folder {folder} mixes clips ({clip}) and still images ({image}): put the '
      'frames of a clip in a folder of their own, root/<split>/<class>/<clip>/<frame>')


def is_video_folder(root: str) -> bool:
  """Whether `root` holds clips rather than still images (TFDS ImageFolder's layout).

  The first non-empty class folder of each split decides.

  Raises:
    DatasetNotFoundError: such a class folder mixes clips and still images, or one
      split holds clips and another still images.
  """
  found = {}
  for split in splits_of(root):
    split_folder = os.path.join(root, split)
    for name in _classes_of(split_folder):
      folder = os.path.join(split_folder, name)
      kinds = {}
      for entry in _listdir(folder):
        kinds.setdefault(_kind(os.path.join(folder, entry)), entry)
      if 'clip' in kinds and 'image' in kinds:
        raise _mixed_error(folder, kinds['clip'], kinds['image'])
      if 'clip' in kinds or 'image' in kinds:
        found[split] = 'clip' in kinds
        break
  if len(set(found.values())) > 1:
    clips = sorted(s for s, v in found.items() if v)
    stills = sorted(s for s, v in found.items() if not v)
    raise DatasetNotFoundError(
        f'folder {root} mixes splits of clips ({", ".join(clips)}) and splits of still '
        f'images ({", ".join(stills)}); a dataset is one or the other')
  return any(found.values())


def _frame_files(clip: str) -> list[str]:
  """The frame files of a clip folder, in natural order."""
  names = _listdir(clip)
  frames = [os.path.join(clip, n) for n in names
            if os.path.splitext(n)[1].lower() in FRAME_SUFFIXES
            and os.path.isfile(os.path.join(clip, n))]
  if not frames:
    shown = ', '.join(names[:3]) + (', ...' if len(names) > 3 else '') if names else 'nothing'
    raise DatasetNotFoundError(
        f'clip folder {clip} has no frames (it holds {shown}); a clip folder holds '
        f'frame images ({" ".join(FRAME_SUFFIXES)})')
  return frames


def _have_pyav() -> bool:
  return importlib.util.find_spec('av') is not None


def _needs_pyav(path: str) -> DatasetNotFoundError:
  stem = os.path.splitext(path)[0]
  return DatasetNotFoundError(
      f'video file {path} needs PyAV to decode: pip install av, or convert it to a frame '
      f'folder with ffmpeg -i {path} {stem}/%05d.png (and remove the video file)')


def scan(root: str) -> tuple[list[str], dict[str, list[tuple[str, int]]], list[str]]:
  """`(class names, {split: [(clip path, label)]}, the files read)` of `root`.

  Only names are read here, no pixels; `load_clip` decodes and checks the frames.

  Raises:
    DatasetNotFoundError: no split, a split without class folders, splits with
      different classes, a class folder without clips, a clip folder without frames,
      a file that is not a clip, or a video file while PyAV is missing.
  """
  splits = splits_of(root)
  if not splits:
    raise DatasetNotFoundError(
        f'video folder {root} has no split folders; expected root/<split>/<class>/<clip>')
  classes = {split: _classes_of(os.path.join(root, split)) for split in splits}
  names = classes[splits[0]]
  for split in splits:
    if not classes[split]:
      raise DatasetNotFoundError(f'split folder {os.path.join(root, split)} has no class '
                                 'folders; expected root/<split>/<class>/<clip>')
    if classes[split] != names:
      only_here = sorted(set(classes[split]) - set(names))
      missing = sorted(set(names) - set(classes[split]))
      raise DatasetNotFoundError(
          f'split {split!r} of {root} has other classes than split {splits[0]!r}: '
          f'only in {split!r}: {only_here or "none"}; missing from {split!r}: '
          f'{missing or "none"}. Every split needs the same class folders')
  records, files = {}, []
  have_pyav = _have_pyav()
  for split in splits:
    records[split] = []
    for label, name in enumerate(names):
      folder = os.path.join(root, split, name)
      entries = _listdir(folder)
      if not entries:
        raise DatasetNotFoundError(f'class folder {folder} has no clips; each class folder '
                                   f'holds clips: {SUPPORTED}')
      for entry in entries:
        path = os.path.join(folder, entry)
        kind = _kind(path)
        if kind == 'image':
          clip = next((e for e in entries if _kind(os.path.join(folder, e)) == 'clip'),
                      'in other class folders')
          raise _mixed_error(folder, clip, entry)
        if kind == 'other':
          raise DatasetNotFoundError(
              f'{path} is not a clip; a clip is {SUPPORTED}')
        if os.path.isdir(path):
          files += _frame_files(path)
        else:
          if os.path.splitext(entry)[1].lower() in VIDEO_SUFFIXES and not have_pyav:
            raise _needs_pyav(path)
          files.append(path)
        records[split].append((path, label))
  return names, records, files


def _rgb(image: Image.Image) -> np.ndarray:
  return np.asarray(image.convert('RGB'), np.uint8)


def load_clip(path: str) -> np.ndarray:
  """The frames of one clip (a frame folder, a GIF or a video file), uint8 [T, H, W, 3].

  Raises:
    UndecodableError: a frame, GIF or video file cannot be decoded, or the frames of
      one clip differ in size (they cannot form one [T, H, W, 3] array).
  """
  if os.path.isdir(path):
    frames, first = [], None
    for frame_path in _frame_files(path):
      try:
        with Image.open(frame_path) as image:
          frame = _rgb(image)
      except (OSError, ValueError, SyntaxError) as e:  # PIL's words for bad files.
        raise UndecodableError(f'cannot decode frame {frame_path}: {e}') from None
      if first is None:
        first = (frame_path, frame.shape[:2])
      elif frame.shape[:2] != first[1]:
        raise UndecodableError(
            f'clip {path} has frames of different sizes: {os.path.basename(first[0])} is '
            f'{first[1][0]}x{first[1][1]}, {os.path.basename(frame_path)} is '
            f'{frame.shape[0]}x{frame.shape[1]} (height x width); resize them to one size')
      frames.append(frame)
    return np.stack(frames)
  if path.lower().endswith(GIF_SUFFIX):
    try:
      with Image.open(path) as image:
        frames = [_rgb(frame) for frame in ImageSequence.Iterator(image)]
    except (OSError, ValueError, SyntaxError, EOFError) as e:
      raise UndecodableError(f'cannot decode GIF {path}: {e}') from None
    return np.stack(frames)
  return _load_video(path)


def _load_video(path: str) -> np.ndarray:
  if not _have_pyav():
    raise _needs_pyav(path)
  import av  # pylint: disable=g-import-not-at-top
  try:
    with av.open(path) as container:
      frames = [frame.to_ndarray(format='rgb24') for frame in container.decode(video=0)]
  except (av.error.FFmpegError, OSError, ValueError) as e:
    raise UndecodableError(f'cannot decode video file {path}: {e}') from None
  if not frames:
    raise UndecodableError(f'video file {path} has no frames')
  return np.stack(frames)


@dataclasses.dataclass(eq=False)
class VideoFolderConfig(tfds.core.BuilderConfig):
  """Which folder to read.

  Attributes:
    root: the dataset's root folder (absolute).
    class_names: the class folder names, sorted.
    records: per split, `[(clip path, label)]` from `scan`; only needed while
      preparing.
  """
  root: str = ''
  class_names: tuple[str, ...] = ()
  records: dict | None = dataclasses.field(default=None, repr=False)


class VideoFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Labelled clips from a folder (see the module)."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'Video clips of {self.builder_config.root}.',
        features=tfds.features.FeaturesDict({
            # Frames, height and width unknown: clips differ; pp ops make them uniform.
            'video': tfds.features.Video(shape=(None, None, None, 3), encoding_format='png'),
            'label': tfds.features.ClassLabel(names=list(self.builder_config.class_names)),
            'video/filename': tfds.features.Text(),
        }),
        supervised_keys=('video', 'label'),
        disable_shuffling=True,  # The folders' order: stable across preparations.
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded.
    records = self.builder_config.records
    if records is None:
      raise ValueError('VideoFolder is prepared through video_folder.get_builder')
    return {split: self._generate_examples(rows) for split, rows in records.items()}

  def _generate_examples(self, rows):
    root = self.builder_config.root
    for path, label in rows:
      relative = os.path.relpath(path, root)
      yield relative, {'video': load_clip(path), 'label': label, 'video/filename': relative}


def _fingerprint(root: str, files: list[str]) -> str:
  digest = hashlib.sha1(root.encode())
  for path in sorted(files):
    stat = os.stat(path)
    digest.update(f'\0{os.path.relpath(path, root)}\0{stat.st_size}\0{stat.st_mtime_ns}'
                  .encode())
  return f'clips_{digest.hexdigest()[:12]}'


def get_builder(root: str, data_dir: str | None = None) -> VideoFolder:
  """The builder of the clips of `root` (see the module for the layout).

  The folders are listed every time (the fingerprint needs the file list); the
  builder returned is not prepared when the clips changed (`download_and_prepare()`
  prepares it, which `pipeline.get_builder` does once per data dir).

  Raises:
    DatasetNotFoundError: `root` is missing, or its layout is wrong (see `scan`).
    UndecodableError: while preparing, a clip cannot be decoded or its frames differ
      in size.
  """
  if not root:
    raise DatasetNotFoundError(f'{PREFIX} needs a folder: --config.data.name={PREFIX}'
                               '/path/to/root (root/<split>/<class>/<clip>)')
  root = os.path.abspath(os.path.expanduser(root))
  if not os.path.isdir(root):
    raise DatasetNotFoundError(
        f'video folder {root} does not exist; expected root/<split>/<class>/<clip>')
  names, records, files = scan(root)
  data_dir = os.path.expanduser(data_dir) if data_dir else os.path.join(root, PREPARED)
  config = VideoFolderConfig(name=_fingerprint(root, files), root=root,
                             class_names=tuple(names))
  builder = VideoFolder(config=config, data_dir=data_dir)
  if not builder.is_prepared():
    config.records = records
  return builder
