"""DALL-E's route: the VQ-VAE method's loss and EMA codebook step against their formulas,
the prior's weighted cross-entropy against a direct computation, both stages of
experiments/vision_language/dalle_scenes.py end to end (the prior on the trained
VQ-VAE's codes), the generation CLI, CLIP re-ranking against a direct cosine, and bad
input."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vision_jax import checkpointing, config_lib, generate, inference, train
from vision_jax.data import text
from vision_jax.dataset_info import DatasetInfo
from vision_jax.evaluators import text_to_image
from vision_jax.methods import dalle, vqvae

# The module fixture trains a run: one xdist worker takes all of this file's tests,
# so that it trains once.
pytestmark = pytest.mark.xdist_group('test_dalle')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DALLE_SCENES = os.path.join(REPO, 'experiments/vision_language/dalle_scenes.py')
CLIP_SCENES = os.path.join(REPO, 'experiments/vision_language/clip_scenes.py')
# Constant rates without warm-up: the runs share their compiled steps' shapes.
CONSTANT = {'schedule.name': 'constant', 'schedule.warmup_steps': 'None'}
WORDS = ('a', 'red', 'blue', 'circle', 'square', '.')


def local_config(spec, data_dir, **overrides):
  config = config_lib.load_config(spec)
  config_lib.apply_overrides(config, {'data.data_dir': data_dir, **CONSTANT,
                                      **{k: str(v) for k, v in overrides.items()}})
  return config


# ----------------------------------------------------------------------------- formulas


def test_vqvae_loss_is_mean_squared_error_plus_commitment_and_the_ema_step():
  config = config_lib.load_config(DALLE_SCENES + ':stage=vqvae,local')
  info = DatasetInfo(name='toy', num_examples={'train': 8}, num_classes=None,
                     class_names=None)
  method = vqvae.Method(config, info, total_steps=1, steps_per_epoch=1)
  images = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 32, 32, 3)), jnp.float32)
  variables = jax.jit(method.init_variables)(jax.random.key(0), {'image': images})
  params, model_state = variables['params'], {'vq_stats': variables['vq_stats']}
  loss, (metrics, new_state) = jax.jit(method.loss)(params, model_state, {'image': images},
                                                    jax.random.key(1))
  # Directly: the latents, their nearest codes, the decoded codes.
  model, x = method.model, 2 * images - 1
  z = np.asarray(model.apply(variables, x, method='encode_latents'), np.float64)
  codebook = np.asarray(model_state['vq_stats']['quantizer']['codebook'], np.float64)
  distances = ((z[..., None, :] - codebook) ** 2).sum(-1)
  nearest = distances.argmin(-1)
  decoded = np.asarray(model.apply(variables, jnp.asarray(nearest), method='decode_indices'))
  mse = np.mean((decoded - np.asarray(x)) ** 2)
  commitment = 0.25 * np.mean((z - codebook[nearest]) ** 2)
  np.testing.assert_allclose(metrics['reconstruction_mse'], mse, rtol=1e-4)
  np.testing.assert_allclose(metrics['commitment_loss'], commitment, rtol=1e-4)
  np.testing.assert_allclose(loss, mse + commitment, rtol=1e-4)
  # Not the per-image sum, which is 3,072 times the mean.
  assert abs(loss - (mse * 32 * 32 * 3 + commitment)) > 10 * loss
  # One EMA step of the counts, N = 0.99 * 1 + 0.01 n_k; codes used by no vector fall
  # below 1 and are revived with a count of 1.
  counts = np.bincount(nearest.ravel(), minlength=method.num_codes)
  expected = np.where(0.99 + 0.01 * counts < 1.0, 1.0, 0.99 + 0.01 * counts)
  np.testing.assert_allclose(new_state['vq_stats']['quantizer']['cluster_size'], expected,
                             rtol=1e-6)
  used = counts > 0
  np.testing.assert_allclose(metrics['codebook_usage'], used.mean(), rtol=1e-6)
  p = counts[used] / counts.sum()
  np.testing.assert_allclose(metrics['perplexity'], np.exp(-np.sum(p * np.log(p))), rtol=1e-4)


def test_prior_loss_weighs_image_and_real_text_tokens():
  config = config_lib.load_config(DALLE_SCENES + ':stage=prior,local')
  config_lib.apply_overrides(config, {'model.text_len': '6', 'dalle.grid_size': '2',
                                      'dalle.num_image_codes': '5'})
  vocab = text.Vocabulary(WORDS)
  info = DatasetInfo(name='toy', num_examples={'train': 8}, num_classes=None,
                     class_names=None, metadata={'vocabulary': list(vocab.tokens)})
  method = dalle.Method(config, info, total_steps=1, steps_per_epoch=1)
  assert method.vqvae is None and method.image_tokens == 4
  tokens = vocab.encode_batch(['a red circle.', 'blue square', 'a'], 6)
  codes = np.array([[0, 1, 2, 3], [4, 4, 0, 1], [2, 2, 2, 2]], np.int32)
  batch = {'tokens': jnp.asarray(tokens), 'image_codes': jnp.asarray(codes)}
  variables = jax.jit(method.init_variables)(jax.random.key(0), batch)
  loss, (metrics, _) = jax.jit(method.loss)(variables['params'], {}, batch,
                                            jax.random.key(1))
  out = method.model.apply(variables, jnp.asarray(tokens), jnp.asarray(codes))
  log_p = lambda logits: np.asarray(jax.nn.log_softmax(logits), np.float64)  # noqa: E731
  image_nll = -np.take_along_axis(log_p(out['image_logits']), codes[..., None], -1)
  text_nll = -np.take_along_axis(log_p(out['text_logits']), tokens[..., None], -1)[..., 0]
  # Words and eos count; bos (always first) and padding do not.
  real = (tokens != vocab.pad_id) & (tokens != vocab.bos_id)
  assert real.sum() == 5 + 3 + 2
  text_loss = text_nll[real].mean()
  np.testing.assert_allclose(metrics['image_loss'], image_nll.mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics['text_loss'], text_loss, rtol=1e-5)
  np.testing.assert_allclose(loss, text_loss / 8 + 7 * image_nll.mean() / 8, rtol=1e-5)
  # The benchmark's batch: random codes below the codebook size, no image.
  synthetic = method.synthetic_batch(3, (32, 32, 3), np.random.default_rng(0))
  assert set(synthetic) == {'tokens', 'image_codes'} and synthetic['image_codes'].max() < 5
  with pytest.raises(config_lib.ConfigError, match='dalle.vqvae_workdir is unset'):
    method.image_codes({'image': jnp.zeros((1, 32, 32, 3))})


def test_faithfulness_counts_images_classified_as_their_prompt():
  # Three classes, two images each: class 0 both right, class 1 one, class 2 none.
  got = text_to_image.faithfulness(np.array([0, 0, 1, 0, 1, 1]), 3, 2)
  assert got == {'faithfulness': 0.5, 'faithfulness_per_class_min': 0.0,
                 'faithfulness_num_images': 6.0}
  # The classifier sees the images in the range its run was trained in.
  config = ml_collections.ConfigDict({'data': {'pp_train': 'decode|value_range(-1, 1)|flip_lr'}})
  assert text_to_image.input_range(config) == (-1.0, 1.0)
  np.testing.assert_allclose(text_to_image.to_range(np.array([0.0, 0.25, 1.0]), (-1.0, 1.0)),
                             [-1.0, -0.5, 1.0])
  config.data.pp_train = 'decode'
  assert text_to_image.input_range(config) == (0.0, 1.0)


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope='module')
def runs(scenes_data_dir, tmp_path_factory):
  """The trained `:local` VQ-VAE, a tiny CLIP and the prior on the VQ-VAE (its
  evaluator scoring with that CLIP), with their final results."""
  root = tmp_path_factory.mktemp('dalle_runs')
  paths = {name: str(root / name) for name in ('vqvae', 'clip', 'prior')}
  results = {}
  results['vqvae'] = train.train_and_evaluate(
      local_config(DALLE_SCENES + ':stage=vqvae,local', scenes_data_dir), paths['vqvae'],
      num_devices=1)
  clip_config = local_config(CLIP_SCENES + ':local', scenes_data_dir)
  clip_config.evals = ml_collections.ConfigDict()  # Only the trained towers are needed.
  results['clip'] = train.train_and_evaluate(clip_config, paths['clip'], num_devices=1)
  results['prior'] = train.train_and_evaluate(
      local_config(DALLE_SCENES + ':stage=prior,local', scenes_data_dir,
                   **{'dalle.vqvae_workdir': paths['vqvae'],
                      'evals.text_to_image.clip_workdir': paths['clip']}), paths['prior'],
      num_devices=1)
  return paths, results


def test_both_stages_train_and_the_prior_reads_the_vqvae(runs):
  paths, results = runs
  vq = results['vqvae']
  assert vq['reconstruction/num_examples'] == 24
  assert 0 < vq['reconstruction/reconstruction_mse'] < 4  # [-1, 1] images: at most 4.
  assert os.path.getsize(os.path.join(paths['vqvae'], 'reconstruction',
                                      'reconstructions.png')) > 1000
  score = results['prior']['text_to_image/clip_score (project CLIP)']
  assert -1 <= score <= 1
  for figure in ('captions.png', 'class_prompts.png'):
    assert os.path.getsize(os.path.join(paths['prior'], 'text_to_image', figure)) > 1000
  # The VQ-VAE is frozen outside the prior's state: its checkpoint holds the prior only.
  saved = checkpointing.read_latest(paths['prior'])
  assert not saved['model_state'] and 'image_embed' in saved['params']
  assert 'encoder' not in saved['params'] and 'quantizer' not in str(jax.tree.structure(saved))
  _, method, state = inference.load_run(paths['prior'])
  _, vq_method, vq_state = inference.load_run(paths['vqvae'])
  assert method.model.num_image_codes == vq_method.num_codes == 16
  assert method.image_tokens == 64 and method.grid_shape == (8, 8)
  images = jnp.asarray(np.random.default_rng(3).uniform(size=(2, 32, 32, 3)), jnp.float32)
  np.testing.assert_array_equal(method.image_codes({'image': images}),
                                vq_method.encode_tokens(vq_state, images).reshape(2, 64))
  # Drawn images: in [0, 1], the VQ-VAE's decoding of the drawn tokens.
  tokens = jnp.asarray(method.tokenize(['a red circle.', 'a blue square.']))
  key = jax.random.key(5)
  drawn = method.generate_from_text(state, key, tokens, temperature=1.0, top_k=4)
  grid = method.sample_tokens(state, key, tokens, temperature=1.0, top_k=4)
  np.testing.assert_allclose(drawn, vq_method.decode_tokens(vq_state, grid), atol=1e-6)
  assert drawn.shape == (2, 32, 32, 3) and 0 <= drawn.min() and drawn.max() <= 1


def test_generate_cli_writes_images_and_reranks_by_clip(runs, tmp_path):
  paths, _ = runs
  prompts = ['a red circle.', 'there is a blue square.']
  plain, ranked = str(tmp_path / 'plain'), str(tmp_path / 'ranked')
  common = ['--workdir', paths['prior'], '--prompt', prompts[0], '--prompt', prompts[1],
            '--num', '4', '--seed', '3', '--top_k', '8']
  assert generate.main(common + ['--out', plain]) == 0
  out = np.load(os.path.join(plain, 'samples.npz'))
  assert out['images'].shape == (8, 32, 32, 3) and out['images'].dtype == np.uint8
  assert list(out['prompts']) == [prompts[0]] * 4 + [prompts[1]] * 4
  assert os.path.getsize(os.path.join(plain, 'samples.png')) > 1000
  assert generate.main(common + ['--out', ranked, '--rerank_with', paths['clip'],
                                 '--keep', '3']) == 0
  kept = np.load(os.path.join(ranked, 'samples.npz'))
  assert kept['images'].shape == (6, 32, 32, 3) and list(kept['prompts']) == (
      [prompts[0]] * 3 + [prompts[1]] * 3)
  # Directly: the same draws, the CLIP towers' normalised embeddings, their cosine.
  images, _ = generate.draw(paths['prior'], prompts, num=4, seed=3, batch_size=8, top_k=8)
  np.testing.assert_array_equal(inference.to_uint8(images), out['images'])
  _, clip, clip_state = inference.load_run(paths['clip'])
  variables = {'params': clip_state.params, **clip_state.model_state}
  image_e = np.asarray(clip.model.apply(variables, jnp.asarray(images), method='encode_image'))
  text_e = np.asarray(clip.model.apply(
      variables, jnp.asarray(clip.tokenize([p for p in prompts for _ in range(4)])),
      method='encode_text'))
  cosine = np.sum(image_e * text_e, -1) / (np.linalg.norm(image_e, axis=-1)
                                           * np.linalg.norm(text_e, axis=-1))
  for p in range(2):
    order = np.argsort(-cosine[4 * p:4 * p + 4], kind='stable')[:3]
    np.testing.assert_allclose(kept['scores'][3 * p:3 * p + 3], cosine[4 * p + order],
                               atol=1e-5)
    assert np.all(np.diff(kept['scores'][3 * p:3 * p + 3]) <= 0)  # best first
    np.testing.assert_array_equal(kept['images'][3 * p:3 * p + 3],
                                  out['images'][4 * p + order])


def test_bad_input_is_a_one_line_error(runs, tmp_path, capsys, scenes_data_dir):
  paths, _ = runs
  out = ['--out', str(tmp_path / 'never')]
  cases = (
      (['--workdir', str(tmp_path / 'missing'), '--prompt', 'a red circle.'], 'no config.json'),
      (['--workdir', paths['vqvae'], '--prompt', 'a red circle.'], 'does not draw images'),
      (['--workdir', paths['prior'], '--prompt', 'zebra xylophone'], 'has no word'),
      (['--workdir', paths['prior'], '--prompt', 'a red circle.', '--keep', '2'],
       '--keep needs --rerank_with'),
      (['--workdir', paths['prior'], '--prompt', 'a red circle.', '--rerank_with',
        paths['vqvae']], 'not clip'),
  )
  for args, message in cases:
    assert generate.main(args + out) == 2, args
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
  assert not (tmp_path / 'never').exists()
  for workdir, message in ((str(tmp_path / 'nowhere'), 'no config.json'),
                           (paths['clip'], 'holds a clip run, not a vqvae run')):
    config = local_config(DALLE_SCENES + ':stage=prior,local', scenes_data_dir,
                          **{'dalle.vqvae_workdir': workdir})
    with pytest.raises(config_lib.ConfigError, match=f'dalle.vqvae_workdir {workdir}.*'
                       f'{message}'):
      train.train_and_evaluate(config, str(tmp_path / 'prior'))
