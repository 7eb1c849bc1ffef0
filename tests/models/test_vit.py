"""Tests for the Vision Transformers (vit.py) and the shared Transformer blocks
(transformer.py).

Full-size networks are only traced with `jax.eval_shape`; real forward passes use a
width of 16, one or two blocks and 8x12 images, so the file runs in seconds on a CPU.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_jax import models
from vision_jax.models import transformer, vit

# Tiny networks run in milliseconds; XLA's optimising compile is what costs.
jit = functools.partial(jax.jit, compiler_options={
    'xla_backend_optimization_level': 0,
    'xla_llvm_disable_expensive_passes': True,
})

TINY = dict(variant=None, width=16, depth=1, num_heads=2, patch_size=4, num_classes=5)
SHAPE = (3, 8, 12, 3)  # a 2x3 grid of 4x4 patches


def images(shape=SHAPE, seed=0):
  return jax.random.normal(jax.random.key(seed), shape)


def random_variables(module, *args, seed=0):
  """Variables of the shapes `module.init` gives, drawn by NumPy: compiling the
  initialisers' random numbers is what costs, and these tests need no particular values."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), *args)
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(0.5 * rng.standard_normal(s.shape), s.dtype),
                      shapes)


def count_params(model, image_size=224) -> int:
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  return sum(p.size for p in jax.tree.leaves(variables['params']))


# torchvision's documented counts (vit_b_16, vit_b_32, vit_l_16) and timm's (vit_tiny,
# vit_small_patch16_224, the DeiT sizes), all with 1000 classes at 224x224. Each is also
# the sum over torchvision's layers, e.g. for S/16 (D = 384, MLP 1536, 12 blocks):
# patch conv 384*768+384, class token 384, position embedding 197*384, per block
# 2 LayerNorms 4*384, qkv 384*1152+1152, out 384*384+384, MLP 384*1536+1536+1536*384+384,
# final LayerNorm 2*384, head 384*1000+1000 = 22,050,664.
@pytest.mark.parametrize('variant, expected', [
    ('Ti/16', 5_717_416),
    ('S/16', 22_050_664),
    ('B/16', 86_567_656),
    ('B/32', 88_224_232),
    ('L/16', 304_326_632),
])
def test_param_counts_match_torchvision_and_timm(variant, expected):
  assert count_params(vit.Model(variant=variant, num_classes=1000)) == expected


def test_gap_and_sincos_drop_the_class_token_and_position_parameters():
  model = vit.Model(variant='B/16', pool='gap', posemb='sincos2d', num_classes=1000)
  assert count_params(model) == 86_567_656 - 768 - 197 * 768


def test_variants_decode_like_big_vision():
  assert vit.decode_variant('L/32') == dict(width=1024, depth=24, mlp_dim=4096,
                                            num_heads=16, patch_size=32)
  assert vit.decode_variant('S') == dict(width=384, depth=12, mlp_dim=1536, num_heads=6)
  assert vit.decode_variant(None) == {}
  # Explicit sizes override the variant's; an odd patch size is an integer like any.
  sizes = vit.Model(variant='S/16', depth=2, patch_size=14).sizes()
  assert sizes == dict(width=384, depth=2, mlp_dim=1536, num_heads=6, patch_size=(14, 14))
  assert vit.Model(**TINY).sizes()['mlp_dim'] == 64  # 4 * width when nothing gives it
  for bad in ('X/16', 'B/sixteen', 'B16'):
    with pytest.raises(ValueError, match='ViT variant must be'):
      vit.decode_variant(bad)
  with pytest.raises(ValueError, match='leaves patch_size unset'):
    vit.Model(variant='B').sizes()
  with pytest.raises(ValueError, match='not a multiple of num_heads'):
    vit.Model(**{**TINY, 'num_heads': 3}).sizes()


@functools.cache
def tiny_variables(**overrides):
  """Variables of the tiny ViT with these attributes, drawn once."""
  return random_variables(vit.Model(**{**TINY, **overrides}), images())


