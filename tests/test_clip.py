"""CLIP: the loss against the paper's pseudo-code, its global negatives on 8 devices, the
clipped scale, the zero-shot classifier from label text, retrieval recall, and the
scenes experiment end to end."""

import json
import math
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_jax import config_lib, losses, parallel, train
from vision_jax.dataset_info import DatasetInfo
from vision_jax.evaluators import retrieval, zero_shot
from vision_jax.methods import clip as clip_method

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIP_SCENES = os.path.join(REPO, 'experiments/vision_language/clip_scenes.py')


def clip_figure_3(image_features, text_features, t):
  """The numpy-like pseudo-code of CLIP's figure 3, from the embeddings on."""
  i_e = image_features / np.linalg.norm(image_features, axis=1, keepdims=True)
  t_e = text_features / np.linalg.norm(text_features, axis=1, keepdims=True)
  logits = (i_e @ t_e.T) * np.exp(t)
  n = len(logits)

  def cross_entropy(logits, labels, axis):
    log_probs = logits - np.log(np.sum(np.exp(logits), axis=axis, keepdims=True))
    picked = log_probs[np.arange(n), labels] if axis == 1 else log_probs[labels, np.arange(n)]
    return -np.mean(picked)

  labels = np.arange(n)
  return (cross_entropy(logits, labels, axis=1) + cross_entropy(logits, labels, axis=0)) / 2


@pytest.mark.parametrize('n, dim, t', [(1, 3, 0.0), (4, 8, math.log(1 / 0.07)), (9, 5, 3.0)])
def test_clip_loss_is_the_papers_pseudo_code(n, dim, t):
  rng = np.random.default_rng(n)
  images, texts = rng.normal(size=(n, dim)), rng.normal(size=(n, dim)) * 3
  expected = clip_figure_3(images, texts, t)
  got = losses.clip_loss(jnp.asarray(images, jnp.float32), jnp.asarray(texts, jnp.float32),
                         jnp.float32(t))
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_clip_loss_with_hard_negatives_is_negclips():
  """NegCLIP: the negatives are more columns of each image's softmax over texts only."""
  rng = np.random.default_rng(3)
  images, texts, negatives = (rng.normal(size=(5, 4)) for _ in range(3))
  mask = np.array([True, False, True, True, False])
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  scale = np.exp(2.0)
  logits = scale * unit(images) @ unit(np.concatenate([texts, negatives[mask]])).T  # [5, 8]
  image_to_text = -np.mean(np.diag(logits) - np.log(np.exp(logits).sum(axis=1)))
  square = logits[:, :5]
  text_to_image = -np.mean(np.diag(square) - np.log(np.exp(square).sum(axis=0)))
  got = losses.clip_loss(jnp.asarray(images), jnp.asarray(texts), jnp.float32(2.0),
                         jnp.asarray(negatives), jnp.asarray(mask))
  np.testing.assert_allclose(got, (image_to_text + text_to_image) / 2, rtol=1e-5)
  # No negatives left: the plain loss.
  np.testing.assert_allclose(
      losses.clip_loss(jnp.asarray(images), jnp.asarray(texts), jnp.float32(2.0),
                       jnp.asarray(negatives), jnp.zeros(5, bool)),
      losses.clip_loss(jnp.asarray(images), jnp.asarray(texts), jnp.float32(2.0)), rtol=1e-6)


def test_clip_loss_is_symmetric_only_in_its_two_directions():
  rng = np.random.default_rng(0)
  images, texts = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
  swapped = losses.clip_loss(jnp.asarray(texts), jnp.asarray(images), jnp.float32(2.0))
  np.testing.assert_allclose(losses.clip_loss(jnp.asarray(images), jnp.asarray(texts),
                                              jnp.float32(2.0)), swapped, rtol=1e-6)
  # Pairs matter: shuffling the texts against the images changes the loss.
  shuffled = losses.clip_loss(jnp.asarray(images), jnp.asarray(texts[::-1]), jnp.float32(2.0))
  assert not np.isclose(float(swapped), float(shuffled))
  with pytest.raises(ValueError, match='one shape'):
    losses.clip_loss(jnp.zeros((3, 4)), jnp.zeros((2, 4)), jnp.float32(0.0))


