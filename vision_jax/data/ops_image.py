"""Image preprocessing ops: decoding, value ranges, channels, and geometry.

Images are [..., H, W, C]: a still [H, W, C] or a clip [T, H, W, C], whose frames all
get the same crop and flip.

The geometric ops (`flip_lr`, `random_crop`, `central_crop`, `resize`, `resize_small`,
`random_resized_crop`) move several features with one draw:

  flip_lr(label_maps=('segmentation',), instance_maps=('instances',),
          boxes=('objects/bbox',))

  * the image at `inkey` (written to `outkey`; `key=` sets both) decides the geometry
    and is interpolated with `method`;
  * `label_maps` ([..., H, W, 1] integer maps, e.g. segmentation and instance ids) get
    the same transform with nearest-neighbour sampling, in place, so they stay
    integer-valued and aligned;
  * `boxes` ([N, 4] normalised ymin, xmin, ymax, xmax, like TFDS BBox) move with the
    image, in place. A crop clips partly cut boxes and drops boxes cut away
    entirely, together with the other fields of the same object: the other fields
    of the nested dict (`example['objects']`) or flat keys with the same prefix
    ('objects/...'). Pad boxes (`pad_sequence`) after the geometric ops.
  * `instance_maps` (pixel value i marks objects[i - 1], 0 none) move like label maps
    and are renumbered when a crop drops objects, so that they keep naming the
    objects that remain (the dropped objects' pixels, if any are left, become 0).
"""

import tensorflow as tf

from vision_jax.data.preprocess import Op, get_key, inkey_outkey, next_seed, register
from vision_jax.data.preprocess import set_key, siblings


@register('decode')
@inkey_outkey('image')
def decode(channels: int = 0):
  """Decodes encoded image bytes (the pipeline skips TFDS's own image decoding); a
  vector of encoded frames decodes to a clip."""
  def one(data):
    return tf.io.decode_image(data, channels=channels, expand_animations=False)

  def fn(data):
    if data.dtype != tf.string:
      return data  # Already decoded.
    if data.shape.rank == 1:
      return tf.map_fn(one, data, fn_output_signature=tf.uint8)
    return one(data)
  return fn


@register('value_range')
@inkey_outkey('image')
def value_range(low: float, high: float, in_low: float = 0.0, in_high: float = 255.0):
  """Maps [in_low, in_high] linearly to [low, high], as float32."""
  def fn(image):
    image = tf.cast(image, tf.float32)
    return low + (image - in_low) * ((high - low) / (in_high - in_low))
  return fn


@register('normalize')
@inkey_outkey('image')
def normalize(mean, std):
  """Subtracts the per-channel mean and divides by std (given in the current range)."""
  return lambda image: (tf.cast(image, tf.float32) - mean) / std


def _with_channels(image, channels: int):
  return tf.ensure_shape(image, image.shape[:-1].concatenate([channels]))


@register('to_rgb')
@inkey_outkey('image')
def to_rgb():
  """Repeats a single grey channel three times; colour images pass through."""
  def fn(image):
    rgb = tf.cond(tf.shape(image)[-1] == 1,
                  lambda: tf.image.grayscale_to_rgb(image), lambda: image)
    return _with_channels(rgb, 3)
  return fn


@register('to_gray')
@inkey_outkey('image')
def to_gray():
  """Luma of colour images (ITU-R 601-2); grey images pass through."""
  def fn(image):
    gray = tf.cond(tf.shape(image)[-1] == 3,
                   lambda: tf.cast(tf.round(tf.image.rgb_to_grayscale(
                       tf.cast(image[..., :3], tf.float32))), image.dtype),
                   lambda: image[..., :1])
    return _with_channels(gray, 1)
  return fn


# ----------------------------------------------------------------------------- geometry


def _pair(size):
  return None if size is None else (size, size) if isinstance(size, int) else tuple(size)


def _as_keys(keys) -> tuple[str, ...]:
  return (keys,) if isinstance(keys, str) else tuple(keys)


