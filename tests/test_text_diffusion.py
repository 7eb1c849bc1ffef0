"""The diffusion route to text-to-image: the U-Net's cross-attention against a direct
computation (padding masked out), caption dropout to the empty caption, classifier-free
guidance against the empty caption, faithfulness on held-out pairs, and
experiments/vision_language/text_diffusion_scenes.py end to end with the generation CLI."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_jax import config_lib, generate, train
from vision_jax.data import text
from vision_jax.dataset_info import DatasetInfo
from vision_jax.evaluators import text_to_image
from vision_jax.methods import text_diffusion
from vision_jax.models import unet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT_DIFFUSION = os.path.join(REPO, 'experiments/vision_language/text_diffusion_scenes.py')
WORDS = ('a', 'red', 'blue', 'circle', 'square', '.')


def test_cross_attention_is_masked_softmax_attention_over_the_tokens():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 2, 2, 8)), jnp.float32)
  context = jnp.asarray(rng.standard_normal((2, 3, 5)), jnp.float32)
  mask = jnp.array([[True, True, False], [True, False, False]])
  block = unet.CrossAttentionBlock(num_heads=2, norm_groups=2)
  variables = block.init(jax.random.key(0), x, context, mask)
  # Away from the zero-initialised output projection, so the attention shows.
  params = jax.tree.map(lambda p: p + 0.3 * jnp.asarray(rng.standard_normal(p.shape),
                                                        p.dtype), variables['params'])
  got = np.asarray(block.apply({'params': params}, x, context, mask))
  # Directly, in numpy: GroupNorm of the map, LayerNorm of the tokens, two heads.
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  xs, cs = np.asarray(x, np.float64), np.asarray(context, np.float64)
  groups = xs.reshape(2, 4, 2, 4)
  normed = ((groups - groups.mean((1, 3), keepdims=True))
            / np.sqrt(groups.var((1, 3), keepdims=True) + 1e-6)).reshape(2, 2, 2, 8)
  normed = normed * p['norm']['scale'] + p['norm']['bias']
  c = (cs - cs.mean(-1, keepdims=True)) / np.sqrt(cs.var(-1, keepdims=True) + 1e-6)
  c = c * p['context_norm']['scale'] + p['context_norm']['bias']
  q = (normed.reshape(2, 4, 8) @ p['q']['kernel'] + p['q']['bias']).reshape(2, 4, 2, 4)
  kv = (c @ p['kv']['kernel'] + p['kv']['bias']).reshape(2, 3, 2, 2, 4)
  k, v = kv[:, :, 0], kv[:, :, 1]
  logits = np.einsum('nqhd,nkhd->nhqk', q, k) / 2.0
  logits = np.where(np.asarray(mask)[:, None, None], logits, -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  out = np.einsum('nhqk,nkhd->nqhd', weights, v).reshape(2, 4, 8)
  expected = xs + (out @ p['proj_out']['kernel'] + p['proj_out']['bias']).reshape(2, 2, 2, 8)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
  # Masked tokens are not read: changing them changes nothing.
  moved = context.at[1, 1:].set(100.0).at[0, 2].set(-7.0)
  np.testing.assert_allclose(block.apply({'params': params}, x, moved, mask), got,
                             rtol=1e-6, atol=1e-6)


def tiny_method(**options):
  config = config_lib.load_config(TEXT_DIFFUSION + ':local')
  config_lib.apply_overrides(config, {'model.text_len': '6', 'text_diffusion.ema_decay': '0.0',
                                      **{f'text_diffusion.{k}': str(v)
                                         for k, v in options.items()}})
  vocab = text.Vocabulary(WORDS)
  info = DatasetInfo(name='toy', num_examples={'train': 8}, num_classes=None,
                     class_names=None, metadata={'vocabulary': list(vocab.tokens)})
  return text_diffusion.Method(config, info, total_steps=1, steps_per_epoch=1)


def test_dropped_captions_become_the_empty_caption_and_guidance_extrapolates_from_it():
  method = tiny_method(text_dropout=0.5)
  tokens = method.tokenize(['a red circle.', 'blue square', 'a', 'red'] * 2)
  np.testing.assert_array_equal(method.empty_tokens, [text.Vocabulary.bos_id,
                                                      text.Vocabulary.eos_id, 0, 0, 0, 0])
  images = jnp.asarray(np.random.default_rng(1).uniform(size=(8, 32, 32, 3)), jnp.float32)
  batch = {'image': images, 'tokens': jnp.asarray(tokens)}
  state = method.init_state(jax.random.key(0), batch)
  # Away from the zero-initialised layers, so that the caption matters.
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(2), p.shape),
                        state.params)
  rng = jax.random.key(7)
  loss, _ = jax.jit(method.loss)(params, {}, batch, rng)
  noise_rng, text_rng, _ = jax.random.split(rng, 3)
  drop = np.asarray(jax.random.bernoulli(text_rng, 0.5, (8,)))
  assert 0 < drop.sum() < 8
  simple_loss = jax.jit(lambda tokens: method.simple_loss(
      params, {}, images, noise_rng, train=False, tokens=tokens)[0].mean())
  expected = np.where(drop[:, None], method.empty_tokens[None], tokens)
  np.testing.assert_allclose(loss, simple_loss(expected), rtol=1e-5)
  assert abs(float(simple_loss(tokens)) - float(loss)) > 1e-5  # the empty caption mattered
  # Guidance w: (1 + w) eps(x, caption) - w eps(x, empty caption).
  state = state.replace(params=params)
  x = images[:4] * 2 - 1
  guided = method._eps_fn  # pylint: disable=protected-access
  eps = jax.jit(lambda rows: guided(state, rows, 2.0)(x, 500))(jnp.asarray(tokens[:4]))
  apply = jax.jit(lambda rows: method.model.apply({'params': params}, x, jnp.full([4], 500),
                                                  rows))
  np.testing.assert_allclose(eps, 3 * apply(tokens[:4]) - 2 * apply(
      np.tile(method.empty_tokens, (4, 1))), rtol=1e-4, atol=1e-5)
  with pytest.raises(config_lib.ConfigError, match='model.text_len is 6'):
    method.generate_from_text(state, rng, jnp.zeros((2, 5), jnp.int32))


def test_faithfulness_on_held_out_pairs_is_reported_apart():
  # Classes 0 and 2 seen, class 1 held out; two images each.
  got = text_to_image.faithfulness(np.array([0, 1, 1, 1, 2, 0]), 3, 2, held_out=[1])
  assert got == {'faithfulness': 0.5, 'faithfulness_per_class_min': 0.5,
                 'faithfulness_num_images': 4.0, 'faithfulness_novel': 1.0,
                 'faithfulness_novel_per_class_min': 1.0, 'faithfulness_novel_num_images': 2.0}


def test_text_diffusion_scenes_trains_evaluates_and_draws_from_text(scenes_data_dir, tmp_path,
                                                                    capsys):
  config = config_lib.load_config(TEXT_DIFFUSION + ':data=compositional,local')
  config_lib.apply_overrides(config, {'data.data_dir': scenes_data_dir})
  config.evals.text_to_image.class_names = ('red circle', 'blue square')  # 2 of 40 prompts
  run = str(tmp_path / 'run')
  results = train.train_and_evaluate(config, run, num_devices=1)
  assert results['test/simple_loss'] > 0 and results['test/num_examples'] == 24
  for figure in ('captions.png', 'class_prompts.png'):
    assert os.path.getsize(os.path.join(run, 'text_to_image', figure)) > 1000
  out = str(tmp_path / 'drawn')
  prompts = ['a red circle.', 'there is a big blue square.']
  args = ['--workdir', run, '--prompt', prompts[0], '--prompt', prompts[1], '--num', '2',
          '--steps', '2', '--guidance', '1.5', '--seed', '4']
  assert generate.main(args + ['--out', out]) == 0
  drawn = np.load(os.path.join(out, 'samples.npz'))
  assert drawn['images'].shape == (4, 32, 32, 3) and drawn['images'].dtype == np.uint8
  assert list(drawn['prompts']) == [prompts[0]] * 2 + [prompts[1]] * 2
  # A sampling option the method lacks is a one-line error.
  assert generate.main(args[:-4] + ['--top_k', '3', '--out', str(tmp_path / 'never')]) == 2
  err = capsys.readouterr().err.strip()
  assert "no sampling option 'top_k'" in err and len(err.splitlines()) == 1
  assert not (tmp_path / 'never').exists()


def test_the_faithfulness_judge_knows_the_classes_of_both_datasets(scenes_data_dir):
  """cnn_scenes (trained on scenes/single) judges prompts of scenes/compositional too:
  its 40 classes are the same names in the same order, the held-out pairs among them."""
  from vision_jax.data import pipeline, scenes  # pylint: disable=g-import-not-at-top
  judge = config_lib.load_config(os.path.join(REPO, 'experiments/classification/cnn_scenes.py'))
  assert judge.data.name == 'scenes/single' and judge.data.num_classes == 40
  info = pipeline.dataset_info(pipeline.get_builder('scenes/compositional', scenes_data_dir),
                               'scenes/compositional')
  assert tuple(info.class_names) == tuple(scenes.CLASS_NAMES)
  assert set(info.metadata['held_out']) == set(scenes.HELD_OUT) <= set(info.class_names)
  for data in ('single', 'compositional'):
    config = config_lib.load_config(f'{TEXT_DIFFUSION}:data={data}')
    assert config.model.text_len >= 2 + 11  # bos, the longest one-object caption, eos
  with pytest.raises(config_lib.ConfigError, match='data must be one of'):
    config_lib.load_config(TEXT_DIFFUSION + ':data=multi')
