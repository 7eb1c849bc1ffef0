"""The GAN: its losses and penalties against their papers' formulas, the D-then-G update
against a hand computation (and the stale-D alternative), separate optimizer states and
EMA, 8 devices equal 1, kill-and-resume, the capabilities, an end-to-end run, and the
gradient of the R1 penalty against finite differences in float64 (the players'
derivatives under every transformation: tests/models/test_autodiff.py)."""

import functools
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vision_jax import checkpointing, config_lib, models, optim, parallel, train
from vision_jax.dataset_info import DatasetInfo
from vision_jax.methods import gan
from vision_jax.models import dcgan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GAN_MNIST = os.path.join(REPO, 'experiments/generative/gan_mnist.py')
GAN_SCENES = os.path.join(REPO, 'experiments/generative/gan_scenes.py')
INFO = DatasetInfo(name='digits', num_examples={'train': 1437}, num_classes=10,
                   class_names=tuple(map(str, range(10))))
SHAPE = (28, 28, 1)

# Tiny networks run in milliseconds; XLA's optimising compile is what costs.
jit = functools.partial(jax.jit, compiler_options={
    'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True})


def local_config(spec=':local', **overrides):
  config = config_lib.load_config(GAN_MNIST + spec)
  config_lib.apply_overrides(config, {k: str(v) for k, v in overrides.items()})
  return config


def make_method(spec=':local', **overrides):
  return gan.Method(local_config(spec, **overrides), INFO, total_steps=10, steps_per_epoch=5)


def example_batch(n=8, seed=0):
  rng = np.random.default_rng(seed)
  return {'image': jnp.asarray(rng.uniform(0, 1, (n, *SHAPE)), jnp.float32),
          'label': jnp.asarray(rng.integers(0, 10, n), jnp.int32)}


def sigmoid(x):
  return 1 / (1 + np.exp(-x))


def assert_trees_close(actual, expected, rtol=1e-4):
  """Leaf by leaf, equal up to rtol of the leaf's largest magnitude: float32 gradients
  summed in another order differ in their last digits, most visibly in small entries."""
  chex.assert_trees_all_equal_structs(actual, expected)
  for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    b = np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=0, atol=rtol * float(np.abs(b).max()) + 1e-30)


# The objective and the losses.

def test_losses_and_value_are_the_papers_formulas():
  rng = np.random.default_rng(0)
  real, fake = rng.normal(0, 3, 64), rng.normal(-1, 3, 48)  # Batches of other sizes.
  # Goodfellow et al. eq. 1, literally: V = E log D(x) + E log(1 - D(G(z))).
  value = np.mean(np.log(sigmoid(real))) + np.mean(np.log(1 - sigmoid(fake)))
  args = jnp.asarray(real, jnp.float32), jnp.asarray(fake, jnp.float32)
  np.testing.assert_allclose(gan.value_function(*args), value, rtol=1e-5)
  np.testing.assert_allclose(gan.discriminator_loss(*args), -value, rtol=1e-5)
  np.testing.assert_allclose(gan.generator_loss(args[1], 'minimax'),
                             np.mean(np.log(1 - sigmoid(fake))), rtol=1e-5)
  np.testing.assert_allclose(gan.generator_loss(args[1], 'non_saturating'),
                             -np.mean(np.log(sigmoid(fake))), rtol=1e-5)
  # Where a literal sigmoid rounds to 0 or 1 in float32, log_sigmoid stays exact:
  # log sigmoid(-100) = -100 - log(1 + e^-100).
  confident = jnp.array([100.0, -100.0])
  np.testing.assert_allclose(gan.generator_loss(-confident[:1], 'non_saturating'), 100.0)
  np.testing.assert_allclose(gan.discriminator_loss(-confident[:1], confident[:1]), 200.0)
  with pytest.raises(ValueError, match='generator_loss'):
    gan.generator_loss(confident, 'wasserstein')


def test_penalties_are_the_papers_formulas():
  grads = np.random.default_rng(1).normal(0, 0.3, (5, 4, 4, 2)).astype(np.float32)
  norms = np.sqrt((grads.astype(np.float64) ** 2).sum(axis=(1, 2, 3)))
  # Mescheder et al. eq. 9: gamma/2 E||grad D||^2; Gulrajani et al.: lambda E(||g|| - 1)^2.
  np.testing.assert_allclose(gan.r1_penalty(grads, 3.0), 1.5 * np.mean(norms ** 2), rtol=1e-5)
  np.testing.assert_allclose(gan.wgan_gp_penalty(grads, 10.0),
                             10.0 * np.mean((norms - 1) ** 2), rtol=1e-5)
  # At a zero gradient the WGAN-GP penalty is lambda (up to the norm's 1e-6 floor), with
  # a finite gradient.
  zero = jnp.zeros((2, 3))
  assert gan.wgan_gp_penalty(zero, 10.0) == pytest.approx(10.0, abs=1e-4)
  assert np.all(np.isfinite(jax.grad(gan.wgan_gp_penalty)(zero, 10.0)))


@pytest.mark.parametrize('kind', ['r1', 'wgan_gp'])
def test_penalty_of_the_d_step_against_per_image_gradients(kind):
  # Layer-normalised D treats images independently, so the penalty's gradients are
  # each image's own, computed here one image at a time.
  method = make_method(**{'gan.gradient_penalty': kind, 'gan.penalty_weight': 4.0,
                          'model.discriminator_norm': 'layer'})
  batch = example_batch(6)
  state = method.init_state(jax.random.key(0), batch)
  d, d_state = state.params['discriminator'], state.model_state['discriminator']
  assert d_state == {}
  real = gan.to_model_range(batch['image'])
  fake = jnp.tanh(jnp.asarray(np.random.default_rng(2).normal(size=real.shape), jnp.float32))
  rng = jax.random.key(5)
  loss, (metrics, _) = jit(method.discriminator_step_loss)(d, d_state, real, fake, None, rng)

  def one_logit(x):
    return method.model.apply({'params': {'discriminator': d}}, x[None],
                              method='discriminate')[0]
  if kind == 'r1':
    grads = jit(jax.vmap(jax.grad(one_logit)))(real)
    expected = 4.0 / 2 * np.mean(np.sum(np.asarray(grads, np.float64) ** 2, axis=(1, 2, 3)))
  else:
    e = jax.random.uniform(rng, (6, 1, 1, 1))  # The step's draw, as the method takes it.
    grads = jit(jax.vmap(jax.grad(one_logit)))(e * real + (1 - e) * fake)
    norms = np.sqrt(np.sum(np.asarray(grads, np.float64) ** 2, axis=(1, 2, 3)))
    expected = 4.0 * np.mean((norms - 1) ** 2)
  assert expected > 1e-3  # Not vacuous.
  np.testing.assert_allclose(metrics['penalty'], expected, rtol=1e-4)
  np.testing.assert_allclose(loss, -metrics['value'] + expected, rtol=1e-5)


# The update: D first, then G against the updated D.

def hand_step(method, state, batch, rng):
  """The D step then the G step, transcribed with the model's own apply: D on an
  all-real and an all-fake batch, each with its own batch statistics (a D that saw one
  mixed batch, or shared statistics, would get other gradients), then G on fresh noise
  against the updated D."""
  model, n, labels = method.model, batch['image'].shape[0], batch['label']
  d_key, g_key, _ = jax.random.split(rng, 3)
  z_d, z_g = method.latents(d_key, n), method.latents(g_key, n)
  real = batch['image'] * 2 - 1
  g, d = state.params['generator'], state.params['discriminator']
  g_stats = state.model_state['generator']['batch_stats']
  d_stats = state.model_state['discriminator']['batch_stats']

  def G(g, stats, z):
    return model.apply({'params': {'generator': g}, 'batch_stats': {'generator': stats}},
                       z, labels, train=True, method='generate', mutable=['batch_stats'])

  def D(d, x):  # Train mode: the batch's own statistics.
    logits, new = model.apply({'params': {'discriminator': d},
                               'batch_stats': {'discriminator': d_stats}},
                              x, labels, train=True, method='discriminate',
                              mutable=['batch_stats'])
    return logits, new['batch_stats']['discriminator']

  fake, g_new = G(g, g_stats, z_d)
  def d_loss(d):  # -(E log D(x) + E log(1 - D(G(z)))), separate real and fake batches.
    return -(jnp.mean(jnp.log(jax.nn.sigmoid(D(d, real)[0])))
             + jnp.mean(jnp.log(1 - jax.nn.sigmoid(D(d, fake)[0]))))
  d_grads = jit(jax.grad(d_loss))(d)

  def g_loss(g, d):  # -E log D(G(z)) with a fresh z.
    return -jnp.mean(jnp.log(jax.nn.sigmoid(D(d, G(g, g_new['batch_stats']['generator'],
                                                        z_g)[0])[0])))
  return dict(d_grads=d_grads, g_loss=jit(g_loss), g_grads=jit(jax.grad(g_loss)), z_d=z_d,
              z_g=z_g, G=jit(G), D=jit(D), real=real)


LR_D, LR_G = 0.05, 0.1


@functools.cache
def one_step():
  """One update of the tiny conditional GAN on one device, each player with its own SGD
  with momentum (whose first step is p - lr * grad and whose trace is then the grad) and
  G with an EMA; the state and key are those `train.make_train_step(seed=0)` uses."""
  method = make_method(spec=':local,conditional', **{
      'gan.ema_decay': 0.9, 'optimizer_d.name': 'sgd', 'optimizer_d.momentum': 0.5,
      'optimizer_d.lr': LR_D, 'optimizer_g.name': 'sgd', 'optimizer_g.momentum': 0.8,
      'optimizer_g.lr': LR_G})
  batch = example_batch(16)
  init_key, train_key = jax.random.split(jax.random.key(0))
  state = method.init_state(init_key, jax.tree.map(jnp.zeros_like, batch))
  rng = jax.random.fold_in(train_key, 0)
  new_state, metrics = jit(method.update)(state, batch, rng)
  return method, batch, state, new_state, metrics, hand_step(method, state, batch, rng)


def test_d_steps_first_and_g_steps_against_the_updated_d():
  _, _, state, new_state, metrics, h = one_step()
  d, g = state.params['discriminator'], state.params['generator']
  new_d = jax.tree.map(lambda p, dp: p - LR_D * dp, d, h['d_grads'])
  new_g = jax.tree.map(lambda p, dp: p - LR_G * dp, g, h['g_grads'](g, new_d))
  assert_trees_close(new_state.params['discriminator'], new_d)
  assert_trees_close(new_state.params['generator'], new_g)
  # The check could fail: G stepping against the stale D lands measurably elsewhere.
  stale_g = jax.tree.map(lambda p, dp: p - LR_G * dp, g, h['g_grads'](g, d))
  gap = lambda a, b: float(optax.global_norm(jax.tree.map(jnp.subtract, a, b)))
  assert gap(new_g, stale_g) > 100 * gap(new_state.params['generator'], new_g)
  assert gap(new_g, g) > 1e-4

  # D's running statistics are those of the real batch only; G's went through both
  # of its passes (the D step's z, then the G step's).
  chex.assert_trees_all_close(new_state.model_state['discriminator']['batch_stats'],
                              h['D'](d, h['real'])[1], rtol=1e-5, atol=1e-7)
  _, stats = h['G'](g, state.model_state['generator']['batch_stats'], h['z_d'])
  _, stats = h['G'](g, stats['batch_stats']['generator'], h['z_g'])
  chex.assert_trees_all_close(new_state.model_state['generator']['batch_stats'],
                              stats['batch_stats']['generator'], rtol=1e-5, atol=1e-7)

  assert set(metrics) >= {'loss', 'd_loss', 'g_loss', 'value', 'd_real', 'd_fake',
                          'd_fake_g_step', 'penalty', 'param_norm', 'd_grad_norm',
                          'g_grad_norm', 'd_lr', 'g_lr'}
  np.testing.assert_allclose(metrics['g_loss'], h['g_loss'](g, new_d), rtol=1e-5)
  np.testing.assert_allclose(metrics['loss'], metrics['d_loss'])
  np.testing.assert_allclose(metrics['d_loss'], -metrics['value'], rtol=1e-6)
  assert (float(metrics['d_lr']), float(metrics['g_lr'])) == pytest.approx((LR_D, LR_G))
  assert int(new_state.step) == 1


def test_each_player_has_its_own_optimizer_state_and_g_an_ema():
  method, _, state, new_state, _, h = one_step()
  d, g = state.params['discriminator'], state.params['generator']
  g_grads = h['g_grads'](g, jax.tree.map(lambda p, dp: p - LR_D * dp, d, h['d_grads']))
  # Each state is one step of its own optimizer with its own player's gradients: each
  # momentum trace holds that player's gradient, G's an EMA besides.
  assert set(new_state.opt_state) == {'generator', 'discriminator'}
  _, d_opt = method.tx_d.update(h['d_grads'], method.tx_d.init(d), d)
  _, g_opt = method.tx_g.update(g_grads, method.tx_g.init(g), g)
  assert_trees_close(new_state.opt_state['discriminator'], d_opt)
  assert_trees_close(new_state.opt_state['generator'], g_opt)
  trace = lambda opt_state: opt_state[1][0].trace  # chain(decay, sgd): sgd's trace
  assert_trees_close(trace(new_state.opt_state['discriminator']), h['d_grads'])
  assert_trees_close(trace(new_state.opt_state['generator'][0]), g_grads)

  # The EMA (warm-up rate min(0.9, 2/11) at the first update) is what evaluators see.
  rate = 2 / 11
  ema = jax.tree.map(lambda p0, p1: rate * p0 + (1 - rate) * p1, g, new_state.params['generator'])
  eval_state = method.eval_state(new_state)
  assert_trees_close(eval_state.params['generator'], ema, rtol=1e-6)
  assert_trees_close(optim.ema_params(new_state.opt_state['generator']), ema, rtol=1e-6)
  chex.assert_trees_all_equal(eval_state.params['discriminator'],
                              new_state.params['discriminator'])


def test_eight_devices_equal_one_device():
  # The trainer's step over 8 devices (2 examples each) against the same step on one.
  method, batch, _, one_state, one_metrics, _ = one_step()
  abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
  mesh = parallel.make_mesh(8)
  _, _, init, step = train.make_train_step(method, abstract, mesh, seed=0)
  state, metrics = step(init(), parallel.to_global(jax.device_get(batch), mesh))
  assert len(state.params['generator']['project']['kernel'].sharding.device_set) == 8
  # Synchronised batch statistics and global means: only the reduction order differs.
  chex.assert_trees_all_close(jax.device_get((state, metrics)),
                              jax.device_get((one_state, one_metrics)), rtol=1e-5, atol=1e-6)


def test_config_errors_are_named():
  with pytest.raises(config_lib.ConfigError, match='gan.generator_loss'):
    make_method(**{'gan.generator_loss': 'hinge'})
  with pytest.raises(config_lib.ConfigError, match='gan.gradient_penalty'):
    make_method(**{'gan.gradient_penalty': 'r2'})
  with pytest.raises(config_lib.ConfigError, match=r'multiples of 2\*\*3 = 8; got \(28, 28\)'):
    make_method(**{'model.generator_features': (8, 8, 8)})
  config = local_config()
  with config.unlocked():
    config.optimizer = config_lib.optimizer_config()
  with pytest.raises(config_lib.ConfigError, match='remove config.optimizer'):
    gan.Method(config, INFO, total_steps=1, steps_per_epoch=1)


# Capabilities.

def test_generate_interpolate_and_test_metrics():
  method = make_method(spec=':local,conditional')
  assert method.CAPABILITIES == ('generate', 'interpolate', 'test_metrics')
  batch = example_batch(6)
  state = method.eval_state(method.init_state(jax.random.key(0), batch))
  labels = jnp.array([0, 0, 3, 3, 7, 9], jnp.int32)
  generate = jit(method.generate)
  images = generate(state, jax.random.key(1), labels)
  chex.assert_shape(images, (6, *SHAPE))
  assert images.dtype == jnp.float32
  assert float(images.min()) >= 0 and float(images.max()) <= 1
  np.testing.assert_array_equal(images, generate(state, jax.random.key(1), labels))
  # The labels reach G: the same noise with another class gives another image.
  other = generate(state, jax.random.key(1), (labels + 1) % 10)
  assert float(jnp.abs(other - images).max()) > 1e-4

  rng = jax.random.key(2)
  paths = jit(method.interpolate, static_argnums=3)(state, batch, rng, 5)
  chex.assert_shape(paths, (3, 5, *SHAPE))
  # The ends of each path are G of the pair's two noise vectors, with the pair's label.
  z0, z1 = jnp.split(method.latents(rng, 6), 2)
  path_labels = batch['label'][0::2]
  ends = jit(method._generate_from)(state, jnp.concatenate([z0, z1]),
                                    jnp.tile(path_labels, 2))
  np.testing.assert_allclose(paths[:, 0], ends[:3], atol=1e-5)
  np.testing.assert_allclose(paths[:, -1], ends[3:], atol=1e-5)
  # Slerp keeps the norm of orthogonal vectors of equal length.
  e0, e1 = jnp.eye(2)[:1], jnp.eye(2)[1:]
  np.testing.assert_allclose(jnp.linalg.norm(gan.slerp(e0, e1, jnp.linspace(0, 1, 5)), axis=-1),
                             1.0, rtol=1e-6)

  metrics = jit(method.test_metrics)(state, batch, jax.random.key(3))
  assert set(metrics) == {'d_real', 'd_fake'}
  for value in metrics.values():
    chex.assert_shape(value, (6,))
    assert value.dtype == jnp.float32 and np.all((value > 0) & (value < 1))


# Through the trainer.

def test_local_run_evaluates_and_a_killed_run_resumes_to_the_same_state(tmp_path, data_dir):
  # The uninterrupted run is the end-to-end one: the conditional local config with its
  # generative evaluator. The interrupted one stops at its step-2 checkpoint and resumes
  # in the same workdir (without evaluations, which do not touch the state).
  overrides = {'data.data_dir': data_dir, 'checkpoint_every_steps': 2, 'gan.ema_decay': 0.9}
  config = local_config(':local,conditional', **overrides)
  results = train.train_and_evaluate(config, str(tmp_path / 'straight'), num_devices=1)
  assert 0 < results['eval/d_real'] < 1 and 0 < results['eval/d_fake'] < 1
  assert results['eval/num_examples'] == 360  # digits' test split
  for figure in ('samples.png', 'interpolations.png'):
    assert (tmp_path / 'straight' / 'eval' / figure).stat().st_size > 1000

  for total_steps in (2, 4):
    config = local_config(':local,conditional', total_steps=total_steps, **overrides)
    with config.unlocked():
      config.evals = {}
    train.train_and_evaluate(config, str(tmp_path / 'resumed'), num_devices=1)
    if total_steps == 2:
      assert checkpointing.saved_steps(str(tmp_path / 'resumed')) == [2]
  straight = checkpointing.read_latest(str(tmp_path / 'straight'))
  resumed = checkpointing.read_latest(str(tmp_path / 'resumed'))
  # Both players' params, both optimizer states (G's EMA included) and the statistics.
  assert set(straight['opt_state']) == {'generator', 'discriminator'}
  assert int(straight['opt_state']['generator'][-1]['count']) == 4  # EMA updates
  chex.assert_trees_all_close(straight, resumed, rtol=1e-6, atol=1e-7)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(straight['params']))


