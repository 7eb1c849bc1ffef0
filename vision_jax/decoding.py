"""Greedy and beam-search decoding of token sequences, jittable, with fixed shapes.

A model is decoded through one function, `step_fn(context, carry, tokens, position) ->
(logits [N, V], carry)`: the log-probabilities (or logits) of the token after `tokens`
[N] at `position`, with the model's recurrent state or key-value cache in `carry` (a
pytree whose leaves have N rows). `context` (the image memory) is read, never changed.
Both searches start from `bos_id` at position 0, produce `max_len` tokens at most and
stop early once no sequence can change (all have ended, or in beam search no live beam
can beat the finished ones); after a sequence's `eos_id` come `pad_id`s.

  tokens = greedy(step_fn, context, carry, max_len=19, bos_id=1, eos_id=2)
  tokens, scores = beam_search(step_fn, context, carry, beam_size=3, max_len=19, ...)

Beam search follows t5x's `decoding.beam_search`: 2K candidates per step so that K
live beams survive however many end, the carry gathered by beam, and scores normalised
by the GNMT length penalty ((5 + length) / 6) ** alpha when a sequence ends.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp

StepFn = Callable[[Any, Any, jax.Array, jax.Array], tuple[jax.Array, Any]]
NEG_INF = -1e9


def length_penalty(length: jax.Array, alpha: float) -> jax.Array:
  """GNMT's length normalisation ((5 + |Y|) / 6) ** alpha; alpha 0 gives the raw sum."""
  return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


def greedy(step_fn: StepFn, context, carry, *, max_len: int, bos_id: int, eos_id: int,
           pad_id: int = 0) -> jax.Array:
  """The most likely next token at each step: tokens [N, max_len] (without bos)."""
  batch = jax.tree.leaves(carry)[0].shape[0]
  tokens = jnp.full((batch, max_len), pad_id, jnp.int32)

  def cond(state):
    position, _, _, _, done = state
    return (position < max_len) & ~jnp.all(done)

  def body(state):
    position, last, carry, tokens, done = state
    logits, carry = step_fn(context, carry, last, position)
    chosen = jnp.where(done, pad_id, jnp.argmax(logits, -1).astype(jnp.int32))
    tokens = jax.lax.dynamic_update_slice_in_dim(tokens, chosen[:, None], position, 1)
    return position + 1, chosen, carry, tokens, done | (chosen == eos_id)

  start = (jnp.zeros([], jnp.int32), jnp.full((batch,), bos_id, jnp.int32), carry, tokens,
           jnp.zeros((batch,), bool))
  return jax.lax.while_loop(cond, body, start)[3]


def _gather_beams(tree, indices: jax.Array, batch: int, beams: int):
  """Rows `indices` [batch, beams] of each item's beams, for leaves [batch * beams, ...]."""
  def gather(x):
    grouped = x.reshape(batch, beams, *x.shape[1:])
    picked = jnp.take_along_axis(
        grouped, indices.reshape(batch, beams, *(1,) * (x.ndim - 1)), axis=1)
    return picked.reshape(x.shape)
  return jax.tree.map(gather, tree)


def beam_search(step_fn: StepFn, context, carry, *, beam_size: int, max_len: int,
                bos_id: int, eos_id: int, pad_id: int = 0, alpha: float = 0.0
                ) -> tuple[jax.Array, jax.Array]:
  """The best sequence of each of N items under beam search.

  `context` and `carry` have N rows; they are repeated `beam_size` times here. A
  sequence's score is its total log-probability divided by `length_penalty(length,
  alpha)`, its length counting the eos. A beam that reaches `max_len` without eos is
  scored as if it ended there. Returns `(tokens [N, max_len], scores [N])`.
  """
  batch = jax.tree.leaves(carry)[0].shape[0]
  k = beam_size
  tile = lambda x: jnp.repeat(x, k, axis=0)
  context, carry = jax.tree.map(tile, context), jax.tree.map(tile, carry)
  # Only the first beam is live at the start, so the K beams do not repeat each other.
  live_logp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1)), (batch, 1))
  live_tokens = jnp.full((batch, k, max_len), pad_id, jnp.int32)
  finished_tokens = jnp.full((batch, k, max_len), pad_id, jnp.int32)
  finished_scores = jnp.full((batch, k), NEG_INF)
  last = jnp.full((batch * k,), bos_id, jnp.int32)

  def cond(state):
    position, live_logp, _, _, _, finished_scores, _ = state
    # The best score a live beam can still reach: log-probabilities only fall, and with
    # alpha >= 0 the penalty grows at most to that of max_len. Only the best finished
    # sequence is returned, so the search is over once no live beam can beat it.
    best_live = live_logp[:, 0] / length_penalty(jnp.asarray(max_len), max(alpha, 0.0))
    can_improve = best_live > finished_scores[:, 0]
    return (position < max_len) & jnp.any(can_improve)

  def body(state):
    position, live_logp, live_tokens, last, carry, finished_scores, finished_tokens = state
    logits, carry = step_fn(context, carry, last, position)
    vocab = logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(batch, k, vocab)
    candidates = (live_logp[..., None] + log_probs).reshape(batch, k * vocab)
    top_logp, top_index = jax.lax.top_k(candidates, 2 * k)
    beam, token = top_index // vocab, (top_index % vocab).astype(jnp.int32)
    tokens = jnp.take_along_axis(live_tokens, beam[..., None], axis=1)
    tokens = jax.lax.dynamic_update_slice_in_dim(tokens, token[..., None], position, 2)
    is_eos = token == eos_id
    # As in fairseq, only an eos among the best K candidates ends a sequence, so that
    # one beam is greedy search.
    ended = is_eos & (jnp.arange(2 * k) < k)
    at_limit = position == max_len - 1

    # Candidates that end (or run out of room) join the finished; keep the best K.
    scores = top_logp / length_penalty(position + 1, alpha)
    scores = jnp.where(ended | (at_limit & ~is_eos), scores, NEG_INF)
    all_scores = jnp.concatenate([finished_scores, scores], 1)
    all_tokens = jnp.concatenate([finished_tokens, tokens], 1)
    finished_scores, keep = jax.lax.top_k(all_scores, k)
    finished_tokens = jnp.take_along_axis(all_tokens, keep[..., None], axis=1)

    # The best K candidates that go on are the live beams of the next step.
    going_on = jnp.where(is_eos, NEG_INF, top_logp)
    live_logp, keep = jax.lax.top_k(going_on, k)
    live_tokens = jnp.take_along_axis(tokens, keep[..., None], axis=1)
    chosen_beam = jnp.take_along_axis(beam, keep, axis=1)
    carry = _gather_beams(carry, chosen_beam, batch, k)
    last = jnp.take_along_axis(token, keep, axis=1).reshape(-1)
    return (position + 1, live_logp, live_tokens, last, carry, finished_scores,
            finished_tokens)

  start = (jnp.zeros([], jnp.int32), live_logp, live_tokens, last, carry, finished_scores,
           finished_tokens)
  _, _, _, _, _, finished_scores, finished_tokens = jax.lax.while_loop(cond, body, start)
  return finished_tokens[:, 0], finished_scores[:, 0]
