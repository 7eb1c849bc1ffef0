"""CLIP's towers: OpenAI's parameter count, the causal text tower read at its end token,
normalised embeddings and the logit scale's initial value."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_jax.models import clip

TINY_VIT = dict(name='vit', variant=None, patch_size=4, width=16, depth=1, num_heads=2,
                mlp_dim=32, pool='gap')
# bos (1), words, eos (2), padding (0).
TOKENS = jnp.array([[1, 5, 6, 7, 2, 0, 0, 0], [1, 8, 2, 0, 0, 0, 0, 0]])


def tiny(**fields):
  return clip.Model(vocab_size=12, image=fields.pop('image', TINY_VIT), max_len=8,
                    text_width=16, text_depth=2, text_heads=2, embed_dim=8, **fields)


def test_vit_b32_has_openais_parameter_count():
  model = clip.Model(**clip.CLIP_VIT_B32)
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                             jnp.zeros((1, 77), jnp.int32))
  counts = {name: sum(x.size for x in jax.tree.leaves(tree))
            for name, tree in variables['params'].items()}
  assert sum(counts.values()) == 151_277_313
  # Each part as in OpenAI's state dict: visual.* 87,849,216 with its projection;
  # token and position embeddings, 12 blocks and ln_final 63,165,952; the text
  # projection; the logit scale.
  assert counts['image_encoder'] + counts['image_projection'] == 87_849_216
  assert counts['text_encoder'] == 63_165_952
  assert counts['text_projection'] == 512 * 512 and counts['logit_scale'] == 1


def test_end_of_text_positions():
  tokens = np.array([[1, 5, 2, 0], [1, 5, 6, 7], [1, 2, 2, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(clip.end_of_text_positions(tokens, eos_id=2, pad_id=0),
                                [2, 3, 1, 0])
  # OpenAI's rule, the argmax of the ids, where the end token has the largest id.
  bpe = np.array([[49406, 320, 1929, 49407, 0, 0], [49406, 49407, 0, 0, 0, 0]])
  np.testing.assert_array_equal(clip.end_of_text_positions(bpe, eos_id=49407, pad_id=0),
                                bpe.argmax(-1))


def test_text_tower_is_causal_and_read_at_the_end_token():
  tower = clip.TextTransformer(vocab_size=12, width=16, depth=2, num_heads=2, max_len=8)
  variables = tower.init(jax.random.key(0), TOKENS)
  encode = jax.jit(tower.apply)
  base = encode(variables, TOKENS)
  chex.assert_shape(base, (2, 16))
  # Whatever follows the end token (padding or words) is never seen.
  after_end = TOKENS.at[0, 5:].set(9).at[1, 3:].set(jnp.array([4, 5, 6, 7, 8]))
  np.testing.assert_allclose(encode(variables, after_end), base, atol=1e-6)
  # A word before it is.
  assert not np.allclose(encode(variables, TOKENS.at[0, 2].set(9))[0], base[0], atol=1e-4)
  # The causal mask itself: the hidden state at position i ignores tokens after i.
  _, state = tower.apply(variables, TOKENS, capture_intermediates=True)
  _, changed = tower.apply(variables, TOKENS.at[0, 3].set(9), capture_intermediates=True)
  hidden = state['intermediates']['Transformer']['encoderblock_1']['__call__'][0]
  hidden_changed = changed['intermediates']['Transformer']['encoderblock_1']['__call__'][0]
  np.testing.assert_allclose(hidden_changed[0, :3], hidden[0, :3], atol=1e-6)
  assert not np.allclose(hidden_changed[0, 3], hidden[0, 3], atol=1e-4)


def test_text_longer_than_the_context_is_an_error():
  tower = clip.TextTransformer(vocab_size=12, width=16, depth=1, num_heads=2, max_len=4)
  with pytest.raises(ValueError, match='length <= 4'):
    tower.init(jax.random.key(0), TOKENS)


@pytest.mark.parametrize('image', [TINY_VIT, dict(name='resnet', depth=18, num_filters=4)])
def test_embeddings_are_unit_vectors_and_the_scale_starts_at_1_over_007(image):
  model = tiny(image=image)
  images = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
  variables = model.init(jax.random.key(0), images, TOKENS)
  image_e, text_e, logit_scale = model.apply(variables, images, TOKENS)
  chex.assert_shape([image_e, text_e], (2, 8))
  np.testing.assert_allclose(jnp.linalg.norm(image_e, axis=-1), 1, rtol=1e-5)
  np.testing.assert_allclose(jnp.linalg.norm(text_e, axis=-1), 1, rtol=1e-5)
  assert math.isclose(float(logit_scale), math.log(1 / 0.07), rel_tol=1e-6)
  # The projections have no bias, as in OpenAI's model.
  assert set(variables['params']['image_projection']) == {'kernel'}
  assert set(variables['params']['text_projection']) == {'kernel'}


def test_an_image_tower_needs_a_family():
  with pytest.raises(ValueError, match="must name the image tower"):
    tiny(image={}).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), TOKENS[:1])