def test_scenes_config_matches_its_data():
  config = config_lib.load_config(GAN_SCENES + ':local')
  assert tuple(config.data.input_shape) == (32, 32, 3) and config.data.num_classes == 40
  assert config.gan.conditional and config.data.name == 'scenes/single'
  info = DatasetInfo(name='scenes/single', num_examples={'train': 256}, num_classes=40,
                     class_names=tuple(map(str, range(40))))
  method = gan.Method(config, info, total_steps=1, steps_per_epoch=1)
  abstract = jax.eval_shape(method.init_state, jax.random.key(0),
                            {'image': jnp.zeros((2, 32, 32, 3)),
                             'label': jnp.zeros((2,), jnp.int32)})
  images = jax.eval_shape(method.generate, abstract, jax.random.key(0),
                          jnp.zeros((3,), jnp.int32))
  assert images.shape == (3, 32, 32, 3)
  full = config_lib.load_config(GAN_SCENES)
  model = models.get_model(full.model, image_shape=(32, 32, 3))
  assert dcgan.start_resolution((32, 32), len(model.generator_features)) == (4, 4)


# The gradient of the R1 penalty, in float64, against central differences.

EPS = 1e-6


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def central_difference(fn, x, direction, eps=EPS):
  shifted = lambda sign: jax.tree.map(lambda a, d: a + sign * eps * d, x, direction)
  return (fn(shifted(1)) - fn(shifted(-1))) / (2 * eps)


