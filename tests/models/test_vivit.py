"""ViViT's factorised encoder: tubelets, spatial then temporal attention, class-token attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_jax.evaluators import temporal_attention
from vision_jax.models import vivit

TINY = dict(width=16, spatial_depth=1, temporal_depth=1, num_heads=2, patch_size=4,
            tubelet_frames=2, num_classes=5)


def test_shapes_of_the_named_outputs():
  model = vivit.Model(**TINY)
  clips = jnp.zeros((2, 8, 8, 12, 3))
  maps = model.apply(model.init(jax.random.key(0), clips), clips, method='feature_maps')
  assert maps['stem'].shape == (2, 4, 2, 3, 16) and maps['tokens'].shape == (2, 4, 2, 3, 16)
  assert maps['frames'].shape == (2, 4, 16) and maps['logits'].shape == (2, 5)


def test_the_temporal_encoder_sees_frame_order_and_the_spatial_one_does_not_mix_time():
  model = vivit.Model(**TINY)
  clips = jax.random.normal(jax.random.key(1), (2, 8, 8, 8, 3))
  variables = model.init(jax.random.key(0), clips)
  maps = model.apply(variables, clips, method='feature_maps')
  # Swapping the first two tubelets (frames 0-1 with 2-3) swaps their spatial outputs...
  swapped = clips[:, np.array([2, 3, 0, 1, 4, 5, 6, 7])]
  maps_swapped = model.apply(variables, swapped, method='feature_maps')
  np.testing.assert_allclose(maps_swapped['frames'][:, [1, 0, 2, 3]], maps['frames'],
                             atol=1e-5)
  # ... but not the class, since time has learned positions.
  assert not np.allclose(maps_swapped['logits'], maps['logits'], atol=1e-5)


def test_class_token_attention_is_a_distribution_over_time():
  model = vivit.Model(**TINY, sow_attention_weights=True)
  clips = jax.random.normal(jax.random.key(1), (3, 8, 8, 8, 3))
  variables = model.init(jax.random.key(0), clips)
  _, state = model.apply(variables, clips, mutable=['intermediates'])
  weights = {'temporal_encoder/encoderblock_0':
             state['intermediates']['temporal_encoder']['encoderblock_0'][
                 'MultiHeadDotProductAttention_0']['attention_weights'][0]}
  attention = temporal_attention.class_token_attention(weights, 'temporal_encoder')
  assert attention.shape == (3, 4)
  np.testing.assert_allclose(attention.sum(-1), 1, rtol=1e-6)
  assert (attention >= 0).all()


def test_clips_that_do_not_divide_into_tubelets_are_named():
  with pytest.raises(ValueError, match='do not divide into tubelets of 2 frames of 4x4'):
    vivit.Model(**TINY).init(jax.random.key(0), jnp.zeros((1, 7, 8, 8, 3)))
