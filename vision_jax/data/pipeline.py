"""Input pipelines: dataset lookup, per-process splits, resumable training order, masked eval.

`config.data.name` is one of
  * a registered TFDS name (`mnist`, `cifar10`, `imagenet2012`, `scenes/multi`, ...),
    read from `config.data.data_dir` (or TFDS's default) and downloaded only when the
    machine is online;
  * an embedded dataset of this project (`digits`, `scenes/...`), prepared offline;
  * `folder:/path/to/root`, images in the TFDS ImageFolder layout
    `root/<split>/<class>/<image>`.

The training stream is a pure function of (seed, step): epoch `e` is the process's
shard shuffled with seed (seed, e), and every example carries a stateless seed from its
position for the random preprocessing ops. A run resumed at step `s` therefore sees
exactly the batches an uninterrupted run sees, without storing iterator state.
"""

import dataclasses
import os
import socket
from typing import Any, Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

import vision_jax.data  # noqa: F401  Registers the embedded builders.
from vision_jax.data import preprocess

# TensorFlow only feeds the host; keep it off the accelerators JAX uses.
tf.config.set_visible_devices([], 'GPU')

MASK_KEY = '_mask'
EMBEDDED_DATASETS = ('digits', 'fake_images', 'scenes', 'scenes_video')


class DatasetNotFoundError(FileNotFoundError):
  """The requested dataset is not available here; the message says how to provide it."""


class BatchingError(ValueError):
  """Preprocessed examples whose shapes differ, so they cannot form a batch."""


def _online(host: str = 'storage.googleapis.com', timeout: float = 3.0) -> bool:
  """A quick reachability probe, so an offline machine fails in seconds, not minutes."""
  try:
    socket.create_connection((host, 443), timeout=timeout).close()
    return True
  except OSError:
    return False


def get_builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """Returns a prepared builder for `name`, preparing embedded datasets on first use."""
  if name.startswith('folder:'):
    root = os.path.expanduser(name[len('folder:'):])
    if not os.path.isdir(root):
      raise DatasetNotFoundError(
          f'image folder {root} does not exist; expected root/<split>/<class>/<image>')
    try:
      return tfds.folder_dataset.ImageFolder(root)
    except Exception as e:  # TFDS raises several types for malformed layouts.
      raise DatasetNotFoundError(f'image folder {root} is not usable: {e}') from e
  data_dir = os.path.expanduser(data_dir) if data_dir else None
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise DatasetNotFoundError(
        f'unknown dataset {name!r}: not a TFDS dataset nor an embedded one '
        f'({", ".join(EMBEDDED_DATASETS)}); for your own images use folder:/path') from None
  if builder.is_prepared():
    return builder
  if name.split('/')[0] in EMBEDDED_DATASETS or _online():
    _prepare_once(builder)
    return builder
  raise DatasetNotFoundError(
      f'dataset {name!r} is not prepared in {builder.data_dir} and this machine is '
      f'offline, so it cannot be downloaded. Prepare it where there is network '
      f'(`tfds build {name} --data_dir DIR`) and point --config.data.data_dir at DIR, '
      f'or pass --config.data.name=folder:/path/to/images')


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


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a method needs to know about its data, independent of TFDS."""
  name: str
  num_examples: dict[str, int]
  num_classes: int | None
  class_names: tuple[str, ...] | None
  metadata: Any = None


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


def _process_shard(builder, split: str, drop_remainder: bool) -> tuple[tf.data.Dataset, int]:
  """This process's contiguous part of `split` and its size."""
  sizes = _shard_sizes(builder, split, drop_remainder)
  index = jax.process_index()
  if isinstance(builder, tfds.folder_dataset.ImageFolder):
    # ImageFolder has no sub-split API: read the split and take this process's range.
    start = sum(sizes[:index])
    return _as_dataset(builder, split).skip(start).take(sizes[index]), sizes[index]
  process_split = tfds.split_for_jax_process(split, drop_remainder=drop_remainder)
  return _as_dataset(builder, process_split), sizes[index]