def test_the_logit_scale_is_clipped_at_100():
  rng = np.random.default_rng(1)
  images, texts = jnp.asarray(rng.normal(size=(5, 4))), jnp.asarray(rng.normal(size=(5, 4)))
  at_100 = losses.clip_loss(images, texts, jnp.log(100.0))
  np.testing.assert_allclose(losses.clip_loss(images, texts, jnp.log(1000.0)), at_100,
                             rtol=1e-6)
  np.testing.assert_allclose(at_100, clip_figure_3(np.asarray(images), np.asarray(texts),
                                                   math.log(100)), rtol=1e-5)
  # Above the clip, the scale gets no gradient, so it stops climbing.
  grad = jax.grad(losses.clip_loss, argnums=2)
  assert float(grad(images, texts, jnp.log(500.0))) == 0.0
  assert float(grad(images, texts, jnp.log(20.0))) != 0.0


def test_clip_loss_negatives_are_the_global_batch_on_8_devices():
  if len(jax.devices()) < 8:
    pytest.skip('needs 8 (fake CPU) devices')
  mesh = parallel.make_mesh(8)
  rng = np.random.default_rng(2)
  images, texts = rng.normal(size=(16, 6)).astype(np.float32), rng.normal(
      size=(16, 6)).astype(np.float32)
  t = jnp.float32(math.log(1 / 0.07))
  one_device = jax.jit(jax.value_and_grad(losses.clip_loss, argnums=(0, 1, 2)))(
      jnp.asarray(images), jnp.asarray(texts), t)
  sharded = parallel.to_global({'i': images, 't': texts}, mesh)
  assert len(sharded['i'].sharding.device_set) == 8
  eight = jax.jit(parallel.under_mesh(mesh, jax.value_and_grad(losses.clip_loss,
                                                               argnums=(0, 1, 2))))(
      sharded['i'], sharded['t'], t)
  chex.assert_trees_all_close(eight, one_device, rtol=1e-5, atol=1e-6)
  # Not the mean of eight local losses over 2 pairs each, which sees fewer negatives.
  local = np.mean([losses.clip_loss(jnp.asarray(images[k:k + 2]), jnp.asarray(texts[k:k + 2]),
                                    t) for k in range(0, 16, 2)])
  assert not np.isclose(float(eight[0]), local, rtol=1e-3)


# ---------------------------------------------------------------- zero-shot and retrieval

def test_prompt_ensembling_averages_normalised_embeddings():
  # Two classes, two templates; the second template's embeddings are 10x longer, which
  # must not let them outweigh the first.
  prompts = jnp.array([[[1.0, 0.0], [0.0, 10.0]], [[0.0, 2.0], [-30.0, 0.0]]])
  got = zero_shot.class_embeddings(prompts)
  expected = np.array([[1.0, 1.0], [-1.0, 1.0]]) / math.sqrt(2)
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_rank_of_first_match_counts_ties_above():
  similarity = np.array([[0.9, 0.5, 0.5, 0.1], [0.2, 0.2, 0.8, 0.2]])
  matches = np.array([[False, True, False, False], [True, False, False, True]])
  # Row 0: 0.9 above, and the tie at 0.5 counts above: rank 2. Row 1: its matches score
  # 0.2; 0.8 is above and the non-matching 0.2 tie counts above: rank 2.
  np.testing.assert_array_equal(retrieval.rank_of_first_match(similarity, matches), [2, 2])


