"""Preprocessing ops, registered by name and composed from a config string.

`'decode|random_crop(32, pad=4)|flip_lr|value_range(-1, 1)'` builds one function
`example -> example` on tf tensors. Random ops draw from the example's `_rng`
(a stateless tf seed set by the pipeline from the data position), so the same
example at the same step gets the same augmentation after a resume. Each random op
splits that seed, so two ops (e.g. the crops of two views) draw independently.

Keys. Most ops read `inkey` and write `outkey` (big_vision's InKeyOutKey); `key=`
sets both. A key may name a nested feature by its path, 'objects/bbox' for
`example['objects']['bbox']` as TFDS delivers a Sequence, or a flat 'objects/bbox'.

Where the ops are: the registry, parsing and the generic ops (`copy`, `keep`) here;
image and geometry ops in `ops_image`, SimCLR's colour ops in `ops_color`, text ops
in `ops_text`, video ops in `ops_video`. Importing this module registers them all.

Expanding ops turn one example into several (one per question for VQA). They may
only lead a spec: `split_expanding(spec)` separates them, `parse_expansion` builds
their function, whose fields share a new leading dimension (one row per example):

  expand, rest = preprocess.split_expanding(pp)
  ds = ds.flat_map(lambda ex: tf.data.Dataset.from_tensor_slices(
      preprocess.parse_expansion(expand, metadata)(ex)))
  ds = ds.map(preprocess.parse(rest, metadata))
"""

import ast
import functools
import inspect
from typing import Any, Callable, Mapping

import tensorflow as tf

Example = dict[str, Any]
Op = Callable[[Example], Example]

RNG_KEY = '_rng'


class _Entry:
  """A registered op factory and whether its op expands one example into several."""

  def __init__(self, factory: Callable[..., Op], expands: bool):
    self.factory, self.expands = factory, expands
    self.takes_metadata = 'metadata' in inspect.signature(factory).parameters


_REGISTRY: dict[str, _Entry] = {}


def register(name: str, expands: bool = False):
  """Registers an op factory under `name`.

  A factory that declares a `metadata` keyword receives the dataset's metadata
  (`builder.info.metadata`) from `parse`. An expanding op (`expands=True`) returns
  its outputs with a new leading dimension, one row per example it produces.
  """
  def wrap(factory):
    if name in _REGISTRY:
      raise ValueError(f'preprocessing op {name!r} is registered twice')
    _REGISTRY[name] = _Entry(factory, expands)
    return factory
  return wrap