def train_dataset(builder, split: str, *, batch_size: int, seed: int, pp: str,
                  start_step: int = 0, cache: bool = True,
                  shuffle_buffer: int = 50_000) -> tf.data.Dataset:
  """The process-local training stream from `start_step` on, batched and prefetched.

  Args:
    builder: a prepared TFDS builder.
    split: the split to train on; each process reads its own even part of it.
    batch_size: the per-process batch size.
    seed: the data seed; the order depends only on it and the step.
    pp: the preprocessing spec (see `preprocess.parse`).
    start_step: the number of batches already consumed (resume point).
    cache: keep the decoded shard in memory (small datasets).
    shuffle_buffer: the shuffle buffer; the whole shard if smaller.
  """
  base, num_local = _process_shard(builder, split, drop_remainder=True)
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
  pp_fn = preprocess.parse(pp)
  ds = ds.map(lambda ex: _drop_private(pp_fn(ex)), num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True)
  return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def _drop_private(example):
  """Keeps what can become a JAX array: drops pipeline-internal fields and strings
  (e.g. ImageFolder's `image/filename`; text is tokenized by pp ops before this),
  flattens nested features to `parent/child` names, and narrows 64-bit values to JAX's
  default widths."""
  narrow = {tf.int64: tf.int32, tf.float64: tf.float32}
  flat = {}
  for key, value in example.items():
    if key.startswith('_'):
      continue
    if isinstance(value, dict):
      flat.update(_drop_private({f'{key}/{k}': v for k, v in value.items()}))
    elif value.dtype != tf.string:
      flat[key] = tf.cast(value, narrow[value.dtype]) if value.dtype in narrow else value
  return flat


def eval_batches(builder, split: str, *, batch_size: int, pp: str,
                 cache: bool = False) -> Iterator[dict[str, np.ndarray]]:
  """Process-local eval batches, padded to `batch_size`, with a `_mask` of real examples.

  Every process yields the same number of batches (collectives need that), padding
  with fully masked batches, so each example of the split is counted exactly once.
  """
  ds, _ = _process_shard(builder, split, drop_remainder=False)
  num_batches = -(-max(_shard_sizes(builder, split, False)) // batch_size)
  if cache:
    ds = ds.cache()
  pp_fn = preprocess.parse(pp)
  zero_seed = tf.zeros([2], tf.int64)
  ds = ds.map(lambda ex: _drop_private(pp_fn({**ex, preprocess.RNG_KEY: zero_seed})),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
  template = None
  count = 0
  for batch in as_numpy(ds, pp):
    template = template or batch
    yield _pad(batch, batch_size)
    count += 1
  if count < num_batches:
    if template is None:
      template = {k: np.zeros([1, *s.shape[1:]], s.dtype.as_numpy_dtype)
                  for k, s in ds.element_spec.items()}
    empty = {k: v[:0] for k, v in template.items()}
    for _ in range(num_batches - count):
      yield _pad(empty, batch_size)


def as_numpy(ds: tf.data.Dataset, pp: str) -> Iterator[dict[str, np.ndarray]]:
  """Iterates numpy batches; examples that cannot be batched are a clear error."""
  iterator = iter(tfds.as_numpy(ds))
  while True:
    try:
      yield next(iterator)
    except StopIteration:
      return
    except tf.errors.InvalidArgumentError as e:
      if 'batch' not in str(e).lower() and 'shape' not in str(e).lower():
        raise
      raise BatchingError(
          f'examples of different shapes cannot be batched after preprocessing {pp!r}: '
          'add a resize(...) or crop op (images of several sizes) or decode(channels=...) '
          f'(grey and colour images mixed). TensorFlow said: {str(e).splitlines()[0][:300]}'
      ) from None


def _pad(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
  n = len(next(iter(batch.values())))
  padded = {k: np.concatenate([v, np.zeros((batch_size - n, *v.shape[1:]), v.dtype)])
            if n < batch_size else v for k, v in batch.items()}
  padded[MASK_KEY] = np.arange(batch_size) < n
  return padded