def test_recall_at_k_equals_a_brute_force_count():
  rng = np.random.default_rng(3)
  n, k_texts, dim = 30, 3, 6
  images = rng.normal(size=(n, dim))
  texts = images[:, None] + rng.normal(size=(n, k_texts, dim)) * 1.5
  got = retrieval.recall_at_k(images, texts, ks=(1, 5))
  flat = texts.reshape(n * k_texts, dim)
  scores = images @ flat.T
  for k in (1, 5):
    i2t = np.mean([i in np.argsort(-scores[i])[:k] // k_texts for i in range(n)])
    t2i = np.mean([j // k_texts in np.argsort(-scores[:, j])[:k] for j in range(n * k_texts)])
    assert got[f'image_to_text/recall@{k}'] == pytest.approx(i2t)
    assert got[f'text_to_image/recall@{k}'] == pytest.approx(t2i)
  assert 0 < got['image_to_text/recall@1'] < got['image_to_text/recall@5'] <= 1


def tiny_config(scenes_data_dir):
  config = config_lib.load_config(CLIP_SCENES + ':local')
  # The test data dir has scenes/multi only: its label is scenes/single's 40 classes.
  config_lib.apply_overrides(config, {
      'data.data_dir': scenes_data_dir, 'schedule.name': 'constant',
      **{f'evals.{name}.data.{field}': value for name in ('zero_shot', 'probe')
         for field, value in (('name', 'scenes/multi'), ('data_dir', scenes_data_dir))}})
  return config


def test_zero_shot_classifier_is_the_text_towers_class_embeddings(scenes_data_dir, tmp_path):
  config = tiny_config(scenes_data_dir)
  from vision_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  builder = pipeline.get_builder('scenes/multi', scenes_data_dir)
  info = pipeline.dataset_info(builder, 'scenes/multi')
  method = clip_method.Method(config, info, total_steps=1, steps_per_epoch=1)
  mesh = parallel.make_mesh(1)
  batch = method.synthetic_batch(2, (32, 32, 3), np.random.default_rng(0))
  state = method.init_state(jax.random.key(0), batch)
  evaluator = zero_shot.Evaluator(method, config.evals.zero_shot, name='zero_shot',
                                  workdir=str(tmp_path), mesh=mesh, train_data=config.data)
  templates = config.evals.zero_shot.templates
  names = info.class_names
  assert evaluator.prompts[:len(templates)] == [t.format(names[0]) for t in templates]
  # Directly with the text tower: embed each class's prompts, average, normalise.
  variables = {'params': state.params, **state.model_state}
  expected = []
  for name in names:
    tokens = method.vocab.encode_batch([t.format(name) for t in templates], method.max_len)
    e = method.model.apply(variables, tokens, method='encode_text')
    mean = np.mean(np.asarray(e) / np.linalg.norm(e, axis=1, keepdims=True), axis=0)
    expected.append(mean / np.linalg.norm(mean))
  np.testing.assert_allclose(evaluator.classifier(state), np.stack(expected), atol=1e-5)


def test_bad_templates_and_foreign_vocabularies_are_errors(scenes_data_dir, tmp_path):
  config = tiny_config(scenes_data_dir)
  from vision_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  info = pipeline.dataset_info(pipeline.get_builder('scenes/multi', scenes_data_dir),
                               'scenes/multi')
  method = clip_method.Method(config, info, total_steps=1, steps_per_epoch=1)
  kwargs = dict(workdir=str(tmp_path), mesh=parallel.make_mesh(1), train_data=config.data)
  bad = config_lib.evaluator_config(type='zero_shot', templates=('a photo',),
                                    data=dict(split='test'), pp=config.evals.zero_shot.pp)
  with pytest.raises(config_lib.ConfigError, match='exactly one'):
    zero_shot.Evaluator(method, bad, name='zs', **kwargs)
  foreign = config.evals.retrieval.copy_and_resolve_references()
  foreign.data.name = 'scenes/compositional'
  with pytest.raises(config_lib.ConfigError, match='another word vocabulary'):
    retrieval.Evaluator(method, foreign, name='retrieval', **kwargs)
  config.grad_accum_steps = 2
  with pytest.raises(config_lib.ConfigError, match='grad_accum_steps must be 1'):
    clip_method.Method(config, info, total_steps=1, steps_per_epoch=1)


def test_hard_negatives_enter_the_loss(scenes_data_dir):
  """`clip.hard_negatives`: swapped captions are extra texts of each image's softmax; a
  negative equal to its caption is left out, so all-equal negatives give the plain loss."""
  config = config_lib.load_config(CLIP_SCENES + ':negatives,local')
  assert 'swap_word' in config.data.pp_train and config.clip.hard_negatives
  from vision_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  info = pipeline.dataset_info(pipeline.get_builder('scenes/multi', scenes_data_dir),
                               'scenes/multi')
  method = clip_method.Method(config, info, total_steps=1, steps_per_epoch=1)
  batch = method.synthetic_batch(4, (32, 32, 3), np.random.default_rng(0))
  state = method.init_state(jax.random.key(0), batch)
  loss = lambda b: float(method.loss(state.params, state.model_state, b, jax.random.key(1))[0])
  plain = loss({**batch, 'negative_tokens': batch['tokens']})
  swapped = np.array(batch['tokens'])
  swapped[:, 1] = (swapped[:, 1] + 1) % method.model.vocab_size
  assert loss({**batch, 'negative_tokens': swapped}) > plain
  with pytest.raises(config_lib.ConfigError, match='needs batch\\["negative_tokens"\\]'):
    loss(batch)


def test_clip_scenes_trains_evaluates_and_resumes(scenes_data_dir, tmp_path):
  from vision_jax import checkpointing  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  config = tiny_config(scenes_data_dir)
  run = str(tmp_path / 'run')
  results = train.train_and_evaluate(config, run, num_devices=1)
  assert results['zero_shot/num_classes'] == 40 and results['zero_shot/num_examples'] == 24
  assert 0 <= results['zero_shot/accuracy'] <= results['zero_shot/top5_accuracy'] <= 1
  assert results['retrieval/num_images'] == 24 and results['retrieval/num_texts'] == 120
  for direction in ('image_to_text', 'text_to_image'):
    assert (results[f'retrieval/{direction}/recall@1']
            <= results[f'retrieval/{direction}/recall@10'])
  assert 0 <= results['probe/probe_all/accuracy'] <= 1
  for path in ('zero_shot/zero_shot.png', 'zero_shot/confusion_matrix.png',
               'retrieval/similarity.png', 'probe/embedding.png'):
    assert os.path.exists(os.path.join(run, path)), path
  with open(os.path.join(run, 'metrics.jsonl')) as f:
    logged = [m for m in map(json.loads, f) if 'train/logit_scale' in m]
  assert 0 < logged[-1]['train/logit_scale'] <= 100
  # Interrupted after its step-3 checkpoint and resumed: the same final weights.
  resumed = str(tmp_path / 'resumed')
  shutil.copytree(os.path.join(run, 'checkpoints', '3'),
                  os.path.join(resumed, 'checkpoints', '3'))
  config.evals = {}
  train.train_and_evaluate(config, resumed, num_devices=1)
  chex.assert_trees_all_close(checkpointing.read_latest(resumed)['params'],
                              checkpointing.read_latest(run)['params'], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', ['clip_scenes', 'clip_compositional'])
def test_recipes_pp_matches_the_model(scenes_data_dir, name):
  from vision_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(os.path.join(REPO, f'experiments/vision_language/{name}.py'))
  builder = pipeline.get_builder(config.data.name, scenes_data_dir)
  batch = next(iter(pipeline.eval_batches(builder, 'train', batch_size=2,
                                          pp=config.data.pp_train)))
  assert batch['image'].shape[1:] == tuple(config.data.input_shape)
  assert batch['tokens'].shape[1] == config.model.max_len
  longest = builder.info.metadata['max_words']['captions']
  assert config.model.max_len >= longest + 2  # bos, the words, eos: nothing is cut
  if name == 'clip_compositional':
    assert {k: config.evals[k].data.split for k in config.evals} == {
        'zero_shot': 'test', 'zero_shot_novel': 'test_novel'}


def test_accelerator_recipe_tokenizes_with_the_users_byte_pair_file():
  recipe = os.path.join(REPO, 'experiments/vision_language/clip_vit_b32.py')
  config = config_lib.load_config(recipe + ':bpe=/data/bpe.txt.gz,zero_shot=cifar10')
  assert config.clip.bpe_path == '/data/bpe.txt.gz'
  assert 'bpe_tokenize(77, path="/data/bpe.txt.gz")' in config.data.pp_train
  assert config.evals.zero_shot.data.name == 'cifar10'
  assert config.model.vocab_size == 49_408 and config.model.embed_dim == 512
  with pytest.raises(ValueError, match='unknown arguments'):
    config_lib.load_config(recipe + ':bpe_file=x')


def test_byte_pair_tokenizer_sets_the_text_side(tmp_path):
  # A tiny merges file in OpenAI's format (header line, then ranked merges).
  import gzip  # pylint: disable=g-import-not-at-top
  path = tmp_path / 'merges.txt.gz'
  with gzip.open(path, 'wt', encoding='utf-8') as f:
    f.write('#version: 0.2\nt h\nth e</w>\nc a\nca t</w>\n')
  config = config_lib.load_config(CLIP_SCENES + ':local')
  config.clip.bpe_path = str(path)
  info = DatasetInfo(name='pairs', num_examples={}, num_classes=None, class_names=None)
  method = clip_method.Method(config, info, total_steps=1, steps_per_epoch=1)
  tokenizer = method.vocab
  assert method.model.vocab_size == tokenizer.vocab_size == 512 + 4 + 2
  assert (method.model.eos_id, method.model.pad_id) == (tokenizer.eos_id, 0)
  rows = method.tokenize(['the cat.', 'a cat'])
  assert rows.shape == (2, method.max_len)
  assert rows[0, 0] == tokenizer.bos_id and tokenizer.decode(rows[0]) == 'the cat .'
  # The text tower reads each row at its end-of-text token.
  state = method.init_state(jax.random.key(0), method.synthetic_batch(
      2, (32, 32, 3), np.random.default_rng(0)))
  embeddings = method.embed_text(state, {'tokens': jnp.asarray(rows)})
  chex.assert_shape(embeddings, (2, config.model.embed_dim))