class _Joint:
  """The features one geometric op moves together (see the module docstring)."""

  def __init__(self, key=None, inkey='image', outkey='image', label_maps=(), boxes=(),
               instance_maps=()):
    self.inkey, self.outkey = (key, key) if key else (inkey, outkey)
    self.label_maps, self.boxes = _as_keys(label_maps), _as_keys(boxes)
    self.instance_maps = _as_keys(instance_maps)
    if self.instance_maps and len(self.boxes) != 1:
      raise ValueError('instance_maps need the one boxes key of their objects, e.g. '
                       "boxes=('objects/bbox',)")

  def image(self, example):
    return get_key(example, self.inkey)

  def apply(self, example, image_fn, map_fn, box_fn=None):
    """Sets outkey to image_fn(image), each label map to map_fn(map), and the boxes to
    box_fn(boxes) -> (boxes, keep or None); `keep` also filters the boxes' siblings."""
    set_key(example, self.outkey, image_fn(self.image(example)))
    for k in self.label_maps + self.instance_maps:
      set_key(example, k, map_fn(get_key(example, k)))
    for k in self.boxes if box_fn else ():
      original = get_key(example, k)
      boxes, keep = box_fn(tf.cast(original, tf.float32))
      boxes = tf.cast(boxes, original.dtype)
      if keep is None:
        set_key(example, k, boxes)
        continue
      for other in siblings(example, k):  # the object's other fields
        value = get_key(example, other)
        if value.shape.rank:
          set_key(example, other, tf.boolean_mask(value, keep))
      set_key(example, k, tf.boolean_mask(boxes, keep))
      # Old id i -> its rank among the kept objects (1-based), 0 if dropped.
      kept = tf.cast(keep, tf.int32)
      renumber = tf.concat([[0], tf.math.cumsum(kept) * kept], 0)
      for m in self.instance_maps:
        ids = get_key(example, m)
        set_key(example, m, tf.cast(tf.gather(renumber, tf.cast(ids, tf.int32)), ids.dtype))
    return example


def _height_width(image):
  shape = tf.shape(image)
  return shape[-3], shape[-2]


def _crop(image, top, left, height, width, static_size=None):
  cropped = image[..., top:top + height, left:left + width, :]
  if static_size is not None:
    cropped = tf.ensure_shape(
        cropped, image.shape[:-3].concatenate([*static_size, image.shape[-1]]))
  return cropped


def _pad(image, pad: int):
  if not pad:
    return image
  return tf.pad(image, [[0, 0]] * (image.shape.rank - 3) + [[pad, pad], [pad, pad], [0, 0]])


def _resize(image, size, method: str):
  resized = tf.image.resize(image, size, method=method)
  if method == 'nearest' or not image.dtype.is_integer:
    return resized
  return tf.saturate_cast(tf.round(resized), image.dtype)


def _crop_boxes(image_hw, top, left, crop_hw, pad=0):
  """Box transform of a crop at (top, left) of the image padded by `pad` on each side."""
  height, width = (tf.cast(v, tf.float32) for v in image_hw)
  crop_h, crop_w = (tf.cast(v, tf.float32) for v in crop_hw)
  top, left = tf.cast(top - pad, tf.float32), tf.cast(left - pad, tf.float32)
  scale = tf.stack([height / crop_h, width / crop_w] * 2)
  shift = tf.stack([top / crop_h, left / crop_w] * 2)

  def fn(boxes):
    moved = tf.clip_by_value(boxes * scale - shift, 0.0, 1.0)
    keep = (moved[:, 2] > moved[:, 0]) & (moved[:, 3] > moved[:, 1])
    return moved, keep
  return fn


def _windowed(joint: _Joint, example, top, left, height, width, static_size=None,
              pad: int = 0, resize_to=None, method: str = 'bilinear'):
  """Crops every feature of `joint` to the window (and resizes to `resize_to`)."""
  image_hw = _height_width(joint.image(example))

  def transform(x, interpolation):
    x = _crop(_pad(x, pad), top, left, height, width, static_size)
    return x if resize_to is None else _resize(x, resize_to, interpolation)
  return joint.apply(example, lambda x: transform(x, method),
                     lambda x: transform(x, 'nearest'),
                     _crop_boxes(image_hw, top, left, (height, width), pad))


@register('flip_lr')
def flip_lr(prob: float = 0.5, **keys) -> Op:
  """Mirrors left-right with probability `prob`: all frames of a clip, its label maps
  and boxes ([ymin, xmin, ymax, xmax] -> [ymin, 1 - xmax, ymax, 1 - xmin]) together."""
  joint = _Joint(**keys)

  def op(example):
    flip = tf.random.stateless_uniform([], next_seed(example)) < prob
    mirror = lambda x: tf.cond(flip, lambda: tf.reverse(x, [-2]), lambda: x)
    flip_boxes = lambda b: tf.stack([b[:, 0], 1 - b[:, 3], b[:, 2], 1 - b[:, 1]], 1)
    return joint.apply(example, mirror, mirror,
                       lambda b: (tf.cond(flip, lambda: flip_boxes(b), lambda: b), None))
  return op


