"""Input pipelines: dataset lookup, per-process splits, resumable training order, masked eval.

`config.data.name` is one of
  * a registered TFDS name (`mnist`, `cifar10`, `imagenet2012`, `scenes/multi`, ...),
    read from `config.data.data_dir` (or TFDS's default) and downloaded only when the
    machine is online;
  * an embedded dataset of this project (`digits`, `scenes/...`), prepared offline;
  * `folder:/path/to/root`, images in the TFDS ImageFolder layout
    `root/<split>/<class>/<image>`, or video clips `root/<split>/<class>/<clip>` (frame
    folders, GIFs, video files; see `data.video_folder`), prepared on first use;
  * `coco_captions_json:/path/to/root`, captioned images in COCO's layout
    (`root/annotations/captions_<split>.json`, `root/<split>/<image>`; see
    `data.coco_captions`), prepared on first use;
  * `coco_json:/path/to/annotations.json`, boxes and masks in COCO's instances format
    with the images beside the file (see `data.coco_json`), prepared on first use.

`config.data.vocabulary`, a word list saved by `text.Vocabulary.save` (`python -m
vision_jax.data.text build-vocab` makes one), gives a dataset without a vocabulary in its
metadata (TFDS `coco_captions`) one, or replaces the dataset's own: `training_builder`
puts it into the metadata of every builder of that dataset name that `get_builder`
returns in this process, so the method, the pp ops and the evaluators share it.

The training stream is a pure function of (seed, step): epoch `e` is the process's
shard shuffled with seed (seed, e), and every example carries a stateless seed from its
position for the random preprocessing ops. A run resumed at step `s` therefore sees
exactly the batches an uninterrupted run sees, without storing iterator state.
"""

import concurrent.futures
import json
import os
import socket
import sys
from typing import Callable, Iterator, Sequence

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow.core.framework import tensor_pb2

from vision_jax import config_lib
import vision_jax.data  # noqa: F401  Registers the embedded builders.
from vision_jax.data import preprocess, text
from vision_jax.dataset_info import DatasetInfo

# TensorFlow only feeds the host; keep it off the accelerators JAX uses.
tf.config.set_visible_devices([], 'GPU')

MASK_KEY = '_mask'
HOST_KEY = '_host'  # Host-side fields of an eval batch: {name: [one array per row]}.
EMBEDDED_DATASETS = ('digits', 'fake_images', 'scenes', 'scenes_video')


class DatasetNotFoundError(FileNotFoundError):
  """The requested dataset is not available here; the message says how to provide it."""


class BatchingError(ValueError):
  """Preprocessed examples whose shapes differ, so they cannot form a batch."""


class UndecodableError(ValueError):
  """An image file that cannot be decoded; the message names it."""


def _online(host: str = 'storage.googleapis.com', timeout: float = 3.0) -> bool:
  """A quick reachability probe, so an offline machine fails in seconds, not minutes."""
  try:
    socket.create_connection((host, 443), timeout=timeout).close()
    return True
  except OSError:
    return False


# data.name -> the data.vocabulary file of the run that trains on it (`training_builder`).
_VOCABULARY_FILES: dict[str, str] = {}
COCO_JSON_PREFIX = 'coco_captions_json:'
COCO_DETECTION_PREFIX = 'coco_json:'
# Data the user named: never replaced.
USER_DATA_PREFIXES = ('folder:', COCO_JSON_PREFIX, COCO_DETECTION_PREFIX)


def get_builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """Returns a prepared builder for `name`, preparing embedded datasets on first use."""
  builder = _get_builder(name, data_dir)
  if name in _VOCABULARY_FILES:
    _set_vocabulary(builder, _VOCABULARY_FILES[name])
  return builder


def _set_vocabulary(builder: tfds.core.DatasetBuilder, path: str) -> None:
  """Puts the words of the vocabulary file `path` into `builder.info.metadata`."""
  path = os.path.expanduser(path)
  try:
    with open(path, encoding='utf-8') as f:
      words = json.load(f)
  except OSError as e:
    raise DatasetNotFoundError(f'data.vocabulary {path} cannot be read: {e.strerror}') from None
  except ValueError as e:
    raise config_lib.ConfigError(f'data.vocabulary {path} is not JSON: {e}') from None
  if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
    raise config_lib.ConfigError(f'data.vocabulary {path} is not a JSON list of words '
                                 '(text.Vocabulary.save writes one)')
  if builder.info.metadata is None:  # DatasetInfo has no setter for it.
    builder.info._metadata = tfds.core.MetadataDict()  # pylint: disable=protected-access
  builder.info.metadata['vocabulary'] = list(text.Vocabulary(words).tokens)


