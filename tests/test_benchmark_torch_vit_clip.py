"""The PyTorch twins of the ViT classifier and of CLIP and their training steps
(`vision_jax.benchmark_torch`): the same parameters as the Flax models, layer by layer."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_jax import benchmark, config_lib, losses, models, summary
from vision_jax.data import text

torch = pytest.importorskip('torch')
from vision_jax import benchmark_torch  # noqa: E402  pylint: disable=g-import-not-at-top

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIT_IMAGENET = os.path.join(REPO, 'experiments/classification/vit_imagenet.py')
CLIP_SCENES = os.path.join(REPO, 'experiments/vision_language/clip_scenes.py')
CLIP_VIT_B32 = os.path.join(REPO, 'experiments/vision_language/clip_vit_b32.py')


def count(tree) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(tree))


def top_level_counts(tree) -> dict[str, int]:
  return {name: count(subtree) for name, subtree in tree.items()}


def twin_counts(twin, depth: int = 1) -> dict[str, int]:
  """Parameter counts of the twin's submodules, by their first `depth` names."""
  counts = {}
  for name, p in twin.named_parameters():
    top = '.'.join(name.split('.')[:depth])
    counts[top] = counts.get(top, 0) + p.numel()
  return counts


def meta_twin(build):
  """The twin built without allocating its weights (only their shapes count here)."""
  with torch.device('meta'):
    return build()


def test_vit_b16_twin_has_the_parameters_of_the_flax_vit():
  config = config_lib.load_config(f'{VIT_IMAGENET}:variant=B/16')
  model, input_shape, init = summary.build_model(config)
  params = jax.eval_shape(init, jnp.zeros((1, *input_shape)))['params']
  twin = meta_twin(lambda: benchmark_torch.build_model(
      'vit', benchmark_torch._model_kwargs(config.model),  # pylint: disable=protected-access
      input_shape, config.data.num_classes))
  # Embedding, class token, positions, the encoder, the tanh pre-logits and the head.
  assert twin_counts(twin) == top_level_counts(params)
  assert twin_counts(twin.Transformer) == top_level_counts(params['Transformer'])
  # torchvision's vit_b_16 (86,567,656) plus the 768 x 768 tanh pre-logits layer.
  assert count(params) == 86_567_656 + 768 * 768 + 768
  assert sum(p.numel() for p in twin.parameters()) == count(params)


@pytest.mark.parametrize('overrides', [
    dict(pool='gap', posemb='learn'),
    dict(pool='cls', posemb='sincos2d'),
    dict(pool='gap', posemb='sincos2d', representation_size=24),
    dict(pool='cls', posemb='learn', patch_bias=False, pre_norm=True, patch_size=(4, 8)),
])
@pytest.mark.parametrize('num_classes', [7, None])
def test_small_vit_twins_have_the_parameters_of_the_flax_vits(overrides, num_classes):
  kwargs = {**dict(variant=None, width=16, depth=2, num_heads=2, patch_size=4, mlp_dim=40),
            **overrides}
  model = models.get_model(dict(name='vit', **kwargs), num_classes=num_classes)
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 24, 3)))['params']
  twin = benchmark_torch.build_model('vit', kwargs, (16, 24, 3), num_classes)
  assert sum(p.numel() for p in twin.parameters()) == count(params)
  # The fixed embeddings hold no parameters, and the class token none with them.
  assert twin_counts(twin) == top_level_counts(params)
  twin.eval()
  images = torch.randn(3, 3, 16, 24).to(memory_format=torch.channels_last)
  with torch.no_grad():
    out = twin(images)
  assert out.shape == (3, num_classes or overrides.get('representation_size') or 16)


def clip_method(path):
  """The benchmark's CLIP method (on its made-up vocabulary when the config sets none)."""
  return benchmark.make_method(config_lib.load_config(path))


def flax_clip_params(method):
  batch = method.synthetic_batch(2, tuple(method.config.data.input_shape),
                                 np.random.default_rng(0))
  return jax.eval_shape(method.init_variables, jax.random.key(0), batch)['params']


