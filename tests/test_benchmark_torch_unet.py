"""The PyTorch twin of the DDPM U-Net and its training step (`vision_jax.benchmark_torch`):
the same parameters as the Flax model, and with its weights the same outputs."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_jax import config_lib, models
from vision_jax.models import unet

torch = pytest.importorskip('torch')
from vision_jax import benchmark_torch  # noqa: E402  pylint: disable=g-import-not-at-top

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DDPM_MNIST = os.path.join(REPO, 'experiments/generative/ddpm_mnist.py')


def flax_params(model, input_shape, conditional):
  """The Flax model's parameter shapes, without running it."""
  n = 2
  labels = jnp.zeros([n], jnp.int32) if conditional else None
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((n, *input_shape)),
                        jnp.zeros([n], jnp.int32), labels)['params']


def load_flax_params(twin, params):
  """Copies Flax params into the twin: names match, kernels HWIO -> OIHW, (in, out) ->
  (out, in); every parameter of the twin must be set exactly once."""
  flat = {'.'.join(k.key for k in path): value
          for path, value in jax.tree_util.tree_flatten_with_path(params)[0]}
  targets = twin.state_dict()
  state = {}
  for path, value in flat.items():
    module, leaf = path.rsplit('.', 1)
    value = torch.from_numpy(np.array(value))
    if leaf == 'kernel':
      value = value.permute(3, 2, 0, 1) if value.ndim == 4 else value.T
    name = f'{module}.{"bias" if leaf == "bias" else "weight"}'
    state[name] = value.reshape(targets[name].shape).contiguous()
  twin.load_state_dict(state, strict=True)


def random_params(params, seed=0):
  """Params with every layer non-zero (the zero-initialised ones too), activations O(1)."""
  rng = np.random.default_rng(seed)

  def draw(path, p):
    leaf = path[-1].key
    noise = rng.standard_normal(p.shape).astype(np.float32)
    if leaf == 'kernel':
      return noise / np.sqrt(np.prod(p.shape[:-1]))
    if leaf == 'scale':
      return 1 + 0.1 * noise
    return noise if leaf == 'embedding' else 0.1 * noise
  return jax.tree_util.tree_map_with_path(draw, params)


def count(tree) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(tree))


@pytest.mark.parametrize('spec', [DDPM_MNIST, DDPM_MNIST + ':conditional'])
def test_ddpm_mnist_twin_has_the_same_parameters(spec):
  config = config_lib.load_config(spec)
  conditional = config.diffusion.conditional
  num_classes = config.data.num_classes if conditional else None
  params = flax_params(models.get_model(config.model, num_classes=num_classes),
                       config.data.input_shape, conditional)
  twin = benchmark_torch.build_model(
      'unet', benchmark_torch._model_kwargs(config.model), config.data.input_shape,  # pylint: disable=protected-access
      num_classes)
  assert sum(p.numel() for p in twin.parameters()) == count(params)
  # The label table is the only difference between the two variants: 11 x 256.
  assert count(params.get('label_embedding', {})) == (11 * 256 if conditional else 0)


@pytest.mark.parametrize('kwargs, num_classes', [
    (unet.TINY, None),
    (unet.TINY, 10),
    (dict(unet.TINY, num_heads=2, num_res_blocks=2, out_channels=2), 10),
])
def test_tiny_twin_computes_what_the_flax_model_computes(kwargs, num_classes):
  input_shape = (8, 8, 3)
  model = unet.Model(**kwargs, num_classes=num_classes)
  params = random_params(flax_params(model, input_shape, num_classes is not None))
  twin = benchmark_torch.build_model('unet', dict(kwargs), input_shape, num_classes).eval()
  # Same parameter count per top-level layer (each Flax module has its twin by name).
  twin_counts = {}
  for name, p in twin.named_parameters():
    twin_counts[name.split('.')[0]] = twin_counts.get(name.split('.')[0], 0) + p.numel()
  assert twin_counts == {name: count(tree) for name, tree in params.items()}
  load_flax_params(twin, params)

  rng = np.random.default_rng(1)
  x = rng.standard_normal((3, *input_shape)).astype(np.float32)
  t = np.array([0, 17, 999], np.int32)
  labels = None if num_classes is None else np.array([3, 0, num_classes], np.int32)
  expected = model.apply({'params': params}, x, t, labels)
  with torch.no_grad():
    got = twin(torch.from_numpy(x).permute(0, 3, 1, 2).to(memory_format=torch.channels_last),
               torch.from_numpy(t), None if labels is None else torch.from_numpy(labels).long())
  got = got.permute(0, 2, 3, 1).numpy()
  assert got.shape == expected.shape == (3, 8, 8, kwargs.get('out_channels') or 3)
  assert np.abs(expected).mean() > 0.1  # Every layer took part (none is zero).
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def tiny_ddpm_config(arg=''):
  config = config_lib.load_config(DDPM_MNIST + arg)
  with config.unlocked():
    config.model = dict(name='unet', dropout=0.1, **unet.TINY)
  return config


@pytest.mark.parametrize('arg', ['', ':conditional'])
def test_diffusion_step_starts_at_the_noise_variance(arg):
  step = benchmark_torch.make_train_step(tiny_ddpm_config(arg), (8, 8, 1), 10, batch_size=4)
  # The output convolution starts at zero, so the first loss is mean(eps^2), about 1.
  first = float(step())
  assert 0.6 < first < 1.5
  assert all(np.isfinite(float(step())) for _ in range(2))


def test_unknown_method_is_named():
  config = tiny_ddpm_config()
  config.method = 'gan'
  with pytest.raises(ValueError, match=r"method 'gan' \(have classification, diffusion\)"):
    benchmark_torch.make_train_step(config, (8, 8, 1), 10, batch_size=4)