def _offset(seed, room):
  """An integer uniform in [0, room]."""
  u = tf.random.stateless_uniform([], seed)
  return tf.minimum(tf.cast(u * tf.cast(room + 1, tf.float32), tf.int32), room)


@register('random_crop')
def random_crop(size=None, pad: int = 0, **keys) -> Op:
  """Zero-pads by `pad` pixels on each side, then crops `size` (default: the input's
  own size, i.e. a random translation by up to `pad` pixels) at random."""
  size = _pair(size)
  joint = _Joint(**keys)

  def op(example):
    height, width = _height_width(joint.image(example))
    crop = (height, width) if size is None else size
    room_h, room_w = height + 2 * pad - crop[0], width + 2 * pad - crop[1]
    check = tf.debugging.assert_non_negative(
        tf.minimum(room_h, room_w), message=f'random_crop({size}) is larger than the image')
    with tf.control_dependencies([check]):
      seeds = tf.random.experimental.stateless_split(next_seed(example), num=2)
      top, left = _offset(seeds[0], room_h), _offset(seeds[1], room_w)
    static = size or joint.image(example).shape[-3:-1]
    return _windowed(joint, example, top, left, *crop, static_size=static, pad=pad)
  return op


@register('central_crop')
def central_crop(size, **keys) -> Op:
  """The central `size` (int or (h, w)) window."""
  size = _pair(size)
  joint = _Joint(**keys)

  def op(example):
    height, width = _height_width(joint.image(example))
    top, left = (height - size[0]) // 2, (width - size[1]) // 2
    return _windowed(joint, example, top, left, *size, static_size=size)
  return op


@register('random_resized_crop')
def random_resized_crop(size, area_min: float = 0.08, area_max: float = 1.0,
                        aspect_min: float = 3 / 4, aspect_max: float = 4 / 3,
                        method: str = 'bilinear', **keys) -> Op:
  """The Inception crop: a window of random area (as a fraction of the image) and
  aspect ratio (width / height), resized to `size`."""
  size = _pair(size)
  joint = _Joint(**keys)

  def op(example):
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(joint.image(example))[-3:], tf.zeros([0, 0, 4], tf.float32),
        seed=next_seed(example), area_range=(area_min, area_max),
        aspect_ratio_range=(aspect_min, aspect_max), min_object_covered=0.0,
        use_image_if_no_bounding_boxes=True)
    return _windowed(joint, example, begin[0], begin[1], crop_size[0], crop_size[1],
                     resize_to=size, method=method)
  return op


@register('resize')
def resize(size, method: str = 'bilinear', **keys) -> Op:
  """Resizes to `size` (int for square, or (h, w)), keeping the input dtype; label
  maps with nearest neighbours. Normalised boxes stay as they are."""
  size = _pair(size)
  joint = _Joint(**keys)
  return lambda example: joint.apply(example, lambda x: _resize(x, size, method),
                                     lambda x: _resize(x, size, 'nearest'))


@register('resize_small')
def resize_small(smaller_size: int, method: str = 'bilinear', **keys) -> Op:
  """Resizes so that the shorter side is `smaller_size`, keeping the aspect ratio."""
  joint = _Joint(**keys)

  def op(example):
    height, width = (tf.cast(v, tf.float32) for v in _height_width(joint.image(example)))
    ratio = smaller_size / tf.minimum(height, width)
    size = tf.cast(tf.round(tf.stack([height * ratio, width * ratio])), tf.int32)
    return joint.apply(example, lambda x: _resize(x, size, method),
                       lambda x: _resize(x, size, 'nearest'))
  return op


@register('binarize')
@inkey_outkey('image')
def binarize(threshold: float = 0.5):
  """Float32 1 where the image, on the [0, 1] range (after `value_range(0, 1)`), is
  above `threshold`, else 0: binary images for a Bernoulli likelihood (e.g. MNIST
  thresholded at 0.5), with the same rule as `naive_bayes.threshold`."""
  return lambda image: tf.cast(tf.cast(image, tf.float32) > threshold, tf.float32)