def _op_texts(spec: str) -> list[tuple[str, str, list, dict]]:
  """(text, name, args, kwargs) of each op of `'op1|op2(arg, key=value)|...'`."""
  ops = []
  for text in filter(None, (s.strip() for s in (spec or '').split('|'))):
    try:
      node = ast.parse(text, mode='eval').body
      if isinstance(node, ast.Name):
        name, args, kwargs = node.id, [], {}
      elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        name = node.func.id
        args = [ast.literal_eval(a) for a in node.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
      else:
        raise ValueError
    except (SyntaxError, ValueError):
      raise ValueError(f'cannot parse preprocessing op {text!r} in {spec!r}') from None
    if name not in _REGISTRY:
      raise ValueError(f'unknown preprocessing op {name!r}; known: {sorted(_REGISTRY)}')
    ops.append((text, name, args, kwargs))
  return ops


def _build(text: str, name: str, args, kwargs, metadata) -> Op:
  entry = _REGISTRY[name]
  if entry.takes_metadata:
    kwargs = {'metadata': metadata, **kwargs}
  try:
    return entry.factory(*args, **kwargs)
  except TypeError as e:  # wrong arguments: say which op, in one line
    raise ValueError(f'bad arguments for preprocessing op {text!r}: {e}') from None


def _compose(ops: list[Op]) -> Op:
  def apply(example: Example) -> Example:
    for op in ops:
      example = op(dict(example))
    return example
  return apply


def parse(spec: str, metadata: Mapping[str, Any] | None = None) -> Op:
  """Builds the composed op from `'op1|op2(arg, key=value)|...'`.

  Args:
    spec: the ops, separated by '|'; arguments are Python literals.
    metadata: the dataset's metadata (`builder.info.metadata`), for ops that need it
      (`tokenize` reads the vocabulary from it).
  """
  ops = []
  for text, name, args, kwargs in _op_texts(spec):
    if _REGISTRY[name].expands:
      raise ValueError(
          f'preprocessing op {name!r} expands one example into several, so it can only '
          f'lead the spec and is applied by the pipeline (split_expanding); in {spec!r}')
    ops.append(_build(text, name, args, kwargs, metadata))
  return _compose(ops)


def split_expanding(spec: str) -> tuple[str, str]:
  """(the leading expanding ops, the rest) of `spec`, each again a spec.

  Raises:
    ValueError: an expanding op follows a non-expanding one (naming it), or an op is
      unknown.
  """
  texts = _op_texts(spec)
  count = 0
  while count < len(texts) and _REGISTRY[texts[count][1]].expands:
    count += 1
  for text, name, _, _ in texts[count:]:
    if _REGISTRY[name].expands:
      raise ValueError(f'expanding preprocessing op {name!r} must come before every '
                       f'other op, but follows {texts[count][1]!r} in {spec!r}')
  return '|'.join(t[0] for t in texts[:count]), '|'.join(t[0] for t in texts[count:])


def parse_expansion(spec: str, metadata: Mapping[str, Any] | None = None
                    ) -> Callable[[Example], Example]:
  """The function of the expanding ops `spec`: example -> fields with a leading N.

  Every output field (nested dicts included) has one row per produced example;
  fields the op does not expand are repeated. With an empty spec, N = 1. When the
  example carries a seed, each row gets its own, split from it.
  """
  texts = _op_texts(spec)
  for text, name, _, _ in texts:
    if not _REGISTRY[name].expands:
      raise ValueError(f'preprocessing op {name!r} does not expand examples; '
                       f'parse_expansion takes only expanding ops, got {spec!r}')
  if len(texts) > 1:
    raise ValueError(f'at most one expanding preprocessing op per spec, got {spec!r}')
  if not texts:
    return lambda example: tf.nest.map_structure(lambda x: tf.expand_dims(x, 0), example)
  expand = _build(*texts[0], metadata)

  def apply(example: Example) -> Example:
    example = dict(example)
    seed = example.pop(RNG_KEY, None)
    rows = expand(example)
    if seed is not None:
      count = tf.shape(tf.nest.flatten(rows)[0])[0]
      rows[RNG_KEY] = tf.random.experimental.stateless_split(seed, num=count)
    return rows
  return apply


def repeat_rows(value, count) -> Any:
  """`value` (a tensor or nested dict) stacked `count` times along a new first axis."""
  def tile(x):
    x = tf.convert_to_tensor(x)
    return tf.tile(x[None], tf.concat([[count], tf.ones([tf.rank(x)], tf.int32)], 0))
  return tf.nest.map_structure(tile, value)


# ----------------------------------------------------------------------------- keys and seeds


def next_seed(example: Example) -> tf.Tensor:
  """Splits the example's stateless seed: one for this op, one kept for later ops."""
  seeds = tf.random.experimental.stateless_split(example[RNG_KEY], num=2)
  example[RNG_KEY] = seeds[0]
  return seeds[1]


_next_seed = next_seed  # the name the ops of earlier versions used


def _resolve(example: Mapping[str, Any], key: str) -> tuple[Mapping[str, Any], str] | None:
  """(the dict holding `key`, its name there): a flat key first, else its path."""
  if key in example:
    return example, key
  parent, sep, child = key.partition('/')
  if sep and isinstance(example.get(parent), Mapping):
    return _resolve(example[parent], child)
  return None


def has_key(example: Mapping[str, Any], key: str) -> bool:
  return _resolve(example, key) is not None


def get_key(example: Mapping[str, Any], key: str):
  """`example[key]`, following 'parent/child' into nested dicts."""
  found = _resolve(example, key)
  if found is None:
    raise KeyError(f'no feature {key!r} in the example; it has {_describe_keys(example)}')
  holder, name = found
  return holder[name]


def set_key(example: Example, key: str, value) -> None:
  """Sets `key`, copying the nested dicts on its path so the input stays unchanged."""
  if key not in example:
    parent, sep, child = key.partition('/')
    if sep and isinstance(example.get(parent), Mapping):
      example[parent] = dict(example[parent])
      set_key(example[parent], child, value)
      return
  example[key] = value


def pop_key(example: Example, key: str):
  """Removes `key` (following nested dicts, which are copied) and returns its value."""
  if key in example:
    return example.pop(key)
  parent, sep, child = key.partition('/')
  if sep and isinstance(example.get(parent), Mapping):
    example[parent] = dict(example[parent])
    return pop_key(example[parent], child)
  raise KeyError(f'no feature {key!r} in the example; it has {_describe_keys(example)}')


def siblings(example: Mapping[str, Any], key: str) -> list[str]:
  """The keys (as paths) next to `key` in its container: the other fields of a
  nested dict, or the flat keys with the same 'parent/' prefix."""
  if '/' not in key:
    return []
  found = _resolve(example, key)
  parent = key.rsplit('/', 1)[0]
  if found is not None and found[1] != key:  # nested: the holder's other fields
    return [f'{parent}/{k}' for k in found[0] if f'{parent}/{k}' != key]
  return [k for k in example if k.startswith(parent + '/') and k != key]


def _describe_keys(example: Mapping[str, Any], prefix: str = '') -> list[str]:
  keys = []
  for k, v in example.items():
    keys += _describe_keys(v, f'{prefix}{k}/') if isinstance(v, Mapping) else [prefix + k]
  return sorted(keys)


def inkey_outkey(indefault: str | None = 'image', outdefault: str | None = None, *,
                 seeded: bool = False):
  """Turns `factory(*args, **kw) -> fn(value[, seed])` into an op factory that reads
  `inkey` and writes `outkey` (`key=` sets both), after big_vision's InKeyOutKey.

  `outdefault` defaults to `indefault`. With `seeded`, `fn` also gets a fresh seed
  split from the example's.
  """
  outdefault = indefault if outdefault is None else outdefault

  def wrap(factory):
    @functools.wraps(factory)
    def op_factory(*args, key: str | None = None, inkey: str | None = indefault,
                   outkey: str | None = outdefault, **kwargs) -> Op:
      fn = factory(*args, **kwargs)
      source, target = (key, key) if key else (inkey, outkey)

      def op(example):
        value = get_key(example, source)
        set_key(example, target, fn(value, next_seed(example)) if seeded else fn(value))
        return example
      return op
    # The factory's own arguments (parse() looks for `metadata`) and the key ones.
    signature = inspect.signature(factory)
    keyword = lambda name, default: inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default)
    op_factory.__signature__ = signature.replace(parameters=[
        *signature.parameters.values(), keyword('key', None), keyword('inkey', indefault),
        keyword('outkey', outdefault)])
    return op_factory
  return wrap


# ----------------------------------------------------------------------------- generic ops


@register('copy')
def copy(inkey: str, outkey: str) -> Op:
  """Copies a feature (e.g. the image into `view1` and `view2` for two views)."""
  def op(example):
    set_key(example, outkey, get_key(example, inkey))
    return example
  return op


@register('keep')
def keep(*keys: str) -> Op:
  """Drops every feature but `keys` (and the pipeline's own fields)."""
  def op(example):
    return {k: v for k, v in example.items() if k in keys or k.startswith('_')}
  return op


# Registers the ops of the other files (they import this module for `register`).
from vision_jax.data import bpe  # noqa: E402,F401  pylint: disable=g-import-not-at-top
from vision_jax.data import ops_color  # noqa: E402,F401  pylint: disable=g-import-not-at-top
from vision_jax.data import ops_image  # noqa: E402,F401  pylint: disable=g-import-not-at-top
from vision_jax.data import ops_text  # noqa: E402,F401  pylint: disable=g-import-not-at-top
from vision_jax.data import ops_video  # noqa: E402,F401  pylint: disable=g-import-not-at-top