def _get_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  if name.startswith(COCO_JSON_PREFIX):
    from vision_jax.data import coco_captions  # pylint: disable=g-import-not-at-top
    root = name[len(COCO_JSON_PREFIX):]
    builder = coco_captions.get_builder(root, data_dir)
    if builder.is_prepared():
      return builder
    _prepare_once(builder)
    return coco_captions.get_builder(root, data_dir)
  if name.startswith(COCO_DETECTION_PREFIX):
    from vision_jax.data import coco_json  # pylint: disable=g-import-not-at-top
    path = name[len(COCO_DETECTION_PREFIX):]
    builder = coco_json.get_builder(path, data_dir)
    if not builder.is_prepared():
      _prepare_once(builder)
      builder = coco_json.get_builder(path, data_dir)  # Read back from its folder.
    return builder
  if name.startswith('folder:'):
    root = os.path.expanduser(name[len('folder:'):])
    if not os.path.isdir(root):
      raise DatasetNotFoundError(
          f'image folder {root} does not exist; expected root/<split>/<class>/<image>')
    from vision_jax.data import video_folder  # pylint: disable=g-import-not-at-top
    if video_folder.is_video_folder(root):
      builder = video_folder.get_builder(root, data_dir)
      if builder.is_prepared():
        return builder
      _prepare_once(builder)
      return video_folder.get_builder(root, data_dir)
    try:
      return tfds.folder_dataset.ImageFolder(root)
    except Exception as e:  # TFDS raises several types for malformed layouts.
      raise DatasetNotFoundError(f'image folder {root} is not usable: {e}') from e
  data_dir = os.path.expanduser(data_dir) if data_dir else None
  if not name:
    raise DatasetNotFoundError('no dataset named: set data.name (a TFDS name, an embedded '
                               f'dataset ({", ".join(EMBEDDED_DATASETS)}) or folder:/path)')
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise DatasetNotFoundError(
        f'unknown dataset {name!r}: not a TFDS dataset nor an embedded one '
        f'({", ".join(EMBEDDED_DATASETS)}); for your own images use folder:/path') from None
  except (ValueError, AssertionError) as e:  # TFDS's words for a bad name or version.
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise DatasetNotFoundError(f'dataset {name!r} cannot be loaded: {reason}') from None
  if builder.is_prepared():
    return builder
  if name.split('/')[0] in EMBEDDED_DATASETS or _online():
    _prepare_once(builder)
    # A fresh builder: one made before another process prepared the data has no splits.
    return tfds.builder(name, data_dir=data_dir)
  raise DatasetNotFoundError(
      f'dataset {name!r} is not prepared in {builder.data_dir} and this machine is '
      f'offline, so it cannot be downloaded. Prepare it where there is network '
      f'(`tfds build {name} --data_dir DIR`) and point --config.data.data_dir at DIR, '
      f'or pass --config.data.name=folder:/path/to/images')


def training_builder(data_config) -> tuple[tfds.core.DatasetBuilder, str, str]:
  """`(builder, name, note)` of the training data `config.data`.

  When `data.name` is a TFDS name that is not available here and `data.fallback` names
  an embedded dataset, that one is used and `note` says so (else `note` is ''). An image
  folder is never replaced: a folder the user named must exist. `data.vocabulary`, when
  set, becomes the vocabulary of `data.name` for the builders `get_builder` returns.
  """
  name, fallback = data_config.name, data_config.get('fallback')
  _VOCABULARY_FILES.clear()  # Only this run's.
  if data_config.get('vocabulary'):
    _VOCABULARY_FILES[name] = data_config.vocabulary
  try:
    return get_builder(name, data_config.data_dir), name, ''
  except DatasetNotFoundError as e:
    if not fallback or name.startswith(USER_DATA_PREFIXES):
      raise
    if fallback.split('/')[0] not in EMBEDDED_DATASETS:
      raise DatasetNotFoundError(f'data.fallback {fallback!r} is not an embedded dataset '
                                 f'({", ".join(EMBEDDED_DATASETS)})') from None
    reason = str(e).split('. ')[0]
    return (get_builder(fallback, data_config.data_dir), fallback,
            f'{reason}; training on the embedded {fallback!r} instead (data.fallback)')


