"""Video ops on clips [T, H, W, C]: choosing frames.

The spatial ops of `ops_image` take clips as they are, with one crop and one flip for
all frames, e.g. for `scenes_video`:

  temporal_crop(8, stride=2)|random_crop(28, key='video')|flip_lr(key='video')   # train
  temporal_crop(8, stride=2, central=True)|central_crop(28, key='video')        # eval
"""

import tensorflow as tf

from vision_jax.data.preprocess import inkey_outkey, register


@register('temporal_crop')
@inkey_outkey('video', seeded=True)
def temporal_crop(num_frames: int, stride: int = 1, central: bool = False):
  """`num_frames` frames `stride` apart, starting at random (training) or, with
  `central`, in the middle of the clip (evaluation)."""
  span = (num_frames - 1) * stride + 1

  def fn(video, seed):
    room = tf.shape(video)[0] - span
    check = tf.debugging.assert_non_negative(
        room, message=f'temporal_crop({num_frames}, stride={stride}) needs {span} frames')
    with tf.control_dependencies([check]):
      if central:
        start = room // 2
      else:
        u = tf.random.stateless_uniform([], seed)
        start = tf.minimum(tf.cast(u * tf.cast(room + 1, tf.float32), tf.int32), room)
    frames = video[start:start + span:stride]
    return tf.ensure_shape(frames, [num_frames, *video.shape[1:]])
  return fn


@register('temporal_subsample')
@inkey_outkey('video')
def temporal_subsample(stride: int):
  """Every `stride`-th frame, from the first."""
  return lambda video: video[::stride]
