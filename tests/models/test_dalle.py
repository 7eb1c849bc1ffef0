"""Tests for the DALL-E prior (dalle.py): causality, cached sampling against teacher
forcing, greedy, top-k and temperature, shapes."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_jax import models
from vision_jax.models import dalle

# Tiny networks run in milliseconds; XLA's optimising compile is what costs.
jit = functools.partial(jax.jit, compiler_options={
    'xla_backend_optimization_level': 0,
    'xla_llvm_disable_expensive_passes': True,
})

T, N, TEXT_VOCAB, CODES = (dalle.TINY[k] for k in (
    'text_len', 'image_tokens', 'text_vocab_size', 'num_image_codes'))
TEXT = jnp.array([[1, 2, 0], [3, 4, 5]], jnp.int32)
IMAGE = jnp.array([[1, 2, 3, 4], [0, 6, 5, 1]], jnp.int32)


@functools.cache
def built():
  model = models.get_model(dict(dalle.TINY))
  variables = jit(model.init)(jax.random.key(0), TEXT, IMAGE)
  # Larger weights than the 0.02 initialisation, so that the logits (and the argmax)
  # depend clearly on the tokens.
  variables = jax.tree.map(
      lambda p: p * 10 if p.ndim == 2 and p.shape[-1] == dalle.TINY['width'] else p,
      variables)
  return model, variables, jit(model.apply), jit(
      model.apply, static_argnames=('method', 'temperature', 'top_k', 'return_logits'))


def test_shapes():
  _, variables, apply, _ = built()
  out = apply(variables, TEXT, IMAGE)
  chex.assert_shape(out['text_logits'], (2, T, TEXT_VOCAB))
  chex.assert_shape(out['image_logits'], (2, N, CODES))
  assert out['image_logits'].dtype == jnp.float32


def test_image_logits_see_only_earlier_tokens():
  _, variables, apply, _ = built()
  out = apply(variables, TEXT, IMAGE)
  for j in range(N):
    changed = apply(variables, TEXT, IMAGE.at[:, j].set((IMAGE[:, j] + 1) % CODES))
    np.testing.assert_allclose(changed['image_logits'][:, :j + 1],
                               out['image_logits'][:, :j + 1], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(changed['text_logits'], out['text_logits'], rtol=1e-6,
                               atol=1e-6)
    if j + 1 < N:  # not vacuous: the next position does read token j
      assert not np.allclose(changed['image_logits'][:, j + 1],
                             out['image_logits'][:, j + 1], atol=1e-4)


def test_text_logits_see_only_earlier_text_and_every_image_logit_sees_the_text():
  _, variables, apply, _ = built()
  out = apply(variables, TEXT, IMAGE)
  for j in range(T):
    changed = apply(variables, TEXT.at[:, j].set((TEXT[:, j] + 1) % TEXT_VOCAB), IMAGE)
    np.testing.assert_allclose(changed['text_logits'][:, :j + 1],
                               out['text_logits'][:, :j + 1], rtol=1e-6, atol=1e-6)
    for i in range(N):
      assert not np.allclose(changed['image_logits'][:, i], out['image_logits'][:, i],
                             atol=1e-4)


@pytest.mark.parametrize('temperature, top_k', [(0.0, None), (1.0, None), (0.7, 3)])
def test_cached_sampling_logits_equal_teacher_forcing(temperature, top_k):
  _, variables, apply, apply_static = built()
  tokens, logits = apply_static(variables, TEXT, jax.random.key(3), method='sample',
                                temperature=temperature, top_k=top_k, return_logits=True)
  chex.assert_shape(tokens, (2, N))
  chex.assert_shape(logits, (2, N, CODES))
  assert tokens.dtype == jnp.int32
  teacher_forced = apply(variables, TEXT, tokens)['image_logits']
  np.testing.assert_allclose(logits, teacher_forced, rtol=1e-5, atol=1e-5)
  if temperature == 0:
    np.testing.assert_array_equal(tokens, np.argmax(teacher_forced, -1))
  else:  # draw i is categorical(key i) of the tempered, top-k filtered logits i
    keys = jax.random.split(jax.random.key(3), N)
    expected = [jax.random.categorical(keys[i], dalle.filter_logits(
        teacher_forced[:, i], temperature=temperature, top_k=top_k)) for i in range(N)]
    np.testing.assert_array_equal(tokens, np.stack(expected, 1))
  if top_k is not None:  # every draw is among the k most likely codes
    rank = (np.asarray(teacher_forced) > np.take_along_axis(
        np.asarray(teacher_forced), np.asarray(tokens)[..., None], -1)).sum(-1)
    assert rank.max() < top_k


def test_top_1_is_greedy():
  _, variables, _, apply_static = built()
  greedy = apply_static(variables, TEXT, jax.random.key(0), method='sample', temperature=0.0)
  for seed in range(3):
    top1 = apply_static(variables, TEXT, jax.random.key(seed), method='sample',
                        temperature=1.0, top_k=1)
    np.testing.assert_array_equal(top1, greedy)


def test_sampling_compiles_once_for_every_key():
  model, variables, _, _ = built()
  @jit
  @chex.assert_max_traces(n=1)
  def sample(variables, text, rng):
    return model.apply(variables, text, rng, method='sample', temperature=1.0, top_k=5)
  draws = [sample(variables, TEXT, jax.random.key(seed)) for seed in range(4)]
  assert len({np.asarray(d).tobytes() for d in draws}) > 1  # the key matters


def test_filter_logits_scales_by_the_temperature_and_keeps_the_top_k():
  logits = jnp.array([[2.0, -1.0, 0.5, 3.0, 0.0]])
  np.testing.assert_allclose(dalle.filter_logits(logits, temperature=0.5), logits / 0.5)
  kept = dalle.filter_logits(logits, temperature=2.0, top_k=2)
  np.testing.assert_allclose(kept, [[1.0, -np.inf, -np.inf, 1.5, -np.inf]])
  with pytest.raises(ValueError, match='top_k'):
    dalle.filter_logits(logits, top_k=6)
  with pytest.raises(ValueError, match='temperature'):
    dalle.filter_logits(logits, temperature=0.0)


@pytest.mark.parametrize('temperature', [0.5, 2.0])
def test_draws_follow_the_tempered_softmax(temperature):
  logits = jnp.array([1.0, 0.0, -0.5, 0.3])
  draws = jax.vmap(lambda key: dalle.sample_logits(logits, key, temperature=temperature))(
      jax.random.split(jax.random.key(0), 20_000))
  frequencies = np.bincount(np.asarray(draws), minlength=4) / draws.size
  expected = jax.nn.softmax(logits / temperature)
  np.testing.assert_allclose(frequencies, expected, atol=0.015)  # ~4 standard errors


def test_dropout_only_in_training():
  model = models.get_model({**dalle.TINY, 'dropout': 0.5})
  variables = jit(model.init)(jax.random.key(0), TEXT, IMAGE)
  apply = jit(model.apply, static_argnames='train')
  eval_out = apply(variables, TEXT, IMAGE)
  chex.assert_trees_all_close(eval_out, apply(variables, TEXT, IMAGE))
  train_out = apply(variables, TEXT, IMAGE, train=True, rngs={'dropout': jax.random.key(1)})
  assert not np.allclose(train_out['image_logits'], eval_out['image_logits'])


def test_bad_token_shapes_are_one_clear_error():
  model, variables, _, _ = built()
  with pytest.raises(ValueError, match=r'text_tokens must be \[B, 3\]'):
    model.apply(variables, TEXT[:, :2], IMAGE)
  with pytest.raises(ValueError, match=r'image_tokens must be \[B, 4\]'):
    model.apply(variables, TEXT, IMAGE[:, :3])
  with pytest.raises(ValueError, match='top_k'):
    model.apply(variables, TEXT, jax.random.key(0), method='sample', top_k=CODES + 1)