@pytest.mark.parametrize('path', [CLIP_SCENES, CLIP_VIT_B32])
def test_clip_twin_has_the_parameters_of_the_flax_clip(path):
  method = clip_method(path)
  params = flax_clip_params(method)
  config = method.config
  twin = meta_twin(lambda: benchmark_torch.build_clip(
      benchmark_torch._model_kwargs(config.model),  # pylint: disable=protected-access
      config.data.input_shape, method.model.vocab_size))
  # Each tower, each projection and the logit scale.
  assert twin_counts(twin) == top_level_counts(params)
  assert (twin_counts(twin.image_encoder) == top_level_counts(params['image_encoder'])
          and twin_counts(twin.text_encoder) == top_level_counts(params['text_encoder']))
  if path == CLIP_VIT_B32:
    assert count(params) == 151_277_313  # OpenAI's ViT-B/32 CLIP.


def tiny_clip_twin(vocab_size=20):
  config = config_lib.load_config(f'{CLIP_SCENES}:local')
  kwargs = benchmark_torch._model_kwargs(config.model)  # pylint: disable=protected-access
  return benchmark_torch.build_clip(kwargs, config.data.input_shape, vocab_size), config


def test_clip_twin_reads_the_text_at_its_first_end_token():
  twin, config = tiny_clip_twin()
  twin.eval()
  images = torch.randn(3, 3, 32, 32).to(memory_format=torch.channels_last)
  tokens = benchmark_torch.random_tokens(3, config.model.max_len, 20)
  eos_id, pad_id = text.Vocabulary.eos_id, text.Vocabulary.pad_id
  ends = benchmark_torch.end_of_text_positions(tokens, eos_id, pad_id)
  assert (tokens == eos_id).sum(1).eq(1).all()
  torch.testing.assert_close(ends, (tokens == eos_id).int().argmax(1))
  changed = tokens.clone()
  changed[0, ends[0] + 1:] = 7  # After the end token: unseen through the causal mask.
  before = ends[1] - 1  # A word before it: seen.
  changed[1, before] = 4 if tokens[1, before] != 4 else 5
  with torch.no_grad():
    image_emb, text_emb, scale = twin(images, tokens)
    again = twin(images, changed)[1]
  torch.testing.assert_close(torch.linalg.norm(text_emb, dim=1), torch.ones(3))
  torch.testing.assert_close(again[[0, 2]], text_emb[[0, 2]])
  assert not torch.allclose(again[1], text_emb[1])
  assert image_emb.shape == text_emb.shape == (3, config.model.embed_dim)
  assert float(scale.detach()) == pytest.approx(np.log(1 / 0.07))


@pytest.mark.parametrize('log_scale', [np.log(1 / 0.07), 5.0])
def test_clip_loss_twin_equals_the_jax_loss(log_scale):
  rng = np.random.default_rng(0)
  images, texts = rng.standard_normal((2, 6, 8)).astype(np.float32)
  expected = losses.clip_loss(jnp.asarray(images), jnp.asarray(texts), jnp.float32(log_scale))
  got = benchmark_torch.clip_loss(torch.from_numpy(images), torch.from_numpy(texts),
                                  torch.tensor(log_scale, dtype=torch.float32))
  np.testing.assert_allclose(float(got), float(expected), rtol=1e-5)


def test_clip_loss_twin_stops_the_scale_at_100():
  scale = torch.tensor(5.0, requires_grad=True)  # exp(5) > 100
  benchmark_torch.clip_loss(torch.randn(4, 8), torch.randn(4, 8), scale).backward()
  assert float(scale.grad) == 0.0


def test_clip_step_runs_and_learns_its_batch():
  config = config_lib.load_config(f'{CLIP_SCENES}:local')
  step = benchmark_torch.make_clip_step(config, (32, 32, 3), 20, batch_size=8)
  step_losses = [float(step()) for _ in range(5)]
  assert all(np.isfinite(step_losses))
  assert step_losses[-1] < step_losses[0]


def test_vit_classification_step_runs_and_learns_its_batch():
  config = config_lib.load_config(f'{VIT_IMAGENET}:variant=B/16,local')
  step = benchmark_torch.make_train_step(config, tuple(config.data.input_shape),
                                         config.data.num_classes, batch_size=4)
  step_losses = [float(step()) for _ in range(5)]
  assert all(np.isfinite(step_losses))
  assert step_losses[-1] < step_losses[0]


def test_other_image_towers_and_methods_are_refused():
  config = config_lib.load_config(f'{CLIP_SCENES}:local')
  with config.unlocked():
    config.model.image = dict(name='resnet', depth=18)
  with pytest.raises(ValueError, match="'resnet'"):
    benchmark_torch.make_clip_step(config, (32, 32, 3), 20, batch_size=4)
  with pytest.raises(ValueError, match='make_clip_step'):
    benchmark_torch.make_train_step(config, (32, 32, 3), 10, batch_size=4)
