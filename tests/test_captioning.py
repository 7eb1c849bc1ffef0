"""Captioning: the decoders' wiring (c = h_0, attention over the grid, causal masks,
teacher forcing equal to step-by-step decoding), BLEU and CIDEr-D against literal
transcriptions of their papers' formulas, 8 devices equal 1, the local experiments end
to end with a resume and the ViT encoder (decoding itself: tests/test_decoding.py)."""

import collections
import functools
import json
import math
import os
import shutil

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from vision_jax import caption, caption_metrics, checkpointing, config_lib, parallel, train
from vision_jax.dataset_info import DatasetInfo
from vision_jax.methods import get_method_class
from vision_jax.models import captioner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(REPO, 'experiments/vision_language')
ENCODER = dict(name='cnn', features=(8, 16), dense_features=(16,), use_batchnorm=True)
VOCAB, MAX_LEN = 13, 7
jit = functools.partial(jax.jit, compiler_options={
    'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True})


def make_model(decoder, **kw):
  return captioner.Model(encoder=ENCODER, vocab_size=VOCAB, decoder=decoder, max_len=MAX_LEN,
                         width=16, num_heads=2, num_layers=2, dropout_rate=0.0, **kw)


def inputs(batch=3, seed=0):
  rng = np.random.default_rng(seed)
  images = jnp.asarray(rng.uniform(0, 1, (batch, 8, 8, 3)), jnp.float32)
  tokens = jnp.asarray(rng.integers(1, VOCAB, (batch, MAX_LEN - 1)), jnp.int32)
  return images, tokens


@functools.lru_cache(maxsize=None)
def initialised(decoder):
  model = make_model(decoder)
  images, tokens = inputs()
  return model, jit(model.init)(jax.random.key(0), images, tokens)


@pytest.mark.parametrize('decoder', captioner.DECODERS)
def test_teacher_forcing_equals_step_by_step_decoding(decoder):
  model, variables = initialised(decoder)
  images, tokens = inputs()
  memory = model.apply(variables, images, method='encode')
  forced, _ = jit(functools.partial(model.apply, method='decode'))(variables, memory, tokens)

  @jit
  def stepwise(variables, memory, tokens):
    carry = model.apply(variables, memory, method='initial_carry')
    logits = []
    for t in range(tokens.shape[1]):
      step_logits, carry = model.apply(variables, memory, carry, tokens[:, t], t, method='step')
      logits.append(step_logits)
    return jnp.stack(logits, 1)

  np.testing.assert_allclose(stepwise(variables, memory, tokens), forced, atol=2e-5)


@pytest.mark.parametrize('decoder', captioner.DECODERS)
def test_a_later_word_does_not_change_earlier_logits(decoder):
  model, variables = initialised(decoder)
  images, tokens = inputs()
  changed = tokens.at[:, 3].set((tokens[:, 3] + 1) % VOCAB)
  apply = jit(model.apply)
  before, after = apply(variables, images, tokens), apply(variables, images, changed)
  # Logits at position t predict word t + 1 from the words up to t.
  np.testing.assert_allclose(before[:, :3], after[:, :3], atol=1e-6)
  assert np.abs(before[:, 3:] - after[:, 3:]).max() > 1e-4


@pytest.mark.parametrize('decoder', ['attention', 'transformer'])
def test_attention_is_a_distribution_over_the_grid(decoder):
  model, variables = initialised(decoder)
  images, tokens = inputs()
  memory = model.apply(variables, images, method='encode')
  _, attention = model.apply(variables, memory, tokens, method='decode')
  chex.assert_shape(attention, (3, MAX_LEN - 1, 4))  # 8x8 images, two 2x2 poolings
  assert np.all(attention >= 0)
  np.testing.assert_allclose(attention.sum(-1), 1.0, rtol=1e-5)


def test_rnn_sees_the_image_only_through_its_initial_hidden_state():
  """The 'rnn' decoder's logits are those of a plain LSTM over the word embeddings
  started from (c, h) = (0, W f(image) + b): the image enters nowhere else."""
  model, variables = initialised('rnn')
  images, tokens = inputs()
  params = variables['params']
  features = model.apply(variables, images,
                         method=lambda m, x: m.image_encoder.feature_maps(x))['pre_logits']
  h0 = features @ params['project']['kernel'] + params['project']['bias']
  step = params['rnn_step']
  cell = nn.OptimizedLSTMCell(16)
  carry, logits = (jnp.zeros_like(h0), h0), []
  for t in range(tokens.shape[1]):
    embedded = step['embed']['embedding'][tokens[:, t]]
    carry, hidden = cell.apply({'params': step['cell']}, carry, embedded)
    logits.append(hidden @ step['logits']['kernel'] + step['logits']['bias'])
  np.testing.assert_allclose(model.apply(variables, images, tokens), jnp.stack(logits, 1),
                             atol=1e-5)
  assert set(step) == {'embed', 'cell', 'logits'}  # no other path from the image


# ---------------------------------------------------------------- BLEU and CIDEr-D

def _ngrams(words, n):
  return collections.Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def bleu_transcription(hypotheses, references, max_n=4):
  """Papineni et al. 2002, corpus level: clipped n-gram precisions p_n, the brevity
  penalty BP = exp(1 - r / c) when c < r, with r the sum over sentences of the
  reference length closest to the hypothesis (coco-caption's 'closest'), and BLEU-N =
  BP * exp(mean_{n<=N} log p_n)."""
  matches, totals, hyp_len, ref_len = [0] * max_n, [0] * max_n, 0, 0
  for key, hyp in hypotheses.items():
    h = hyp.split()
    refs = [r.split() for r in references[key]]
    hyp_len += len(h)
    ref_len += min((abs(len(r) - len(h)), len(r)) for r in refs)[1]
    for n in range(1, max_n + 1):
      counts = _ngrams(h, n)
      best = collections.Counter()
      for r in refs:
        best |= _ngrams(r, n)
      matches[n - 1] += sum(min(c, best[g]) for g, c in counts.items())
      totals[n - 1] += max(len(h) - n + 1, 0)
  bp = 1.0 if hyp_len >= ref_len else math.exp(1 - ref_len / hyp_len)
  logs = [math.log(m / t) for m, t in zip(matches, totals)]
  return [bp * math.exp(sum(logs[:n]) / n) for n in range(1, max_n + 1)]


def cider_d_transcription(hypotheses, references, sigma=6.0):
  """Vedantam et al. 2015, CIDEr-D: TF-IDF n-gram vectors (idf over the references of
  the evaluated images), for n = 1..4 the mean over references of the cosine of the
  hypothesis' clipped vector with the reference's times exp(-(l_h - l_r)^2 / 2 sigma^2),
  averaged over n, times 10, averaged over images."""
  num_images = len(references)
  document_frequency = collections.Counter()
  for refs in references.values():
    seen = set()
    for r in refs:
      for n in range(1, 5):
        seen |= set(_ngrams(r.split(), n))
    document_frequency.update(seen)
  log_num_images = math.log(num_images)

  def vectors(words):
    out = []
    for n in range(1, 5):
      counts = _ngrams(words, n)
      out.append({g: c * (log_num_images - math.log(max(1.0, document_frequency[g])))
                  for g, c in counts.items()})
    return out

  scores = []
  for key, hyp in hypotheses.items():
    h = hyp.split()
    vh = vectors(h)
    per_ref = []
    for r in references[key]:
      words = r.split()
      vr = vectors(words)
      total = 0.0
      for n in range(4):
        dot = sum(min(v, vr[n].get(g, 0.0)) * vr[n].get(g, 0.0) for g, v in vh[n].items())
        norm_h = math.sqrt(sum(v * v for v in vh[n].values()))
        norm_r = math.sqrt(sum(v * v for v in vr[n].values()))
        if norm_h and norm_r:
          total += dot / (norm_h * norm_r) * math.exp(-(len(h) - len(words))**2 / (2 * sigma**2))
      per_ref.append(total / 4)
    scores.append(10.0 * np.mean(per_ref))
  return float(np.mean(scores))


def _scenes_texts(count, seed):
  """Real captions of `scenes` images: each image's references and a hypothesis taken
  from another image's (often partly right) captions."""
  from vision_jax.data import scenes  # pylint: disable=g-import-not-at-top
  config = scenes.Scenes.BUILDER_CONFIGS[1]
  refs = {i: scenes.generate_example(config, 'test', i)['captions'] for i in range(count)}
  rng = np.random.default_rng(seed)
  hyps = {i: refs[(i + int(rng.integers(0, 2))) % count][int(rng.integers(0, 5))]
          for i in range(count)}
  return hyps, refs


def _random_texts(count, seed):
  rng = np.random.default_rng(seed)
  words = 'a red circle is left'.split()  # few words, so that some 4-grams match
  sentence = lambda: ' '.join(rng.choice(words, rng.integers(4, 12)))
  return ({i: sentence() for i in range(count)},
          {i: [sentence() for _ in range(rng.integers(1, 6))] for i in range(count)})


@pytest.mark.parametrize('texts', [_scenes_texts, _random_texts])
def test_bleu_and_cider_d_equal_transcriptions_of_the_papers(texts):
  hyps, refs = texts(40, 0)
  scores = caption_metrics.caption_scores(hyps, refs)
  tokenized = lambda s: caption_metrics.caption_tokens(s)
  hyps_t = {k: tokenized(v) for k, v in hyps.items()}
  refs_t = {k: [tokenized(r) for r in v] for k, v in refs.items()}
  np.testing.assert_allclose([scores[f'bleu{n}'] for n in range(1, 5)],
                             bleu_transcription(hyps_t, refs_t), rtol=1e-6)
  np.testing.assert_allclose(scores['cider'], cider_d_transcription(hyps_t, refs_t), rtol=1e-6)


def test_caption_scores_of_the_references_themselves():
  _, refs = _scenes_texts(20, 1)
  scores = caption_metrics.caption_scores({k: v[0] for k, v in refs.items()}, refs)
  assert scores['bleu4'] == pytest.approx(1.0)
  assert caption_metrics.caption_tokens('A red circle, left of it.') == 'a red circle left of it'
  with pytest.raises(ValueError, match='different images'):
    caption_metrics.caption_scores({1: 'a'}, {2: ['a']})


# ---------------------------------------------------------------- the method

def make_method(decoder='attention', **fields):
  from vision_jax.data import text  # pylint: disable=g-import-not-at-top
  vocab = text.Vocabulary([f'w{i}' for i in range(VOCAB - 4)])
  info = DatasetInfo(name='toy', num_examples={'train': 16}, num_classes=None,
                     class_names=None, metadata={'vocabulary': list(vocab.tokens)})
  config = config_lib.base_config()
  config.method = 'captioning'
  config.model.update(dict(name='captioner', encoder=ENCODER, decoder=decoder,
                           max_len=MAX_LEN, width=16, num_heads=2, num_layers=1,
                           dropout_rate=0.0))
  config.update(fields)
  return get_method_class('captioning')(config, info, total_steps=2, steps_per_epoch=1)


def test_captioner_on_8_devices_equals_1_device():
  """Loss, gradients and BatchNorm statistics of a step on 16 images over 8 devices
  equal those on one: the loss is normalised by the global number of words."""
  method = make_method('attention', captioning=dict(attention_regularizer=0.5))
  images, _ = inputs(16)
  rng = np.random.default_rng(3)
  lengths = rng.integers(2, MAX_LEN, 16)
  tokens = np.where(np.arange(MAX_LEN) < lengths[:, None],
                    rng.integers(4, VOCAB, (16, MAX_LEN)), 0)
  tokens[:, 0] = 1
  tokens[np.arange(16), lengths] = np.where(lengths < MAX_LEN, 2, 0)
  batch = {'image': images, 'tokens': jnp.asarray(tokens, jnp.int32)}
  variables = jit(method.init_variables)(jax.random.key(0), batch)
  params, model_state = variables.pop('params'), variables
  grad_fn = jit(jax.value_and_grad(method.loss, has_aux=True))
  (loss1, (metrics1, stats1)), grads1 = grad_fn(params, model_state, batch, jax.random.key(1))
  mesh = parallel.make_mesh(8)
  sharded = jax.device_put(batch, NamedSharding(mesh, P('data')))
  replicated = jax.device_put((params, model_state), parallel.replicated(mesh))
  (loss8, (metrics8, stats8)), grads8 = grad_fn(*replicated, sharded, jax.random.key(1))
  assert float(metrics1['attention_penalty']) > 0
  np.testing.assert_allclose(loss8, loss1, rtol=1e-6)
  # Sums over 8 shards round differently: gradients near 1e-2 agree to about 2e-7.
  chex.assert_trees_all_close(grads8, grads1, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(stats8, stats1, rtol=1e-5, atol=1e-7)


def test_bad_options_are_named():
  with pytest.raises(config_lib.ConfigError, match='attention_regularizer is for the attention'):
    make_method('rnn', captioning=dict(attention_regularizer=1.0))
  with pytest.raises(config_lib.ConfigError, match='beam_size must be at least 1'):
    make_method('rnn', captioning=dict(beam_size=0))
  with pytest.raises(ValueError, match='decoder must be one of'):
    make_model('lstm').init(jax.random.key(0), *inputs())
  method = make_method('rnn')
  images, tokens = inputs()
  with pytest.raises(ValueError, match='make tokenize'):
    method.init_variables(jax.random.key(0), {'image': images, 'tokens': tokens[:, :4]})


# ---------------------------------------------------------------- end to end

def local_config(scenes_data_dir, decoder, **overrides):
  config = config_lib.load_config(os.path.join(
      EXPERIMENTS, f'caption_scenes.py:decoder={decoder},local'))
  config_lib.apply_overrides(config, {'data.data_dir': scenes_data_dir, **overrides})
  return config


def test_attention_captioner_trains_evaluates_and_resumes(tmp_path, scenes_data_dir, capsys):
  # A constant schedule, so that the shorter run compiles the same step (the cache).
  constant = {'schedule.name': 'constant'}
  config = local_config(scenes_data_dir, 'attention', **constant)
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  for name in ('bleu1', 'bleu4', 'cider', 'truthfulness', 'readable', 'objects_mentioned'):
    assert 0 <= results[f'test/{name}'] <= (10 if name == 'cider' else 1), name
  assert results['test/num_examples'] == 24
  outdir = tmp_path / 'run' / 'test'
  captions = json.loads((outdir / 'captions_test.json').read_text())
  assert sorted(c['image_id'] for c in captions) == list(range(24))
  references = json.loads((outdir / 'references_test.json').read_text())
  assert len(references['annotations']) == 5 * 24 and references['type'] == 'captions'
  assert (outdir / 'captions.png').exists() and (outdir / 'attention.png').exists()

  # The run captions the user's own images (here two of its test images, as PNG files).
  from PIL import Image  # pylint: disable=g-import-not-at-top
  paths = []
  for i, image in enumerate(np.asarray(jax.random.uniform(jax.random.key(0), (2, 40, 48, 3)))):
    paths.append(str(tmp_path / f'photo{i}.png'))
    Image.fromarray((image * 255).astype(np.uint8)).save(paths[-1])
  assert caption.main(['--workdir', str(tmp_path / 'run'), '--image', *paths,
                       '--beam_size', '2', '--out', str(tmp_path / 'mine.png')]) == 0
  printed = capsys.readouterr().out
  assert all(f'{path}: ' in printed for path in paths) and (tmp_path / 'mine.png').exists()
  assert caption.main(['--workdir', str(tmp_path / 'run'), '--image',
                       str(tmp_path / 'missing.png')]) == 2
  assert 'missing.png cannot be read' in capsys.readouterr().err

  # Interrupted after its checkpoint at step 3 and resumed: the same final weights. The
  # run's own step-3 checkpoint, alone in a fresh workdir, is that interruption; the
  # resumed run skips the evaluation, which the weights do not depend on.
  resumed = str(tmp_path / 'resumed')
  shutil.copytree(tmp_path / 'run' / 'checkpoints' / '3',
                  os.path.join(resumed, 'checkpoints', '3'))
  assert checkpointing.saved_steps(resumed) == [3]
  config.evals = {}
  train.train_and_evaluate(config, resumed)
  chex.assert_trees_all_close(checkpointing.read_latest(resumed)['params'],
                              checkpointing.read_latest(str(tmp_path / 'run'))['params'],
                              rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', ['caption_scenes', 'caption_compositional'])
@pytest.mark.parametrize('arg', ['decoder=transformer', 'decoder=rnn,local', 'decoder=vit,local'])
def test_recipes_pp_matches_the_model(scenes_data_dir, name, arg):
  # The benchmark, `vision_jax.caption` and the trainer's init trust data.input_shape
  # and model.max_len; the pp strings must agree with them.
  from vision_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(os.path.join(EXPERIMENTS, f'{name}.py:{arg}'))
  builder = pipeline.get_builder(config.data.name, scenes_data_dir)
  batch = next(iter(pipeline.eval_batches(builder, 'train', batch_size=2,
                                          pp=config.data.pp_train)))
  assert batch['image'].shape[1:] == tuple(config.data.input_shape)
  assert batch['tokens'].shape[1] == config.model.max_len
  longest = builder.info.metadata['max_words']['captions']
  assert config.model.max_len >= longest + 2  # bos, the words, eos: nothing is cut
  assert sorted(config.evals) == (['novel', 'test'] if 'compositional' in name else ['test'])
