"""Video ops on clips [T, H, W, C]: choosing frames.

The spatial ops of `ops_image` take clips as they are, with one crop and one flip for
all frames, e.g. for `scenes_video`:

  temporal_crop(8, stride=2)|random_crop(28, key='video')|flip_lr(key='video')   # train
  temporal_crop(8, stride=2, central=True)|central_crop(28, key='video')        # eval
  central_crop(28, key='video')|temporal_clips(4, 8, stride=2)                 # multi-clip

(`flip_lr` would swap `scenes_video`'s 'moving left' and 'moving right', and the two
rotations: a label-preserving augmentation for actions, not for these motions.)
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


@register('temporal_clips')
@inkey_outkey('video')
def temporal_clips(num_clips: int, num_frames: int, stride: int = 1):
  """`num_clips` clips of `num_frames` frames `stride` apart, [K, T, H, W, C], starting
  at evenly spaced frames from the first to the last possible start (multi-clip
  evaluation: the model's logits are averaged over them)."""
  span = (num_frames - 1) * stride + 1

  def fn(video):
    room = tf.shape(video)[0] - span
    check = tf.debugging.assert_non_negative(
        room, message=f'temporal_clips({num_clips}, {num_frames}, stride={stride}) needs '
                      f'{span} frames')
    with tf.control_dependencies([check]):
      starts = tf.cast(tf.round(tf.linspace(0.0, tf.cast(room, tf.float32), num_clips)),
                       tf.int32)
    indices = starts[:, None] + stride * tf.range(num_frames)[None]
    clips = tf.gather(video, indices)
    return tf.ensure_shape(clips, [num_clips, num_frames, *video.shape[1:]])
  return fn


@register('temporal_subsample')
@inkey_outkey('video')
def temporal_subsample(stride: int):
  """Every `stride`-th frame, from the first."""
  return lambda video: video[::stride]
