"""SimCLR's augmentations (Chen et al. 2020, appendix A), stateless from the example seed.

  simclr_augment(96)   # = random_resized_crop + flip_lr + colour jitter (p 0.8)
                       #   + random grayscale (p 0.2) + Gaussian blur (p 0.5)

Two views for a contrastive method, drawn independently because every random op
splits the example's seed afresh:

  copy('image', 'view1')|copy('image', 'view2')|simclr_augment(96, key='view1')|
  simclr_augment(96, key='view2')|value_range(-1, 1, key='view1')|...

The colour ops work on RGB images in [0, 1] when float, or in [0, 255] when integer
(converted to float and back, rounding), so apply them before `value_range`. They
treat a clip [T, H, W, 3] as one image: every frame gets the same parameters.
"""

import tensorflow as tf

from vision_jax.data.preprocess import Op, inkey_outkey, register


def _in_unit_range(fn):
  """Runs fn(float image in [0, 1], ...) on float or integer images, keeping the dtype."""
  def wrapped(image, *args, **kwargs):
    if not image.dtype.is_integer:
      return fn(image, *args, **kwargs)
    out = fn(tf.cast(image, tf.float32) / 255.0, *args, **kwargs)
    return tf.saturate_cast(tf.round(out * 255.0), image.dtype)
  return wrapped


def _maybe(seed, prob: float, fn, image):
  """fn(image) with probability `prob`, else the image."""
  if prob >= 1:
    return fn(image)
  if prob <= 0:
    return image
  return tf.cond(tf.random.stateless_uniform([], seed) < prob, lambda: fn(image),
                 lambda: image)


@_in_unit_range
def color_jitter_image(image, seed, strength: float = 1.0, brightness: float = 0.8,
                       contrast: float = 0.8, saturation: float = 0.8, hue: float = 0.2,
                       random_order: bool = True):
  """SimCLR's colour distortion of a float image in [0, 1], always applied.

  Brightness adds a delta in [-b, b]; contrast and saturation scale by a factor in
  [max(0, 1 - c), 1 + c]; hue shifts by [-h, h]; each amount is times `strength`. The
  four go in a random order, clipping to [0, 1] after each, as SimCLR's code does.
  """
  seeds = tf.random.experimental.stateless_split(seed, num=5)
  uniform = lambda i, low, high: tf.random.stateless_uniform([], seeds[i], low, high)
  b, c, s, h = (strength * v for v in (brightness, contrast, saturation, hue))
  delta = uniform(0, -b, b)
  contrast_factor = uniform(1, max(0.0, 1 - c), 1 + c)
  saturation_factor = uniform(2, max(0.0, 1 - s), 1 + s)
  hue_delta = uniform(3, -h, h)
  transforms = [lambda x: x + delta,
                lambda x: tf.image.adjust_contrast(x, contrast_factor),
                lambda x: tf.image.adjust_saturation(x, saturation_factor),
                lambda x: tf.image.adjust_hue(x, hue_delta)]
  image = tf.cast(image, tf.float32)
  if not random_order:
    for transform in transforms:
      image = tf.clip_by_value(transform(image), 0.0, 1.0)
    return image
  order = tf.argsort(tf.random.stateless_uniform([4], seeds[4]))
  for i in range(4):
    image = tf.switch_case(order[i], [lambda t=t, x=image: t(x) for t in transforms])
    image = tf.clip_by_value(image, 0.0, 1.0)
  return image


@_in_unit_range
def grayscale_image(image):
  """Luma, repeated on the three channels."""
  return tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(tf.cast(image, tf.float32)))


def blur_kernel_size(height, fraction: float = 0.1):
  """SimCLR's odd kernel side: `fraction` of the height, rounded down to an odd size
  (an int for a static height, else a tensor)."""
  if isinstance(height, int):
    return int(height * fraction) // 2 * 2 + 1
  return tf.cast(tf.cast(height, tf.float32) * fraction, tf.int32) // 2 * 2 + 1


