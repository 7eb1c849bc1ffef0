"""Preprocessing ops, registered by name and composed from a config string.

`'decode|random_crop(32, pad=4)|flip_lr|value_range(-1, 1)'` builds one function
`example -> example` on tf tensors. Random ops draw from the example's `_rng`
(a stateless tf seed set by the pipeline from the data position), so the same
example at the same step gets the same augmentation after a resume.
"""

import ast
from typing import Any, Callable

import tensorflow as tf

Example = dict[str, Any]
Op = Callable[[Example], Example]

_REGISTRY: dict[str, Callable[..., Op]] = {}
RNG_KEY = '_rng'


def register(name: str):
  def wrap(factory):
    _REGISTRY[name] = factory
    return factory
  return wrap


def parse(spec: str) -> Op:
  """Builds the composed op from `'op1|op2(arg, key=value)|...'`."""
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
    ops.append(_REGISTRY[name](*args, **kwargs))

  def apply(example: Example) -> Example:
    for op in ops:
      example = op(dict(example))
    return example
  return apply


def _next_seed(example: Example) -> tf.Tensor:
  """Splits the example's stateless seed: one for this op, one kept for later ops."""
  seeds = tf.random.experimental.stateless_split(example[RNG_KEY], num=2)
  example[RNG_KEY] = seeds[0]
  return seeds[1]


def _image_op(fn: Callable[[tf.Tensor], tf.Tensor], key: str) -> Op:
  def op(example):
    example[key] = fn(example[key])
    return example
  return op


@register('decode')
def decode(channels: int = 0, key: str = 'image') -> Op:
  """Decodes encoded image bytes (the pipeline skips TFDS's own image decoding)."""
  def fn(data):
    if data.dtype != tf.string:
      return data  # Already decoded.
    return tf.io.decode_image(data, channels=channels, expand_animations=False)
  return _image_op(fn, key)


@register('value_range')
def value_range(low: float, high: float, in_low: float = 0.0, in_high: float = 255.0,
                key: str = 'image') -> Op:
  """Maps [in_low, in_high] linearly to [low, high], as float32."""
  def fn(image):
    image = tf.cast(image, tf.float32)
    return low + (image - in_low) * ((high - low) / (in_high - in_low))
  return _image_op(fn, key)


@register('normalize')
def normalize(mean, std, key: str = 'image') -> Op:
  """Subtracts the per-channel mean and divides by std (given in the current range)."""
  return _image_op(lambda image: (tf.cast(image, tf.float32) - mean) / std, key)


@register('resize')
def resize(size, method: str = 'bilinear', key: str = 'image') -> Op:
  """Resizes to `size` (int for square, or (h, w)), keeping the input dtype."""
  size = (size, size) if isinstance(size, int) else tuple(size)
  def fn(image):
    resized = tf.image.resize(image, size, method=method)
    return tf.cast(tf.round(resized), image.dtype) if image.dtype.is_integer else resized
  return _image_op(fn, key)


@register('resize_small')
def resize_small(smaller_size: int, method: str = 'bilinear', key: str = 'image') -> Op:
  """Resizes so that the shorter side is `smaller_size`, keeping the aspect ratio."""
  def fn(image):
    height, width = tf.unstack(tf.cast(tf.shape(image)[:2], tf.float32))
    ratio = smaller_size / tf.minimum(height, width)
    size = tf.cast(tf.round(tf.stack([height * ratio, width * ratio])), tf.int32)
    resized = tf.image.resize(image, size, method=method)
    return tf.cast(tf.round(resized), image.dtype) if image.dtype.is_integer else resized
  return _image_op(fn, key)


@register('central_crop')
def central_crop(size, key: str = 'image') -> Op:
  size = (size, size) if isinstance(size, int) else tuple(size)
  def fn(image):
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    top, left = (height - size[0]) // 2, (width - size[1]) // 2
    return image[top:top + size[0], left:left + size[1]]
  return _image_op(fn, key)


@register('random_crop')
def random_crop(size=None, pad: int = 0, key: str = 'image') -> Op:
  """Zero-pads by `pad` pixels on each side, then crops `size` (default: the input's
  own size, i.e. a random translation by up to `pad` pixels) at random."""
  size = (size, size) if isinstance(size, int) else size
  def op(example):
    image = example[key]
    static_shape = image.shape if size is None else (*size, image.shape[-1])
    crop = tf.shape(image)[:2] if size is None else tf.constant(size, tf.int32)
    if pad:
      image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    cropped = tf.image.stateless_random_crop(
        image, tf.concat([crop, tf.shape(image)[-1:]], 0), seed=_next_seed(example))
    example[key] = tf.ensure_shape(cropped, static_shape)
    return example
  return op


@register('flip_lr')
def flip_lr(key: str = 'image') -> Op:
  def op(example):
    example[key] = tf.image.stateless_random_flip_left_right(
        example[key], seed=_next_seed(example))
    return example
  return op


@register('random_resized_crop')
def random_resized_crop(size: int, area_min: float = 0.08, area_max: float = 1.0,
                        method: str = 'bilinear', key: str = 'image') -> Op:
  """The Inception crop: random area and aspect ratio in [3/4, 4/3], resized to `size`."""
  def op(example):
    image = example[key]
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([0, 0, 4], tf.float32), seed=_next_seed(example),
        area_range=(area_min, area_max), aspect_ratio_range=(3 / 4, 4 / 3),
        min_object_covered=0.0, use_image_if_no_bounding_boxes=True)
    crop = tf.slice(image, begin, crop_size)
    resized = tf.image.resize(crop, (size, size), method=method)
    example[key] = tf.cast(tf.round(resized), image.dtype) if image.dtype.is_integer else resized
    return example
  return op


@register('to_rgb')
def to_rgb(key: str = 'image') -> Op:
  """Repeats a single grey channel three times; colour images pass through."""
  def fn(image):
    rgb = tf.cond(tf.shape(image)[-1] == 1,
                  lambda: tf.image.grayscale_to_rgb(image), lambda: image)
    return tf.ensure_shape(rgb, [None, None, 3])
  return _image_op(fn, key)


@register('to_gray')
def to_gray(key: str = 'image') -> Op:
  """Luma of colour images (ITU-R 601-2); grey images pass through."""
  def fn(image):
    gray = tf.cond(tf.shape(image)[-1] == 3,
                   lambda: tf.cast(tf.round(tf.image.rgb_to_grayscale(
                       tf.cast(image[..., :3], tf.float32))), image.dtype),
                   lambda: image[..., :1])
    return tf.ensure_shape(gray, [None, None, 1])
  return _image_op(fn, key)


@register('keep')
def keep(*keys: str) -> Op:
  """Drops every feature but `keys` (and the pipeline's own fields)."""
  def op(example):
    return {k: v for k, v in example.items() if k in keys or k.startswith('_')}
  return op
