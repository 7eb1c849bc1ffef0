"""Greedy and beam search against exhaustive search on small hand-made models."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_jax import decoding

BOS, EOS, PAD = 1, 2, 0
VOCAB = 5


def prefix_model(seed: int, batch: int, table_size: int = 97):
  """A model whose next-token distribution depends on the whole prefix (through a hash
  kept in the carry), so that a beam search that gathers the wrong carry goes wrong."""
  table = jax.random.normal(jax.random.key(seed), (batch, table_size, VOCAB)) * 2.0

  def step_fn(context, carry, tokens, position):
    del position
    prefix = (carry * 31 + tokens) % table_size  # context: each row's own table
    return jax.nn.log_softmax(context[jnp.arange(tokens.shape[0]), prefix]), prefix

  def log_probs(item, prefix_tokens):
    """The model's log-probabilities after bos + prefix_tokens, in numpy."""
    h = 0
    for token in (BOS, *prefix_tokens):
      h = (h * 31 + token) % table_size
    return np.asarray(jax.nn.log_softmax(table[item, h]))

  return table, step_fn, log_probs


def best_by_enumeration(log_probs, item, max_len, alpha):
  best, best_score = None, -np.inf
  for length in range(1, max_len + 1):
    for seq in itertools.product(range(VOCAB), repeat=length):
      ends = seq[-1] == EOS
      if EOS in seq[:-1] or (not ends and length < max_len):
        continue
      total = sum(log_probs(item, seq[:i])[seq[i]] for i in range(length))
      score = total / ((5 + length) / 6) ** alpha
      if score > best_score:
        best, best_score = seq, score
  return best, best_score


def _padded(seq, max_len):
  return list(seq) + [PAD] * (max_len - len(seq))


@pytest.mark.parametrize('alpha', [0.0, 0.8])
def test_wide_beam_finds_the_best_sequence(alpha):
  batch, max_len = 3, 4
  table, step_fn, log_probs = prefix_model(0, batch)
  carry = jnp.zeros((batch,), jnp.int32)
  # 5**3 beams keep every prefix alive, so the search is exhaustive.
  tokens, scores = jax.jit(lambda t, c: decoding.beam_search(
      step_fn, t, c, beam_size=VOCAB**3, max_len=max_len, bos_id=BOS, eos_id=EOS,
      alpha=alpha))(table, carry)
  for item in range(batch):
    best, best_score = best_by_enumeration(log_probs, item, max_len, alpha)
    assert tokens[item].tolist() == _padded(best, max_len)
    np.testing.assert_allclose(scores[item], best_score, rtol=1e-5)


def test_one_beam_is_greedy_and_more_beams_do_no_worse():
  batch, max_len = 8, 6
  table, step_fn, log_probs = prefix_model(1, batch)
  carry = jnp.zeros((batch,), jnp.int32)
  greedy = decoding.greedy(step_fn, table, carry, max_len=max_len, bos_id=BOS, eos_id=EOS)
  search = lambda k: decoding.beam_search(step_fn, table, carry, beam_size=k,
                                          max_len=max_len, bos_id=BOS, eos_id=EOS)
  one, one_scores = search(1)
  chex.assert_trees_all_equal(one, greedy)
  previous = one_scores
  for k in (2, 4):
    scores = search(k)[1]
    assert np.all(scores >= previous - 1e-6)
    previous = scores
  # Greedy's tokens follow the argmax and stop at eos, padded after it.
  for item in range(batch):
    seq = greedy[item].tolist()
    length = seq.index(EOS) + 1 if EOS in seq else max_len
    for i in range(length):
      assert seq[i] == int(np.argmax(log_probs(item, seq[:i])))
    assert all(t == PAD for t in seq[length:])


def test_beam_search_beats_greedy_on_a_garden_path():
  # Greedy takes token 3 first (p=0.6) but every word after it is unlikely; 4 then eos
  # is the best sequence (0.4 * 0.9 > 0.6 * 0.25).
  def step_fn(context, carry, tokens, position):
    del context
    first = jnp.log(jnp.array([1e-6, 1e-6, 1e-6, 0.6, 0.4]))
    after_3 = jnp.log(jnp.array([1e-6, 1e-6, 0.25, 0.375, 0.375]))
    after_4 = jnp.log(jnp.array([1e-6, 1e-6, 0.9, 0.05, 0.05]))
    rows = jnp.where((position == 0)[None, None], first,
                     jnp.where((tokens == 3)[:, None], after_3, after_4))
    return rows, carry

  carry = jnp.zeros((1,), jnp.int32)
  kw = dict(max_len=2, bos_id=BOS, eos_id=EOS)
  assert decoding.greedy(step_fn, None, carry, **kw).tolist() == [[3, 3]]
  tokens, score = decoding.beam_search(step_fn, None, carry, beam_size=2, **kw)
  assert tokens.tolist() == [[4, EOS]]
  np.testing.assert_allclose(score, np.log(0.4 * 0.9), rtol=1e-5)


def test_length_penalty_is_gnmt():
  np.testing.assert_allclose(decoding.length_penalty(jnp.array(7), 0.6), (12 / 6)**0.6)
  assert float(decoding.length_penalty(jnp.array(7), 0.0)) == 1.0