def _prepare_once(builder: tfds.core.DatasetBuilder) -> None:
  """Process 0 prepares first, so processes sharing a data dir do not race."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    if jax.process_index() == 0:
      builder.download_and_prepare()
    multihost_utils.sync_global_devices('prepare ' + builder.name)
    if builder.is_prepared():
      return
  builder.download_and_prepare()


def dataset_info(builder: tfds.core.DatasetBuilder, name: str) -> DatasetInfo:
  features = builder.info.features
  label = features['label'] if 'label' in features else None
  is_class_label = isinstance(label, tfds.features.ClassLabel)
  return DatasetInfo(
      name=name,
      num_examples={k: v.num_examples for k, v in builder.info.splits.items()},
      num_classes=label.num_classes if is_class_label else None,
      class_names=tuple(label.names) if is_class_label else None,
      metadata=builder.info.metadata)


def check_pp(spec: str, builder, field: str) -> None:
  """Parses a preprocessing spec now, so a mistake is a `ConfigError` naming `field`."""
  try:
    expand_spec, rest = preprocess.split_expanding(spec)
    preprocess.parse_expansion(expand_spec, metadata=builder.info.metadata)
    preprocess.parse(rest, metadata=builder.info.metadata)
  except (ValueError, KeyError, TypeError) as e:
    raise config_lib.ConfigError(f'{field}: {e}') from None


def split_size(builder: tfds.core.DatasetBuilder, split: str) -> int:
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError):
    raise DatasetNotFoundError(
        f'dataset {builder.name} has no split {split!r}; it has {list(builder.info.splits)}'
    ) from None


def _as_dataset(builder, split: str) -> tf.data.Dataset:
  """Reads `split` in a fixed order; image bytes are decoded by the `decode` op."""
  decoders = None
  features = builder.info.features
  if 'image' in features and isinstance(features['image'], tfds.features.Image):
    decoders = {'image': tfds.decode.SkipDecoding()}
  options = tf.data.Options()
  options.deterministic = True
  read_config = tfds.ReadConfig(options=options, try_autocache=False)
  ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders,
                          read_config=read_config)
  if isinstance(ds.element_spec, tuple):  # ImageFolder without as_supervised.
    raise ValueError(f'{builder.name} gives tuples; expected a features dict')
  return ds


def _shard_sizes(builder, split: str, drop_remainder: bool) -> list[int]:
  """Examples per process: an even split, the first processes taking one more if uneven."""
  total, count = split_size(builder, split), jax.process_count()
  if drop_remainder:
    return [total // count] * count
  return [total // count + (i < total % count) for i in range(count)]


def _process_shard(builder, split: str, drop_remainder: bool, *,
                   skip_undecodable: bool = False) -> tuple[tf.data.Dataset, int]:
  """This process's contiguous part of `split` and its size."""
  sizes = _shard_sizes(builder, split, drop_remainder)
  index = jax.process_index()
  if isinstance(builder, tfds.folder_dataset.ImageFolder):
    # ImageFolder has no sub-split API: read the split and take this process's range.
    start = sum(sizes[:index])
    ds = _as_dataset(builder, split).skip(start).take(sizes[index])
    if skip_undecodable:
      bad = undecodable_files(builder, split)
      if bad:
        print(f'warning: skipping {len(bad)} undecodable image file(s) of split {split!r}, '
              f'e.g. {bad[0]}', file=sys.stderr)
        bad_paths = tf.constant(bad)
        ds = ds.filter(lambda ex: tf.logical_not(
            tf.reduce_any(tf.equal(ex['image/filename'], bad_paths))))
        return ds, _count(ds)
    return ds, sizes[index]
  process_split = tfds.split_for_jax_process(split, drop_remainder=drop_remainder)
  return _as_dataset(builder, process_split), sizes[index]


def undecodable_files(builder, split: str, *, first_only: bool = False) -> list[str]:
  """The image files of an ImageFolder split that TensorFlow cannot decode, sorted."""
  paths = [example.image_path for example in builder._split_examples[split]]  # pylint: disable=protected-access

  def bad(path):
    try:
      tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
      return None
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError):
      return path

  found = []
  with concurrent.futures.ThreadPoolExecutor(8) as pool:  # Decoding releases the GIL.
    for result in pool.map(bad, paths):
      if result:
        found.append(result)
        if first_only:
          break
  return sorted(found)


def _count(ds: tf.data.Dataset) -> int:
  return int(ds.reduce(np.int64(0), lambda n, _: n + 1))


