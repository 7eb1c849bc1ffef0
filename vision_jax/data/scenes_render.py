"""Drawing for the synthetic scenes: shapes as exact signed distances, backgrounds, compositing.

Everything here is numpy on one image; `scenes` and `scenes_video` turn it into
datasets. A pixel's coverage by a shape is about clip(0.5 - distance, 0, 1), so
edges come out anti-aliased without supersampling.
"""

import functools
import math

import numpy as np

SHAPES = ('circle', 'square', 'triangle', 'star', 'cross')
COLORS = ('red', 'orange', 'yellow', 'green', 'cyan', 'blue', 'purple', 'white')
SIZES = ('small', 'medium', 'large')
CLASS_NAMES = tuple(f'{c} {s}' for c in COLORS for s in SHAPES)  # color * 5 + shape
SEGMENTATION_CLASSES = ('background',) + SHAPES

# Drawing.

COLOR_RGB = np.array([(220, 40, 40), (245, 140, 30), (240, 220, 50), (50, 180, 70),
                      (60, 210, 220), (50, 90, 230), (150, 70, 210), (240, 240, 240)],
                     np.float32)
RADIUS = np.array([3.5, 5.0, 7.0], np.float32)  # per size, in pixels of a 32x32 image
SHAPE_EXTENT = 1.35  # the farthest any shape reaches from its centre, in radii
_MIN_VISIBLE = 0.5  # fraction of an object that must stay unoccluded
_LAYOUT_TRIES = 20


def shape_sdf(shape: str, x, y, radius):
  """Signed distance in pixels (negative inside) to `shape` at the origin, y up.

  Exact distances (after Inigo Quilez's 2D distance functions) give anti-aliasing
  for free: a pixel's coverage is about clip(0.5 - distance, 0, 1).
  """
  if shape == 'circle':
    return np.hypot(x, y) - radius
  if shape == 'square':
    qx, qy = np.abs(x) - 0.85 * radius, np.abs(y) - 0.85 * radius
    return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)
  if shape == 'triangle':  # equilateral, pointing up, centroid at the origin
    half_side, k = 1.15 * radius, math.sqrt(3)
    x, y = np.abs(x) - half_side, y + half_side / k
    fold = x + k * y > 0
    x, y = np.where(fold, (x - k * y) / 2, x), np.where(fold, (-k * x - y) / 2, y)
    x = x - np.clip(x, -2 * half_side, 0)
    return -np.hypot(x, y) * np.sign(y)
  if shape == 'star':  # five points, inner radius half the outer
    outer, k1x, k1y = 1.3 * radius, 0.809016994375, -0.587785252292
    x = np.abs(x)
    for kx in (k1x, -k1x):  # fold the plane into one point's wedge
      d = 2 * np.maximum(kx * x + k1y * y, 0)
      x, y = x - d * kx, y - d * k1y
    x, y = np.abs(x), y - outer
    bax, bay = 0.5 * -k1y, 0.5 * k1x - 1
    h = np.clip((x * bax + y * bay) / (bax * bax + bay * bay), 0, outer)
    return np.hypot(x - bax * h, y - bay * h) * np.sign(y * bax - x * bay)
  if shape == 'cross':  # a plus sign
    arm, half_width = 1.05 * radius, 0.36 * radius
    x, y = np.abs(x), np.abs(y)
    x, y = np.maximum(x, y), np.minimum(x, y)
    qx, qy = x - arm, y - half_width
    k = np.maximum(qx, qy)
    wx, wy = np.where(k > 0, qx, half_width - x), np.where(k > 0, qy, -k)
    return np.sign(k) * np.hypot(np.maximum(wx, 0), np.maximum(wy, 0))
  raise ValueError(f'unknown shape {shape!r}')


@functools.cache
def _pixel_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
  ys, xs = np.mgrid[:size, :size].astype(np.float32) + 0.5
  return xs, ys


def object_sdf(shape: str, cx, cy, radius, angle, size: int):
  """The shape's distance on the image's pixel grid; arguments broadcast against it.

  Image rows grow downwards; `angle` turns the shape counterclockwise as seen. For a
  single shape (scalar arguments) only the pixels within its reach are computed; the
  rest are +inf, i.e. not covered.
  """
  cx, cy, radius, angle = (np.asarray(v, np.float32) for v in (cx, cy, radius, angle))
  xs, ys = _pixel_centres(size)
  window = None
  if cx.ndim == cy.ndim == radius.ndim == 0:
    reach = SHAPE_EXTENT * radius + 1
    window = (slice(max(int(cy - reach), 0), max(int(cy + reach) + 1, 0)),
              slice(max(int(cx - reach), 0), max(int(cx + reach) + 1, 0)))
    xs, ys = xs[window], ys[window]
  dx, dy = xs - cx, cy - ys
  cos, sin = np.cos(angle), np.sin(angle)
  sdf = shape_sdf(shape, cos * dx + sin * dy, cos * dy - sin * dx, radius)
  if window is None:
    return sdf
  full = np.full((size, size), np.inf, np.float32)
  full[window] = sdf
  return full