@functools.cache
def tiny_maps(train=False, **overrides):
  """f(variables, x, key): the tiny ViT's feature maps, compiled once per model."""
  model = vit.Model(**{**TINY, **overrides})
  return jit(lambda variables, x, key: model.apply(
      variables, x, train=train, method='feature_maps', rngs={'dropout': key}))


KEY = jax.random.key(1)


@pytest.mark.parametrize('pool', vit.POOLS)
@pytest.mark.parametrize('posemb', vit.POSEMBS)
def test_feature_map_shapes(pool, posemb):
  config = dict(name='vit', **TINY, pool=pool, posemb=posemb)
  model = models.get_model(config)
  assert model == vit.Model(**{**TINY, 'pool': pool, 'posemb': posemb})  # found by name
  x = images()
  variables = tiny_variables(pool=pool, posemb=posemb)
  params = variables['params']
  assert ('cls' in params) == (pool == 'cls')
  assert ('pos_embedding' in params) == (posemb == 'learn')
  if posemb == 'learn':
    chex.assert_shape(params['pos_embedding'], (1, 6 + (pool == 'cls'), 16))
  maps = tiny_maps(pool=pool, posemb=posemb)(variables, x, KEY)
  assert {k: v.shape for k, v in maps.items()} == {
      'stem': (3, 2, 3, 16), 'tokens': (3, 2, 3, 16), 'pre_logits': (3, 16),
      'logits': (3, 5)}
  chex.assert_type(maps['logits'], jnp.float32)
  chex.assert_tree_all_finite(maps)
  if pool == 'gap':
    chex.assert_trees_all_close(maps['pre_logits'], jnp.mean(maps['tokens'], axis=(1, 2)),
                                atol=1e-6)


def test_call_returns_the_logits():
  x = images()
  logits = jit(vit.Model(**TINY).apply)(tiny_variables(), x)
  chex.assert_trees_all_close(logits, tiny_maps()(tiny_variables(), x, KEY)['logits'],
                              atol=1e-6)


def test_headless_backbone_returns_pre_logits_without_head_params():
  model = vit.Model(**TINY, representation_size=8)
  headless = vit.Model(**{**TINY, 'num_classes': None}, representation_size=8)
  x = images()
  variables = random_variables(model, x)
  params = dict(variables['params'])
  del params['head']
  chex.assert_trees_all_equal_shapes(
      jax.eval_shape(headless.init, jax.random.key(0), x)['params'], params)
  features, maps, full = jit(lambda v, p, x: (
      headless.apply({'params': p}, x),
      headless.apply({'params': p}, x, method='feature_maps'),
      model.apply(v, x, method='feature_maps')))(variables, params, x)
  chex.assert_shape(features, (3, 8))  # the representation layer's width
  assert set(maps) == {'stem', 'tokens', 'pre_logits'}
  chex.assert_trees_all_close(features, full['pre_logits'], atol=1e-6)
  assert float(jnp.max(jnp.abs(features))) <= 1  # the tanh of the representation


def test_an_image_size_that_is_not_a_multiple_of_the_patch_is_a_one_line_error():
  with pytest.raises(ValueError) as error:
    jax.eval_shape(vit.Model(**TINY).init, KEY, jnp.zeros((1, 10, 12, 3)))
  assert str(error.value) == (
      'ViT image size 10x12 is not a multiple of the patch size 4x4.')
  with pytest.raises(ValueError, match='pool must be one of'):
    jax.eval_shape(vit.Model(**TINY, pool='mean').init, KEY, jnp.zeros((1, 8, 8, 3)))