def _expand(ds: tf.data.Dataset, pp: str, metadata) -> tuple[tf.data.Dataset, str, bool]:
  """Applies the spec's leading expanding ops (one example -> several, e.g. one per
  question) and returns `(dataset, the rest of the spec, whether it expanded)`."""
  expand_spec, rest = preprocess.split_expanding(pp)
  if not expand_spec:
    return ds, rest, False
  fn = preprocess.parse_expansion(expand_spec, metadata=metadata)
  return ds.flat_map(lambda ex: tf.data.Dataset.from_tensor_slices(fn(ex))), rest, True


def train_dataset(builder, split: str, *, batch_size: int, seed: int, pp: str,
                  start_step: int = 0, cache: bool = True, shuffle_buffer: int = 50_000,
                  skip_undecodable: bool = False) -> tf.data.Dataset:
  """The process-local training stream from `start_step` on, batched and prefetched.

  Args:
    builder: a prepared TFDS builder.
    split: the split to train on; each process reads its own even part of it.
    batch_size: the per-process batch size.
    seed: the data seed; the order depends only on it and the step.
    pp: the preprocessing spec (see `preprocess.parse`). Leading expanding ops (one
      example per question) apply before the shuffle, so an epoch is a pass over the
      expanded examples and the order stays a function of (seed, step).
    start_step: the number of batches already consumed (resume point).
    cache: keep the decoded shard in memory (small datasets).
    shuffle_buffer: the shuffle buffer; the whole shard if smaller.
    skip_undecodable: leave out image files that cannot be decoded (image folders),
      with a warning that counts them, instead of stopping with an error naming one.
  """
  base, num_local = _process_shard(builder, split, drop_remainder=True,
                                   skip_undecodable=skip_undecodable)
  base, pp, expanded = _expand(base, pp, builder.info.metadata)
  if expanded:
    num_local = _count(base)
  if num_local == 0:
    raise ValueError(f'split {split!r} has no examples for process {jax.process_index()}')
  if cache:
    base = base.cache()
  start_epoch, offset = divmod(start_step * batch_size, num_local)
  process_salt = jax.process_index() << 40

  def epoch(e):
    shuffle_seed = tf.cast(seed, tf.int64) * 1_000_003 + e
    shuffled = base.shuffle(min(num_local, shuffle_buffer), seed=shuffle_seed,
                            reshuffle_each_iteration=False)
    def with_rng(i, example):
      position = process_salt + e * num_local + i
      example[preprocess.RNG_KEY] = tf.stack([tf.cast(seed, tf.int64), position])
      return example
    return shuffled.enumerate().map(with_rng)

  ds = tf.data.Dataset.range(start_epoch, 2**62).flat_map(epoch).skip(offset)
  pp_fn = preprocess.parse(pp, metadata=builder.info.metadata)
  ds = ds.map(lambda ex: _device_fields(pp_fn(ex)), num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True)
  return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def _flatten(example, prefix=''):
  """Nested features as `parent/child` names."""
  flat = {}
  for key, value in example.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}/'))
    else:
      flat[prefix + key] = value
  return flat


def _device_fields(example, host_keys: Sequence[str] = ()):
  """What can become a JAX array: drops pipeline-internal fields and strings
  (e.g. ImageFolder's `image/filename`; text is tokenized by pp ops before this),
  flattens nested features to `parent/child` names, and narrows 64-bit values to JAX's
  default widths. `host_keys` are kept, whatever their type or shape, serialized to
  one string each under `_host/<key>`, to be read back on the host."""
  narrow = {tf.int64: tf.int32, tf.float64: tf.float32}
  flat = _flatten(example)
  missing = [k for k in host_keys if k not in flat]
  if missing:
    raise KeyError(f'keep_on_cpu names {missing}, which the preprocessed examples lack; '
                   f'they have {sorted(k for k in flat if not k.startswith("_"))}')
  fields = {}
  for key, value in flat.items():
    if key in host_keys:
      fields[f'{HOST_KEY}/{key}'] = tf.io.serialize_tensor(value)
    elif not key.startswith('_') and value.dtype != tf.string:
      fields[key] = tf.cast(value, narrow[value.dtype]) if value.dtype in narrow else value
  return fields


def _host_fields(batch: dict[str, np.ndarray]) -> dict:
  """Moves the serialized host fields of a padded batch into `batch[HOST_KEY]`: one
  numpy array per row, None for the padding rows."""
  num_real = int(batch[MASK_KEY].sum())
  host = {}
  for key in [k for k in batch if k.startswith(HOST_KEY + '/')]:
    serialized = batch.pop(key)
    host[key[len(HOST_KEY) + 1:]] = [
        tf.make_ndarray(tensor_pb2.TensorProto.FromString(serialized[i])) if i < num_real
        else None for i in range(len(serialized))]
  batch[HOST_KEY] = host
  return batch


