"""The PyTorch twin of the Transformer captioner and its training step
(`vision_jax.benchmark_torch`): the same parameters as the Flax model, layer by layer."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_jax import benchmark, config_lib, models

torch = pytest.importorskip('torch')
from vision_jax import benchmark_torch  # noqa: E402  pylint: disable=g-import-not-at-top

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPTION_SCENES = os.path.join(REPO, 'experiments/vision_language/caption_scenes.py')


def flax_params(config, vocab_size):
  """The Flax captioner's parameter shapes, without running it."""
  model = models.get_model(config.model, vocab_size=vocab_size)
  images = jnp.zeros((2, *config.data.input_shape))
  tokens = jnp.zeros((2, config.model.max_len - 1), jnp.int32)
  return jax.eval_shape(model.init, jax.random.key(0), images, tokens)['params']


def count(tree) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(tree))


def build_twin(config, vocab_size):
  kwargs = benchmark_torch._model_kwargs(config.model)  # pylint: disable=protected-access
  return benchmark_torch.build_captioner(kwargs, config.data.input_shape, vocab_size)


def twin_counts(twin):
  counts = {}
  for name, p in twin.named_parameters():
    top = name.split('.')[0]
    counts[top] = counts.get(top, 0) + p.numel()
  return counts


@pytest.mark.parametrize('arg', ['decoder=transformer', 'decoder=transformer,local'])
def test_twin_has_the_parameters_of_the_flax_captioner(arg):
  config = config_lib.load_config(f'{CAPTION_SCENES}:{arg}')
  vocab_size = benchmark.SYNTHETIC_VOCAB_SIZE
  params = flax_params(config, vocab_size)
  twin = build_twin(config, vocab_size)
  # Layer by layer: encoder, grid projection, embeddings, each block, final norm, logits.
  assert twin_counts(twin) == {name: count(tree) for name, tree in params.items()}
  assert sum(p.numel() for p in twin.parameters()) == count(params)
  if 'local' not in arg:
    assert len(config.model.encoder.features) == 3 and config.model.width == 128
    assert {'block1', 'block2'} <= set(params) and 'block3' not in params


def tiny_config():
  config = config_lib.load_config(f'{CAPTION_SCENES}:decoder=transformer,local')
  with config.unlocked():
    config.model.max_len = 9
  return config


def test_twin_gives_logits_of_every_next_word():
  config = tiny_config()
  twin = build_twin(config, 20).eval()
  images = torch.randn(3, 3, 32, 32).to(memory_format=torch.channels_last)
  tokens = benchmark_torch.random_tokens(3, config.model.max_len, 20)
  assert tokens[:, 0].eq(1).all() and (tokens == 2).sum(1).eq(1).all()
  with torch.no_grad():
    logits = twin(images, tokens[:, :-1])
    # Causal: a later token does not change the logits of the earlier positions.
    changed = tokens[:, :-1].clone()
    changed[:, -1] = 5
    again = twin(images, changed)
  assert logits.shape == (3, config.model.max_len - 1, 20)
  torch.testing.assert_close(logits[:, :-1], again[:, :-1])
  assert not torch.allclose(logits[:, -1], again[:, -1])


def test_captioning_step_runs_and_learns_its_batch():
  config = tiny_config()
  step = benchmark_torch.make_captioning_step(config, (32, 32, 3), 20, batch_size=4)
  losses = [float(step()) for _ in range(4)]
  assert all(np.isfinite(losses))
  assert losses[-1] < losses[0]


@pytest.mark.parametrize('field, value, error', [
    ('decoder', 'attention', "decoder 'attention'"),
    ('encoder', dict(name='vit', patch_size=4), "encoder 'vit'"),
])
def test_other_captioners_are_refused(field, value, error):
  config = tiny_config()
  with config.unlocked():
    config.model[field] = value
  with pytest.raises(ValueError, match=error):
    benchmark_torch.make_captioning_step(config, (32, 32, 3), 20, batch_size=4)