def test_dropout_only_in_train_mode():
  # Dropout has no parameters: the plain model's variables serve every rate.
  variables, x = tiny_variables(), images()
  plain = tiny_maps()(variables, x, KEY)['logits']
  rates = dict(dropout_rate=0.3, attention_dropout_rate=0.3)
  evaluated = tiny_maps(**rates)(variables, x, KEY)['logits']
  chex.assert_trees_all_close(evaluated, plain, atol=1e-6)
  train = tiny_maps(train=True, **rates)
  train_a, train_b = (train(variables, x, jax.random.key(k))['logits'] for k in (1, 2))
  assert float(jnp.max(jnp.abs(train_a - train_b))) > 1e-3
  assert float(jnp.max(jnp.abs(train_a - plain))) > 1e-3
  # Attention dropout alone changes the outputs too.
  out = tiny_maps(train=True, attention_dropout_rate=0.3)(variables, x, KEY)['logits']
  assert float(jnp.max(jnp.abs(out - plain))) > 1e-3


def permute_patches(x, order, patch=4):
  """Moves patch order[k] of each image (row-major over the grid) to place k."""
  b, height, width, c = x.shape
  h, w = height // patch, width // patch
  grid = x.reshape(b, h, patch, w, patch, c).transpose(0, 1, 3, 2, 4, 5)
  grid = grid.reshape(b, h * w, patch, patch, c)[:, order]
  return grid.reshape(b, h, w, patch, patch, c).transpose(0, 1, 3, 2, 4, 5).reshape(x.shape)


@pytest.mark.parametrize('pool', vit.POOLS)
def test_without_position_embeddings_the_logits_ignore_the_patch_order(pool):
  # Attention and the per-token layers commute with a permutation of the tokens, so
  # only the position embeddings tell the patches apart: with them zeroed, shuffling
  # the patches shuffles the tokens and leaves the pooled output and the logits alone.
  variables, x = tiny_variables(pool=pool), images()
  order = np.array([4, 2, 0, 5, 1, 3])
  apply = tiny_maps(pool=pool)
  maps = apply(variables, x, KEY)
  shuffled = apply(variables, permute_patches(x, order), KEY)
  assert float(jnp.max(jnp.abs(shuffled['logits'] - maps['logits']))) > 1e-3  # not vacuous
  params = {**variables['params'],
            'pos_embedding': jnp.zeros_like(variables['params']['pos_embedding'])}
  maps = apply({'params': params}, x, KEY)
  shuffled = apply({'params': params}, permute_patches(x, order), KEY)
  chex.assert_trees_all_close(shuffled['logits'], maps['logits'], atol=1e-5)
  tokens = maps['tokens'].reshape(3, 6, 16)[:, order].reshape(3, 2, 3, 16)
  chex.assert_trees_all_close(shuffled['tokens'], tokens, atol=1e-5)


def test_examples_do_not_mix_across_the_batch():
  variables, x = tiny_variables(), images()
  logits = tiny_maps()(variables, x, KEY)['logits']
  changed = tiny_maps()(variables, x.at[1:].set(images(SHAPE, seed=1)[1:]), KEY)['logits']
  chex.assert_trees_all_close(changed[0], logits[0], atol=1e-6)
  assert float(jnp.max(jnp.abs(changed[1] - logits[1]))) > 1e-3


def test_attention_weights_are_sown_only_when_asked():
  x = images()
  model = vit.Model(**{**TINY, 'depth': 2}, sow_attention_weights=True)
  assert set(jax.eval_shape(model.init, KEY, x)) == {'params'}
  variables = random_variables(model, x)
  _, state = jit(lambda v, x: model.apply(v, x, mutable=['intermediates']))(variables, x)
  weights = [state['intermediates']['Transformer'][f'encoderblock_{i}'][
      'MultiHeadDotProductAttention_0']['attention_weights'][0] for i in range(2)]
  for w in weights:
    chex.assert_shape(w, (3, 2, 7, 7))  # [batch, heads, class token + 6 patches, same]
    chex.assert_trees_all_close(jnp.sum(w, axis=-1), jnp.ones((3, 2, 7)), atol=1e-6)