def coverage(sdf):
  return np.clip(0.5 - sdf, 0, 1)


def instance_map(sdfs) -> np.ndarray:
  """uint8 map: i where objects[i - 1] is the front-most object covering the pixel centre."""
  ids = np.zeros(sdfs[0].shape[-2:], np.uint8)
  for i, sdf in enumerate(sdfs, 1):
    ids[sdf <= 0] = i
  return ids


def _muted_color(rng) -> np.ndarray:
  """A dark, desaturated colour, so that every object colour stands out on it."""
  return np.clip(rng.uniform(20, 115) + rng.normal(0, 15, 3), 0, 255)


@functools.cache
def _upsampler(grid: int, size: int) -> np.ndarray:
  """[size, grid] bilinear interpolation weights."""
  pos = (np.arange(size) + 0.5) / size * (grid - 1)
  low = np.minimum(pos.astype(int), grid - 2)
  weights = np.zeros((size, grid), np.float32)
  weights[np.arange(size), low] = 1 - (pos - low)
  weights[np.arange(size), low + 1] = pos - low
  return weights


def background(rng, size: int) -> np.ndarray:
  """float32 [size, size, 3]: a blend of two muted colours by one of four patterns."""
  xs, ys = _pixel_centres(size)
  u, v = xs / size, ys / size
  angle = rng.uniform(0, 2 * np.pi)
  along = np.cos(angle) * u + np.sin(angle) * v
  kind = rng.integers(4)
  if kind == 0:  # linear gradient
    t = (along - along.min()) / (along.max() - along.min())
  elif kind == 1:  # smooth noise
    grid = rng.integers(3, 7)
    weights = _upsampler(grid, size)
    t = weights @ rng.random((grid, grid)).astype(np.float32) @ weights.T
  elif kind == 2:  # stripes
    t = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 6) * along + rng.uniform(0, 2 * np.pi))
  else:  # soft checker
    cells = rng.uniform(2, 5)
    t = 0.5 + 0.5 * np.tanh(3 * np.sin(np.pi * cells * u) * np.sin(np.pi * cells * v))
  low, high = _muted_color(rng), _muted_color(rng)
  return (low + t[..., None] * (high - low)).astype(np.float32)


def composite(image, sdfs, colors) -> np.ndarray:
  """Draws the objects back to front over `image` with anti-aliased edges."""
  for sdf, color in zip(sdfs, colors):
    alpha = coverage(sdf)[..., None]
    image = image + alpha * (color - image)
  return image


def to_uint8(image) -> np.ndarray:
  return np.clip(np.round(image), 0, 255).astype(np.uint8)


def random_object_style(rng, n: int, size: int, classes) -> dict[str, np.ndarray]:
  """Class, size, radius, tilt and slightly jittered colour of `n` objects."""
  colors, shapes = np.divmod(rng.choice(classes, n), len(SHAPES))
  sizes = rng.integers(len(SIZES), size=n)
  jitter = rng.uniform(0.93, 1.07, n).astype(np.float32)
  return dict(shape=shapes, color=colors, size=sizes,
              radius=RADIUS[sizes] * (size / 32) * jitter,
              angle=rng.uniform(-0.4, 0.4, n).astype(np.float32),
              rgb=np.clip(COLOR_RGB[colors] + rng.normal(0, 10, (n, 3)), 0, 255).astype(np.float32))


def place_objects(rng, style, size: int) -> tuple[list[np.ndarray], np.ndarray]:
  """Distance maps of the objects placed, and which objects are.

  Draws centres until every object is at least half visible; objects still hidden
  more than that after the last try are left out, so that whatever is drawn is
  annotated and recognisable.
  """
  margin = SHAPE_EXTENT * style['radius'][:, None] + 0.5
  for _ in range(_LAYOUT_TRIES):
    centres = rng.uniform(margin, size - margin, (len(margin), 2))
    sdfs = [object_sdf(SHAPES[s], cx, cy, r, a, size) for s, (cx, cy), r, a
            in zip(style['shape'], centres, style['radius'], style['angle'])]
    areas = np.array([np.sum(sdf <= 0) for sdf in sdfs])
    visible = np.bincount(instance_map(sdfs).ravel(), minlength=len(sdfs) + 1)[1:]
    keep = visible >= _MIN_VISIBLE * areas
    if keep.all():
      break
  # Removing objects only uncovers the rest, so the kept ones stay visible enough.
  return [sdf for sdf, k in zip(sdfs, keep) if k], keep