@_in_unit_range
def gaussian_blur_image(image, sigma, kernel_size: int):
  """Separable Gaussian blur with a `kernel_size` kernel, reflecting at the borders
  (scipy.ndimage's 'reflect'; SimCLR zero-pads, which darkens the edges)."""
  radius = kernel_size // 2  # 0 gives the identity
  x = tf.range(-radius, radius + 1, dtype=tf.float32)
  weights = tf.exp(-x**2 / (2.0 * tf.cast(sigma, tf.float32)**2))
  weights /= tf.reduce_sum(weights)
  channels = tf.shape(image)[-1]
  batched = tf.reshape(tf.cast(image, tf.float32),
                       tf.concat([[-1], tf.shape(image)[-3:]], 0))
  batched = tf.pad(batched, [[0, 0], [radius, radius], [radius, radius], [0, 0]],
                   mode='SYMMETRIC')
  vertical = tf.tile(tf.reshape(weights, [-1, 1, 1, 1]), [1, 1, channels, 1])
  horizontal = tf.reshape(vertical, [1, -1, channels, 1])
  blurred = tf.nn.depthwise_conv2d(batched, vertical, [1, 1, 1, 1], 'VALID')
  blurred = tf.nn.depthwise_conv2d(blurred, horizontal, [1, 1, 1, 1], 'VALID')
  return tf.reshape(blurred, tf.shape(image))


@register('color_jitter')
@inkey_outkey('image', seeded=True)
def color_jitter(strength: float = 1.0, prob: float = 0.8, brightness: float = 0.8,
                 contrast: float = 0.8, saturation: float = 0.8, hue: float = 0.2,
                 random_order: bool = True):
  """SimCLR's colour jitter of strength `strength`, applied with probability `prob`."""
  def fn(image, seed):
    seeds = tf.random.experimental.stateless_split(seed, num=2)
    return _maybe(seeds[0], prob, lambda x: color_jitter_image(
        x, seeds[1], strength, brightness, contrast, saturation, hue, random_order), image)
  return fn


@register('random_grayscale')
@inkey_outkey('image', seeded=True)
def random_grayscale(prob: float = 0.2):
  """Replaces the colours by their luma (on all three channels) with probability `prob`."""
  return lambda image, seed: _maybe(seed, prob, grayscale_image, image)


@register('gaussian_blur')
@inkey_outkey('image', seeded=True)
def gaussian_blur(prob: float = 0.5, sigma_min: float = 0.1, sigma_max: float = 2.0,
                  kernel_size: int | None = None):
  """With probability `prob`, blurs with sigma uniform in [sigma_min, sigma_max] and
  a kernel of 10% of the image height (odd), or `kernel_size`."""
  def fn(image, seed):
    seeds = tf.random.experimental.stateless_split(seed, num=2)
    sigma = tf.random.stateless_uniform([], seeds[1], sigma_min, sigma_max)
    height = image.shape[-3] or tf.shape(image)[-3]
    size = kernel_size or blur_kernel_size(height)
    return _maybe(seeds[0], prob, lambda x: gaussian_blur_image(x, sigma, size), image)
  return fn


@register('simclr_augment')
def simclr_augment(size, strength: float = 1.0, blur: bool = True, blur_prob: float = 0.5,
                   area_min: float = 0.08, key: str | None = None, inkey: str = 'image',
                   outkey: str = 'image') -> Op:
  """SimCLR's augmentation of one view: random resized crop to `size` (area
  [area_min, 1], aspect [3/4, 4/3]) and flip, colour jitter of `strength` (p 0.8),
  grayscale (p 0.2) and, with `blur`, Gaussian blur (p `blur_prob`, 0.5 on ImageNet;
  SimCLR leaves it out on CIFAR)."""
  from vision_jax.data import ops_image  # pylint: disable=g-import-not-at-top
  inkey, outkey = (key, key) if key else (inkey, outkey)
  ops = [ops_image.random_resized_crop(size, area_min=area_min, inkey=inkey, outkey=outkey),
         ops_image.flip_lr(key=outkey),
         color_jitter(strength, key=outkey),
         random_grayscale(key=outkey)]
  if blur:
    ops.append(gaussian_blur(blur_prob, key=outkey))

  def op(example):
    for o in ops:
      example = o(example)
    return example
  return op