def test_bfloat16_computes_in_bfloat16_with_float32_params_and_logits():
  x = images()
  variables = jax.eval_shape(vit.Model(**TINY, dtype=jnp.bfloat16).init, KEY, x)
  assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  maps = tiny_maps(dtype=jnp.bfloat16)(tiny_variables(), x, KEY)
  chex.assert_type(maps['tokens'], jnp.bfloat16)
  chex.assert_type(maps['logits'], jnp.float32)
  reference = tiny_maps()(tiny_variables(), x, KEY)['logits']
  chex.assert_trees_all_close(maps['logits'], reference, atol=0.1, rtol=0.1)


def test_the_encoder_mask_stops_attention_to_later_tokens():
  encoder = transformer.Encoder(num_layers=2, num_heads=2, mlp_dim=32)
  x = jax.random.normal(jax.random.key(0), (2, 5, 16))
  mask = jnp.tril(jnp.ones((5, 5), bool))  # causal, broadcast over batch and heads
  variables = random_variables(encoder, x, mask)
  # Not a shift of the tokens, which the LayerNorms would remove.
  later = x.at[:, 3:].set(jax.random.normal(jax.random.key(2), (2, 2, 16)))
  both = jnp.concatenate([x, later])
  masked, unmasked = jit(lambda v, x: (encoder.apply(v, x, mask), encoder.apply(v, x)))(
      variables, both)
  chex.assert_trees_all_close(masked[2:, :3], masked[:2, :3], atol=1e-6)
  assert float(jnp.max(jnp.abs(masked[2:, 3:] - masked[:2, 3:]))) > 1e-3
  # Without the mask the earlier tokens see the change.
  assert float(jnp.max(jnp.abs(unmasked[2:, :3] - unmasked[:2, :3]))) > 1e-3


def test_mlp_block_is_dense_exact_gelu_dense():
  block = transformer.MlpBlock(mlp_dim=8)
  x = jax.random.normal(jax.random.key(0), (3, 4))
  variables = random_variables(block, x)
  p = variables['params']
  pre = x @ p['Dense_0']['kernel'] + p['Dense_0']['bias']
  gelu = 0.5 * pre * (1 + jax.scipy.special.erf(pre / np.sqrt(2)))
  expected = gelu @ p['Dense_1']['kernel'] + p['Dense_1']['bias']
  chex.assert_trees_all_close(block.apply(variables, x), expected, atol=1e-5)


def test_sincos_2d_is_the_closed_form_and_depends_on_offsets_only():
  h, w, width = 3, 4, 16
  pe = np.asarray(transformer.sincos_2d(h, w, width))
  assert pe.shape == (1, h * w, width)
  omega = 1.0 / 10_000 ** (np.arange(4) / 3)
  i, j = 2, 1  # row 2, column 1: token 2 * w + 1
  expected = np.concatenate([np.sin(j * omega), np.cos(j * omega), np.sin(i * omega),
                             np.cos(i * omega)])
  np.testing.assert_allclose(pe[0, i * w + j], expected, rtol=1e-6, atol=1e-6)
  # sin a sin b + cos a cos b = cos(a - b): the similarity of two positions is a
  # function of their offset.
  gram = pe[0] @ pe[0].T
  offsets = {}
  for p in range(h * w):
    for q in range(h * w):
      key = (p // w - q // w, p % w - q % w)
      offsets.setdefault(key, gram[p, q])
      np.testing.assert_allclose(gram[p, q], offsets[key], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.diag(gram), width / 2, rtol=1e-6)
  with pytest.raises(ValueError, match='multiple of 4'):
    transformer.sincos_2d(2, 2, 6)


def test_sincos_1d_is_sin_then_cos_of_the_position():
  pe = np.asarray(transformer.sincos_1d(6, 8, temperature=100.))
  assert pe.shape == (1, 6, 8)
  omega = 1.0 / 100 ** (np.arange(4) / 3)
  np.testing.assert_allclose(pe[0, 5], np.concatenate([np.sin(5 * omega),
                                                       np.cos(5 * omega)]), atol=1e-6)
  np.testing.assert_allclose(pe[0, 0], [0] * 4 + [1] * 4)
  with pytest.raises(ValueError, match='must be even'):
    transformer.sincos_1d(4, 5)