def tree_vdot(a, b):
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def random_like(tree, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), tree)


@functools.cache
def players64(norm):
  """The tiny conditional players in float64, params moved off their initial values."""
  with jax.enable_x64(True):
    model = models.get_model({**dcgan.TINY, 'discriminator_norm': norm},
                             image_shape=SHAPE, num_classes=10, dtype=jnp.float64)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.uniform(-1, 1, (3, *SHAPE)))
    labels = jnp.array([1, 4, 4], jnp.int32)
    variables = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64),
                             jit(model.init)(jax.random.key(0), images, labels))
    params = jax.tree.map(lambda p, u: p * (1 + 0.1 * u) + 0.05 * u, variables['params'],
                          random_like(variables['params'], 1))
    return model, {**variables, 'params': params}, images, labels


@pytest.mark.usefixtures('x64')
@pytest.mark.parametrize('norm', ['batch', 'layer'])
def test_grad_of_the_r1_penalty_against_finite_differences(norm):
  model, variables, images, labels = players64(norm)
  d_state = {c: t['discriminator'] for c, t in variables.items()
             if c != 'params' and 'discriminator' in t}

  def logits_fn(params):
    def fn(x):
      v = {'params': {'discriminator': params},
           **{c: {'discriminator': t} for c, t in d_state.items()}}
      if d_state:
        logits, new = model.apply(v, x, labels, train=True, method='discriminate',
                                  mutable=list(d_state))
        return logits, new
      return model.apply(v, x, labels, train=True, method='discriminate'), {}
    return fn

  def penalty(params):
    _, _, grads = gan.logits_and_input_grads(logits_fn(params), images)
    return gan.r1_penalty(grads, 10.0)

  params = variables['params']['discriminator']
  grads = jit(jax.grad(penalty))(params)
  chex.assert_trees_all_equal_shapes(grads, params)
  u = random_like(params, 4)
  # A step small enough that no LeakyReLU changes side.
  expected = central_difference(jit(penalty), params, u, eps=1e-8)
  assert abs(float(expected)) > 1e-6
  np.testing.assert_allclose(tree_vdot(grads, u), expected, rtol=1e-4)