def eval_batches(builder, split: str, *, batch_size: int, pp: str, cache: bool = False,
                 keep_on_cpu: Sequence[str] = (), skip_undecodable: bool = False
                 ) -> Iterator[dict[str, np.ndarray]]:
  """Process-local eval batches, padded to `batch_size`, with a `_mask` of real examples.

  Every process yields the same number of batches (collectives need that), padding
  with fully masked batches, so each example of the split is counted exactly once.
  Fields named in `keep_on_cpu` (strings, variable-length references such as all the
  captions or boxes of an image) stay on the host, in `batch['_host']` as one array per
  row, beside the device fields: big_vision's `keep_on_cpu`.
  """
  ds, _ = _process_shard(builder, split, drop_remainder=False,
                         skip_undecodable=skip_undecodable)
  ds, pp, expanded = _expand(ds, pp, builder.info.metadata)
  counts = _shard_sizes(builder, split, drop_remainder=False)
  if expanded or skip_undecodable:  # Only counting tells how many examples remain.
    counts = [_count(ds)]
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      counts = multihost_utils.process_allgather(np.int64(counts[0])).tolist()
  num_batches = -(-max(counts) // batch_size)
  if cache:
    ds = ds.cache()
  pp_fn = preprocess.parse(pp, metadata=builder.info.metadata)
  zero_seed = tf.zeros([2], tf.int64)
  host_keys = tuple(keep_on_cpu)
  ds = ds.map(lambda ex: _device_fields(pp_fn({**ex, preprocess.RNG_KEY: zero_seed}),
                                        host_keys),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
  template = None
  count = 0
  for batch in as_numpy(ds, pp, on_decode_error=_undecodable_error(builder, split)):
    template = template or batch
    yield _host_fields(_pad(batch, batch_size))
    count += 1
  if count < num_batches:
    if template is None:
      template = {k: np.zeros([1, *s.shape[1:]], s.dtype.as_numpy_dtype)
                  for k, s in ds.element_spec.items()}
    empty = {k: v[:0] for k, v in template.items()}
    for _ in range(num_batches - count):
      yield _host_fields(_pad(empty, batch_size))


def _undecodable_error(builder, split: str) -> Callable[[Exception], Exception]:
  """What to raise when TensorFlow fails to decode an image of `split`."""
  def error(e):
    where = f'dataset {builder.name}, split {split!r}'
    if isinstance(builder, tfds.folder_dataset.ImageFolder):
      bad = undecodable_files(builder, split, first_only=True)
      if bad:
        where = f'image file {bad[0]}'
    return UndecodableError(
        f'cannot decode {where} (truncated, corrupt or not an image); fix or remove it, or '
        f'pass --config.data.skip_undecodable=True to leave such files out. TensorFlow '
        f'said: {str(e).strip().splitlines()[0][:200]}')
  return error


_DECODE_ERRORS = ('decode', 'image format', 'png', 'jpeg', 'gif', 'bmp')


def as_numpy(ds: tf.data.Dataset, pp: str, *,
             on_decode_error: Callable[[Exception], Exception] | None = None
             ) -> Iterator[dict[str, np.ndarray]]:
  """Iterates numpy batches; examples that cannot be batched or decoded are a clear error."""
  iterator = iter(tfds.as_numpy(ds))
  while True:
    try:
      yield next(iterator)
    except StopIteration:
      return
    except tf.errors.InvalidArgumentError as e:
      message = str(e).lower()
      if on_decode_error and any(word in message for word in _DECODE_ERRORS):
        raise on_decode_error(e) from None
      if 'batch' not in message and 'shape' not in message:
        raise
      raise BatchingError(
          f'examples of different shapes cannot be batched after preprocessing {pp!r}: '
          'add a resize(...) or crop op (images of several sizes) or decode(channels=...) '
          f'(grey and colour images mixed). TensorFlow said: {str(e).splitlines()[0][:300]}'
      ) from None


def train_batches(builder, split: str, **kwargs) -> Iterator[dict[str, np.ndarray]]:
  """`train_dataset` as numpy batches, with the errors of `as_numpy`."""
  return as_numpy(train_dataset(builder, split, **kwargs), kwargs['pp'],
                  on_decode_error=_undecodable_error(builder, split))


def _pad(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
  n = len(next(iter(batch.values())))
  padded = {k: np.concatenate([v, np.zeros((batch_size - n, *v.shape[1:]), v.dtype)])
            if n < batch_size else v for k, v in batch.items()}
  padded[MASK_KEY] = np.arange(batch_size) < n
  return padded
