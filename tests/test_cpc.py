"""CPC: patches against a double loop, the context network's causality (exact zeros in
its Jacobian), InfoNCE against a literal numpy transcription, 8 devices equal 1 with
negatives from the global batch, and its config errors (the model's derivatives under
every transformation: tests/models/test_autodiff.py)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from vision_jax import config_lib, models, parallel
from vision_jax.dataset_info import DatasetInfo
from vision_jax.methods import cpc
from vision_jax.models import cpc as cpc_model

INFO = DatasetInfo(name='toy', num_examples={'train': 16}, num_classes=None,
                   class_names=None)
TINY_CNN = dict(name='cnn', features=(8,), dense_features=(16,), use_batchnorm=False,
                pooling='max')

# Tiny networks; XLA's optimising compile is what costs (as in tests/models).
jit = functools.partial(jax.jit, compiler_options={
    'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True})
info_nce_loss = jit(cpc.info_nce_loss, static_argnums=2)


def make_method(input_shape=None, grad_accum_steps=1, **options):
  config = config_lib.base_config()
  config.method = 'cpc'
  config.model.update(TINY_CNN)
  config.grad_accum_steps = grad_accum_steps
  config.cpc = options
  if input_shape is not None:
    config.data.input_shape = input_shape
  return cpc.Method(config, INFO, total_steps=2, steps_per_epoch=1)


def images(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(0, 1, shape), jnp.float32)


# ----------------------------------------------------------------------------- patches


@pytest.mark.parametrize('shape, p, s', [((2, 10, 13, 3), 4, 3), ((1, 8, 8, 1), 8, 8),
                                         ((2, 12, 12, 2), 8, 4), ((1, 9, 7, 1), 2, 2)])
def test_extract_patches_is_the_double_loop(shape, p, s):
  x = np.random.default_rng(0).standard_normal(shape)
  n, h, w, c = shape
  gh, gw = (h - p) // s + 1, (w - p) // s + 1
  expected = np.empty((n, gh, gw, p, p, c))
  for i in range(gh):
    for j in range(gw):
      expected[:, i, j] = x[:, i * s:i * s + p, j * s:j * s + p]
  actual = cpc_model.extract_patches(jnp.asarray(x, jnp.float32), p, s)
  chex.assert_shape(actual, (n, gh, gw, p, p, c))
  np.testing.assert_array_equal(actual, expected.astype(np.float32))


def test_extract_patches_refuses_images_smaller_than_a_patch():
  with pytest.raises(ValueError, match=r'8x8 patches do not fit in 6x10 images'):
    cpc_model.extract_patches(jnp.zeros((1, 6, 10, 1)), 8, 4)


# ----------------------------------------------------------------------------- causality


def test_the_context_network_is_causal_in_rows():
  net = cpc_model.ContextNetwork(features=5, num_layers=3, kernel_size=3)
  z = images((2, 6, 4, 3), seed=1) - 0.5
  variables = net.init(jax.random.key(0), z)
  jacobian = np.asarray(jit(jax.jacrev(lambda z: net.apply(variables, z)))(z))
  chex.assert_shape(jacobian, (2, 6, 4, 5, 2, 6, 4, 3))
  for i in range(6):
    block = jacobian[:, i]  # d c[:, i] / d z: [2, 4, 5, 2, 6, 4, 3]
    assert np.all(block[..., i + 1:, :, :] == 0), f'row {i} sees later rows'
    for row in range(max(0, i - 1), i + 1):  # its own row and the one above
      assert np.any(block[..., row, :, :] != 0), f'row {i} ignores row {row}'
    # Images are independent.
    for n in range(2):
      assert np.all(block[n, ..., 1 - n, :, :, :] == 0)


def test_predictions_depend_only_on_image_rows_above_their_target():
  # Non-overlapping 4x4 patches: grid row i reads image rows 4i .. 4i + 3, so the
  # predictions at grid row i read image rows < 4 (i + 1) of their own image only.
  model = cpc_model.CPC(encoder=models.get_model(TINY_CNN, num_classes=None), patch_size=4,
                        patch_stride=4, context_features=6, context_layers=2,
                        kernel_size=3, prediction_steps=2)
  x = images((2, 16, 12, 1))
  variables = model.init(jax.random.key(0), x)
  z, predictions = model.apply(variables, x)
  chex.assert_shape(z, (2, 4, 3, 16))
  chex.assert_shape(predictions, (2, 2, 4, 3, 16))
  jacobian = np.asarray(jit(jax.jacrev(lambda x: model.apply(variables, x)[1]))(x))
  for i in range(4):
    block = jacobian[:, :, i]  # [K, N, Gw, D, N, H, W, C]
    for n in range(2):
      assert np.all(block[:, n, :, :, n, 4 * (i + 1):] == 0)
      assert np.any(block[:, n, :, :, n, 4 * i:4 * (i + 1)] != 0)
      assert np.all(block[:, n, :, :, 1 - n] == 0)


# ----------------------------------------------------------------------------- the loss


def info_nce_transcription(z, predictions, steps):
  """The InfoNCE loss, query by query and candidate by candidate (float64)."""
  n, gh, gw, _ = z.shape
  candidates = [(m, a, b) for m in range(n) for a in range(gh) for b in range(gw)]
  losses, accuracies = [], []
  for k in range(1, steps + 1):
    terms, hits = [], []
    for q in range(n):
      for i in range(gh - k):
        for j in range(gw):
          prediction = predictions[k - 1, q, i, j]
          scores = np.array([z[m, a, b] @ prediction for m, a, b in candidates])
          positive = candidates.index((q, i + k, j))
          terms.append(-np.log(np.exp(scores[positive]) / np.sum(np.exp(scores))))
          hits.append(np.argmax(scores) == positive)
    losses.append(np.mean(terms))
    accuracies.append(np.mean(hits))
  return np.mean(losses), np.array(accuracies)


@pytest.mark.parametrize('n, gh, gw, steps', [(2, 4, 3, 2), (3, 5, 5, 3)])
def test_info_nce_is_its_transcription(n, gh, gw, steps):
  rng = np.random.default_rng(n)
  z = rng.standard_normal((n, gh, gw, 6))
  # Noisy targets (z k rows below) as predictions: accuracies neither 0 nor 1.
  predictions = np.stack([np.roll(z, -k, axis=1) for k in range(1, steps + 1)])
  predictions = 0.3 * predictions + rng.standard_normal(predictions.shape)
  expected_loss, expected_accuracy = info_nce_transcription(z, predictions, steps)
  assert 0 < expected_accuracy.mean() < 1
  with jax.enable_x64(True):
    loss, accuracy = info_nce_loss(jnp.asarray(z), jnp.asarray(predictions), steps)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-12)
  np.testing.assert_allclose(accuracy, expected_accuracy)
  loss, accuracy = info_nce_loss(jnp.asarray(z, jnp.float32),
                                     jnp.asarray(predictions, jnp.float32), steps)
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
  np.testing.assert_allclose(accuracy, expected_accuracy)
  # Fewer steps than predictors: the first ones only.
  loss, accuracy = info_nce_loss(jnp.asarray(z), jnp.asarray(predictions), 1)
  expected_loss, expected_accuracy = info_nce_transcription(z, predictions, 1)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
  np.testing.assert_allclose(accuracy, expected_accuracy)


def test_info_nce_of_exact_predictions_and_of_the_wrong_rows():
  n, gh, gw = 2, 3, 2
  z = 5 * np.eye(n * gh * gw).reshape(n, gh, gw, -1)  # orthogonal patch features
  exact = np.stack([np.roll(z, -k, axis=1) for k in (1, 2)])
  loss, accuracy = info_nce_loss(jnp.asarray(z), jnp.asarray(exact), 2)
  assert loss < 1e-9
  np.testing.assert_array_equal(accuracy, [1, 1])
  # Predicting the query's own row instead: every positive loses.
  loss, accuracy = info_nce_loss(jnp.asarray(z), jnp.asarray(np.stack([z, z])), 2)
  assert loss > 20
  np.testing.assert_array_equal(accuracy, [0, 0])
  with pytest.raises(ValueError, match='prediction_steps must be in 1 .. 2'):
    info_nce_loss(jnp.asarray(z), jnp.asarray(exact), 3)


# ----------------------------------------------------------------------------- the method


def test_8_devices_equal_1_with_negatives_from_the_global_batch():
  if len(jax.devices()) < 8:
    pytest.skip('needs 8 (fake CPU) devices')
  method = make_method(patch_size=8, patch_stride=4, prediction_steps=2,
                       context_features=8, context_layers=2)
  batch = {'image': images((16, 16, 16, 1))}  # 3x3 grids, 2 images per device
  variables = jit(method.init_variables)(jax.random.key(0), batch)
  params, model_state = variables.pop('params'), variables
  assert set(params) == {'encoder', 'context', 'predictor1', 'predictor2'}
  grad_fn = jit(jax.value_and_grad(method.loss, has_aux=True))
  rng = jax.random.key(1)
  (loss, (metrics, _)), grads = grad_fn(params, model_state, batch, rng)
  assert set(metrics) == {'cpc_accuracy_k1', 'cpc_accuracy_k2'}

  mesh = parallel.make_mesh(8)
  sharded = jax.device_put(batch, NamedSharding(mesh, P('data')))
  replicated = jax.device_put((params, model_state), parallel.replicated(mesh))
  (loss8, (metrics8, _)), grads8 = grad_fn(*replicated, sharded, rng)
  assert len(sharded['image'].sharding.device_set) == 8
  chex.assert_trees_all_close((loss8, metrics8, grads8), (loss, metrics, grads),
                              rtol=1e-5, atol=1e-6)

  # The negatives are the whole batch: the loss is the transcription's on all 16 images.
  z, predictions = jit(method.model.apply)({'params': params}, batch['image'])
  expected, _ = info_nce_transcription(np.asarray(z, np.float64),
                                       np.asarray(predictions, np.float64), 2)
  np.testing.assert_allclose(loss8, expected, rtol=1e-5)


def test_embed_image_is_the_mean_patch_feature():
  method = make_method(patch_size=8, patch_stride=4, prediction_steps=1)
  batch = {'image': images((3, 12, 16, 1))}
  variables = jit(method.init_variables)(jax.random.key(0), batch)
  state = jit(method.init_state)(jax.random.key(0), batch)
  h = jit(method.embed_image)(state, batch)
  z, _ = jit(method.model.apply)(variables, batch['image'])
  chex.assert_shape(h, (3, 16))
  np.testing.assert_allclose(h, np.asarray(z).mean(axis=(1, 2)), rtol=1e-5, atol=1e-7)
  new_state, metrics = jit(method.update)(state, batch, jax.random.key(2))
  assert np.isfinite(metrics['loss']) and int(new_state.step) == 1


def test_config_errors_name_the_field():
  with pytest.raises(config_lib.ConfigError,
                     match=r'cpc.prediction_steps must be < the 3 grid rows .* 16x16'):
    make_method(input_shape=(16, 16, 1), prediction_steps=3)
  # Without data.input_shape, the same error when the images arrive.
  method = make_method(prediction_steps=3)
  with pytest.raises(config_lib.ConfigError, match=r'cpc.prediction_steps must be <'):
    method.init_variables(jax.random.key(0), {'image': jnp.zeros((2, 16, 16, 1))})
  with pytest.raises(config_lib.ConfigError, match=r'cpc.patch_size 8 is larger than'):
    make_method(input_shape=(6, 6, 1))
  with pytest.raises(config_lib.ConfigError, match=r'cpc.kernel_size must be an integer >= 1'):
    make_method(kernel_size=0)
  with pytest.raises(config_lib.ConfigError, match=r'cpc.prediction_step\b.*did you mean'):
    make_method(prediction_step=1)
  with pytest.raises(config_lib.ConfigError, match=r'grad_accum_steps must be 1'):
    make_method(grad_accum_steps=2)
