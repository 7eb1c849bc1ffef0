"""Diffusion: schedules against closed forms, the loss and the sampler steps against
literal transcriptions of their papers, guidance, timestep spacing, determinism, 8
devices equal 1, an end-to-end `:local` run, and the U-Net's shapes and size."""

import functools
import math
import os

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vision_jax import config_lib, parallel, train
from vision_jax.dataset_info import DatasetInfo
from vision_jax.methods import diffusion
from vision_jax.models import unet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DDPM_MNIST = os.path.join(REPO, 'experiments/generative/ddpm_mnist.py')
INFO = DatasetInfo(name='toy', num_examples={'train': 64}, num_classes=10,
                   class_names=tuple('0123456789'))
SHAPE = (8, 8, 1)
# One level, attention in the middle only: the U-Net that compiles fastest.
ONE_LEVEL = dict(name='unet', channels=8, channel_multipliers=(1,), num_res_blocks=0,
                 attention_resolutions=())

# Tiny networks run in milliseconds; XLA's optimising compile is what costs.
jit = functools.partial(jax.jit, compiler_options={
    'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True})


def make_config(conditional=True, model=None, **diffusion_options):
  config = config_lib.load_config(DDPM_MNIST + ':local')
  with config.unlocked():
    config.model = ml_collections.ConfigDict(model or ONE_LEVEL)
    config.data.input_shape = SHAPE
    config.schedule.warmup_steps = None  # a first step with a learning rate
    config.diffusion.update(conditional=conditional, **diffusion_options)
  return config


def make_method(conditional=True, model=None, **diffusion_options):
  return diffusion.Method(make_config(conditional, model, **diffusion_options), INFO,
                          total_steps=10, steps_per_epoch=10)


def perturbed(params, scale=0.3):
  """Params away from the zero-initialised output layers, so every input matters."""
  leaves, tree = jax.tree.flatten(params)
  rng = np.random.default_rng(0)
  return jax.tree.unflatten(tree, [
      leaf + scale * jnp.asarray(rng.standard_normal(leaf.shape), leaf.dtype)
      for leaf in leaves])


def batch_of(n=8, seed=0):
  rng = np.random.default_rng(seed)
  return {'image': jnp.asarray(rng.uniform(size=(n, *SHAPE)), jnp.float32),
          'label': jnp.asarray(np.arange(n) % 10, jnp.int32)}


@functools.cache
def conditional_setup():
  """A conditional method (no label dropout, no EMA), a state with perturbed weights and
  the jitted eval-mode U-Net `apply(params, x, t, labels)`, built once."""
  method = make_method(conditional=True, ema_decay=0.0, label_dropout=0.0)
  state = jit(method.init_state)(jax.random.key(0), batch_of())
  apply = jit(lambda params, x, t, labels: method.model.apply({'params': params}, x, t, labels))
  return method, state.replace(params=perturbed(state.params)), apply


# Schedules.

def test_linear_schedule_is_hos():
  betas = diffusion.beta_schedule('linear', 1000)
  assert betas.dtype == np.float64 and betas.shape == (1000,)
  t = np.arange(1000)
  np.testing.assert_allclose(betas, 1e-4 + (0.02 - 1e-4) * t / 999, rtol=1e-12)
  tables = diffusion.Schedule.make('linear', 1000)
  for step in (0, 1, 499, 999):  # abar_t = prod_{s <= t} (1 - beta_s), 0-based
    assert tables.alphas_cumprod[step] == pytest.approx(
        math.prod(1 - b for b in betas[:step + 1]), rel=1e-12)
  assert tables.alphas_cumprod[-1] == pytest.approx(4.04e-5, rel=0.01)  # x_T ~ noise
  np.testing.assert_array_equal(tables.alphas_cumprod_prev[1:], tables.alphas_cumprod[:-1])
  assert tables.alphas_cumprod_prev[0] == 1.0
  abar, prev = tables.alphas_cumprod, tables.alphas_cumprod_prev
  np.testing.assert_allclose(tables.posterior_variance, betas * (1 - prev) / (1 - abar))
  assert tables.posterior_variance[0] == 0.0


def test_cosine_schedule_against_its_closed_form():
  T, s = 1000, 0.008
  betas = diffusion.beta_schedule('cosine', T)
  abar = diffusion.Schedule.make('cosine', T).alphas_cumprod
  closed = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
  expected = np.array([closed(t + 1) / closed(0) for t in range(T)])  # 0-based abar_t
  # Only the last beta, 1 - abar(1) / abar((T-1)/T) = 1, reaches the clip at 0.999.
  np.testing.assert_allclose(abar[:-1], expected[:-1], rtol=1e-9)
  assert betas[-1] == 0.999 and np.all(betas[:-1] < 0.999)
  assert abar[-1] == pytest.approx(abar[-2] * 0.001, rel=1e-12)
  assert betas[0] == pytest.approx(1 - closed(1) / closed(0), rel=1e-12)


def test_unknown_schedule_is_named():
  with pytest.raises(ValueError, match="'quadratic'"):
    diffusion.beta_schedule('quadratic', 10)
  with pytest.raises(config_lib.ConfigError, match="diffusion: unknown beta schedule 'cosin'"):
    make_method(beta_schedule='cosin')


# Timestep spacing.

def test_timesteps_start_at_t_minus_1_and_end_at_0():
  ts = diffusion.timesteps(1000, 50)
  assert ts[0] == 999 and ts[-1] == 0 and len(ts) == 50
  assert np.all(np.diff(ts) < 0)
  assert 980 not in ts[:1]  # not the 'leading' spacing 980, 960, ..., 0
  np.testing.assert_array_equal(diffusion.timesteps(1000, 1000), np.arange(999, -1, -1))
  np.testing.assert_array_equal(diffusion.timesteps(1000, 1), [999])
  np.testing.assert_array_equal(diffusion.timesteps(10, 4), [9, 6, 3, 0])
  for steps in (0, 1001):
    with pytest.raises(ValueError, match='steps must be in 1..1000'):
      diffusion.timesteps(1000, steps)

  schedule = diffusion.Schedule.make('linear', 1000)
  tables = diffusion.sampling_tables(schedule, sampler='ddim', steps=50, eta=0.0,
                                     variance='beta')
  np.testing.assert_array_equal(tables['abar'], schedule.alphas_cumprod[ts])
  # Each step goes to the next timestep; the step after t = 0 to abar = 1: x_0.
  np.testing.assert_array_equal(tables['abar_prev'][:-1], schedule.alphas_cumprod[ts[1:]])
  assert tables['abar_prev'][-1] == 1.0
  np.testing.assert_array_equal(tables['sigma'], 0.0)


# Loss.

def test_simple_loss_equals_its_formula():
  method, state, apply = conditional_setup()
  batch = batch_of()
  rng = jax.random.key(5)
  loss, _ = jit(method.loss)(state.params, state.model_state, batch, rng)

  # Ho et al. Algorithm 1, with the method's draws of t and eps.
  noise_rng = jax.random.split(rng, 3)[0]
  t, eps = map(np.asarray, method.noise_and_timesteps(noise_rng, batch['image'].shape))
  assert t.min() >= 0 and t.max() < 1000 and len(set(t)) > 1
  betas = diffusion.beta_schedule('linear', 1000)
  abar = np.array([np.prod(1 - betas[:k + 1]) for k in t])[:, None, None, None]
  x0 = 2 * np.asarray(batch['image'], np.float64) - 1
  x_t = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * eps
  pred = np.asarray(apply(state.params, jnp.asarray(x_t, jnp.float32), jnp.asarray(t),
                          batch['label']))
  assert np.std(pred) > 0.1  # the prediction is not the zero of the initialisation
  per_example = np.mean((eps - pred) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(loss, per_example.mean(), rtol=1e-5)

  # The test metric is the same loss per example (no label dropout at test time).
  values = jit(method.test_metrics)(state, batch, noise_rng)
  np.testing.assert_allclose(values['simple_loss'], per_example, rtol=1e-5)


def test_label_dropout_feeds_the_null_class():
  _, state, _ = conditional_setup()
  method = make_method(conditional=True, ema_decay=0.0, label_dropout=0.5)
  batch = batch_of(8)
  rng = jax.random.key(7)
  loss, _ = jit(method.loss)(state.params, state.model_state, batch, rng)
  noise_rng, label_rng, _ = jax.random.split(rng, 3)
  drop = np.asarray(jax.random.bernoulli(label_rng, 0.5, (8,)))
  assert 0 < drop.sum() < 8
  simple_loss = jit(lambda labels: method.simple_loss(
      state.params, {}, batch['image'], noise_rng, train=False, labels=labels)[0].mean())
  np.testing.assert_allclose(loss, simple_loss(jnp.where(drop, 10, batch['label'])),
                             rtol=1e-5)
  assert abs(float(simple_loss(batch['label'])) - float(loss)) > 1e-4  # the null id mattered


# Sampler steps.

def test_ddim_step_is_song_et_al_eq_12():
  rng = np.random.default_rng(0)
  x_t, eps, z = (rng.standard_normal((3, 4, 4, 1)) for _ in range(3))
  abar_t, abar_prev, eta = 0.3, 0.7, 0.6
  sigma = eta * np.sqrt((1 - abar_prev) / (1 - abar_t)) * np.sqrt(1 - abar_t / abar_prev)
  assert diffusion.ddim_sigma(abar_t, abar_prev, eta) == pytest.approx(sigma, rel=1e-12)
  x0 = (x_t - np.sqrt(1 - abar_t) * eps) / np.sqrt(abar_t)
  expected = (np.sqrt(abar_prev) * x0 + np.sqrt(1 - abar_prev - sigma ** 2) * eps
              + sigma * z)
  np.testing.assert_allclose(
      diffusion.ddim_step(x_t, eps, abar_t, abar_prev, sigma, z), expected, rtol=1e-5)
  # eta = 1 gives the posterior variance beta~_t of the original chain.
  schedule = diffusion.Schedule.make('linear', 1000)
  abar = schedule.alphas_cumprod
  np.testing.assert_allclose(diffusion.ddim_sigma(abar[1:], abar[:-1], 1.0) ** 2,
                             schedule.posterior_variance[1:], rtol=1e-9)


def test_ddpm_step_is_ho_et_al_algorithm_2():
  schedule = diffusion.Schedule.make('linear', 1000)
  rng = np.random.default_rng(1)
  x_t, eps, z = (rng.standard_normal((3, 4, 4, 1)) for _ in range(3))
  for t in (1, 500, 999):  # 0-based: the step from t to t - 1
    beta, abar = schedule.betas[t], schedule.alphas_cumprod[t]
    sigma = np.sqrt(beta)
    expected = 1 / np.sqrt(1 - beta) * (x_t - beta / np.sqrt(1 - abar) * eps) + sigma * z
    np.testing.assert_allclose(
        diffusion.ddpm_step(x_t, eps, abar, schedule.alphas_cumprod[t - 1], sigma, z),
        expected, rtol=1e-4, atol=1e-5)
  tables = diffusion.sampling_tables(schedule, sampler='ddpm', steps=1000, eta=0.0,
                                     variance='beta')
  np.testing.assert_allclose(tables['sigma'][:-1], np.sqrt(schedule.betas[1:][::-1]))
  assert tables['sigma'][-1] == 0.0  # no noise in the last step
  tables = diffusion.sampling_tables(schedule, sampler='ddpm', steps=1000, eta=0.0,
                                     variance='posterior')
  np.testing.assert_allclose(tables['sigma'] ** 2, schedule.posterior_variance[::-1],
                             rtol=1e-6)


def test_guidance_zero_is_the_conditional_prediction():
  method, state, apply = conditional_setup()
  x = jnp.asarray(np.random.default_rng(2).standard_normal((4, *SHAPE)), jnp.float32)
  labels = jnp.array([0, 3, 5, 9], jnp.int32)
  t = 400
  conditional = apply(state.params, x, jnp.full([4], t), labels)
  unconditional = apply(state.params, x, jnp.full([4], t), jnp.full([4], 10))
  assert float(jnp.max(jnp.abs(conditional - unconditional))) > 1e-2
  guided = lambda w: jit(method._eps_fn(state, labels, w))(x, t)  # noqa: E731
  np.testing.assert_allclose(guided(0.0), conditional, rtol=1e-5, atol=1e-5)
  w = 1.5  # (1 + w) eps(x, c) - w eps(x, null)
  np.testing.assert_allclose(guided(w), 2.5 * conditional - 1.5 * unconditional,
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(diffusion.guided_eps(2.0, 1.0, 3.0), 5.0)


# Sampling.

def test_ddim_eta_0_is_deterministic_and_ddpm_posterior_equals_ddim_eta_1():
  method, state, _ = conditional_setup()
  x_T = jnp.asarray(np.random.default_rng(3).standard_normal((4, *SHAPE)), jnp.float32)
  labels = jnp.array([1, 2, 3, 4], jnp.int32)

  @functools.partial(jit, static_argnums=(2, 3, 4))
  def run(rng, x_T, sampler, eta, variance):
    options = method.sample_options(dict(sampler=sampler, steps=4, eta=eta, guidance=1.0,
                                         variance=variance))
    return method._sample_loop(state, rng, labels, x_T, options)[0]

  a, b = jax.random.key(0), jax.random.key(1)
  np.testing.assert_array_equal(run(a, x_T, 'ddim', 0.0, 'beta'), run(b, x_T, 'ddim', 0.0, 'beta'))
  stochastic = run(a, x_T, 'ddim', 1.0, 'beta')
  assert float(jnp.max(jnp.abs(stochastic - run(b, x_T, 'ddim', 1.0, 'beta')))) > 1e-2
  # DDIM with eta = 1 is ancestral sampling with the posterior variance, step for step.
  # (Up to float32 rounding, which the recomputed eps amplifies by 1 / sqrt(1 - abar_0).)
  np.testing.assert_allclose(run(a, x_T, 'ddpm', 0.0, 'posterior'), stochastic, atol=2e-3)
  assert float(jnp.max(jnp.abs(run(a, x_T, 'ddpm', 0.0, 'beta') - stochastic))) > 1e-3


def test_generate_trajectory_and_interpolate():
  method, state, _ = conditional_setup()
  labels = jnp.array([0, 1, 2], jnp.int32)
  rng = jax.random.key(4)
  options = dict(steps=3, guidance=1.0)
  samples = jit(lambda rng: method.generate(state, rng, labels, **options))(rng)
  chex.assert_shape(samples, (3, *SHAPE))
  assert samples.dtype == jnp.float32 and 0 <= samples.min() and samples.max() <= 1
  frames = jit(lambda rng: method.trajectory(state, rng, labels, 5, **options))(rng)
  chex.assert_shape(frames, (3, 5, *SHAPE))
  # Frames: x_T, evenly spaced states, the final sample (the one generate draws; the two
  # are compiled apart, so float32 rounding differs by a few 1e-6).
  np.testing.assert_allclose(frames[:, -1], samples, atol=2e-5)
  x_T = method._initial_noise(jax.random.split(rng)[0], 3)
  np.testing.assert_allclose(frames[:, 0], jnp.clip((x_T + 1) / 2, 0, 1), atol=1e-6)
  assert float(jnp.max(jnp.abs(frames[:, 1] - frames[:, 0]))) > 1e-3

  path = jit(lambda rng, batch: method.interpolate(state, batch, rng, 4, steps=3))(
      rng, batch_of(5))
  chex.assert_shape(path, (2, 4, *SHAPE))
  assert float(jnp.max(jnp.abs(path[:, 0] - path[:, -1]))) > 1e-2


def test_bad_sampling_options_are_errors():
  method, state, _ = conditional_setup()
  labels = jnp.zeros([2], jnp.int32)
  with pytest.raises(config_lib.ConfigError, match="unknown sampler 'ddmp'"):
    method.generate(state, jax.random.key(0), labels, sampler='ddmp')
  with pytest.raises(config_lib.ConfigError, match='steps must be in 1..1000'):
    method.generate(state, jax.random.key(0), labels, steps=2000)
  with pytest.raises(config_lib.ConfigError, match="no sampling option 'guidence'"):
    method.generate(state, jax.random.key(0), labels, guidence=1.0)
  unconditional = make_method(conditional=False)
  with pytest.raises(config_lib.ConfigError, match='guidance needs a conditional model'):
    jax.eval_shape(lambda s: unconditional.generate(s, jax.random.key(0), labels,
                                                    guidance=1.0),
                   jax.eval_shape(unconditional.init_state, jax.random.key(0), batch_of()))


# Training.

def test_eight_devices_equal_one_device():
  method = make_method(conditional=True, ema_decay=0.9)
  batch = batch_of(16)
  abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
  results = []
  for n in (1, 8):
    mesh = parallel.make_mesh(n)
    _, _, init, step = train.make_train_step(method, abstract, mesh, seed=0)
    start = init()
    initial = jax.device_get(start.params)  # before the step donates it
    state, metrics = step(start, parallel.to_global(jax.device_get(batch), mesh))
    results.append((jax.device_get(state), jax.device_get(metrics)))
  (one, one_metrics), (eight, eight_metrics) = results
  chex.assert_trees_all_close(one.params, eight.params, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(one.opt_state, eight.opt_state, rtol=1e-5, atol=1e-6)
  assert one_metrics['loss'] == pytest.approx(eight_metrics['loss'], rel=1e-5)
  assert one_metrics['grad_norm'] > 0
  # Evaluation sees the EMA: after one update with warm-up, decay min(0.9, 2 / 11).
  decay = 2 / 11
  chex.assert_trees_all_close(
      method.eval_state(one).params,
      jax.tree.map(lambda a, b: decay * a + (1 - decay) * b, initial, one.params),
      rtol=1e-5, atol=1e-7)
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), initial, one.params)
  assert max(jax.tree.leaves(moved)) > 1e-4


def test_local_conditional_run_trains_and_evaluates(tmp_path, data_dir):
  config = config_lib.load_config(DDPM_MNIST + ':local,conditional')
  # The digits at their own 8x8 rather than resized to 28x28: the same functions compile,
  # and the samplers, the test loss and the figures run on 12x fewer pixels.
  pp = 'decode(1)|value_range(0, 1)'
  config_lib.apply_overrides(config, {'data.data_dir': data_dir, 'data.pp_train': pp,
                                      'evals.eval.pp': pp, 'data.input_shape': '(8, 8, 1)'})
  # One device: what costs is compiling the samplers, slower when partitioned over 8.
  results = train.train_and_evaluate(config, str(tmp_path), num_devices=1)
  assert results['eval/num_examples'] == 360  # digits' test split
  assert 0 < results['eval/simple_loss'] < 2
  for name in ('samples.png', 'interpolations.png', 'trajectory.png'):
    assert (tmp_path / 'eval' / name).stat().st_size > 1000


# The U-Net; its derivatives under every transformation are in tests/models/test_autodiff.py.

def test_unet_shapes_and_odd_sides():
  model = unet.Model(channels=8, channel_multipliers=(1, 2, 2), num_res_blocks=1,
                     attention_resolutions=(7,))
  x = jnp.zeros((1, 28, 28, 1))
  out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x, jnp.zeros(1))[0])
  assert out.shape == (1, 28, 28, 1) and out.dtype == jnp.float32
  with pytest.raises(ValueError, match='4 U-Net levels halve the 28x28 input 3 times'):
    four_levels = unet.Model(channels=8, channel_multipliers=(1, 1, 1, 1))
    jax.eval_shape(lambda: four_levels.init(jax.random.key(0), x, jnp.zeros(1)))
  # The conditioning vector of another conditioner (text) enters like the labels.
  cond_out = jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), x, jnp.zeros(1), cond=jnp.zeros((1, 5)))[0])
  assert cond_out.shape == (1, 28, 28, 1)


def test_unet_is_hos_cifar10_model():
  # Ho et al. report 35.7M parameters for this configuration.
  model = unet.Model(channels=128, channel_multipliers=(1, 2, 2, 2), num_res_blocks=2,
                     attention_resolutions=(16,), dropout=0.1)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                                jnp.zeros(1, jnp.int32)))
  assert round(sum(p.size for p in jax.tree.leaves(variables)) / 1e5) == 357


@pytest.mark.parametrize('spec', [
    DDPM_MNIST, DDPM_MNIST + ':conditional', DDPM_MNIST + ':digits,conditional',
    os.path.join(REPO, 'experiments/generative/ddpm_scenes.py'),
    os.path.join(REPO, 'experiments/generative/ddpm_scenes.py:local')])
def test_configs_build_their_method_without_data(spec):
  # What the sample command does: the method from the config alone.
  config = config_lib.load_config(spec)
  classes = config.data.num_classes
  info = DatasetInfo(name=config.data.name, num_examples={}, num_classes=classes,
                     class_names=tuple(map(str, range(classes))))
  method = diffusion.Method(config, info, total_steps=1, steps_per_epoch=1)
  options = method.sample_options(dict(config.evals.eval.sample_options))
  diffusion.sampling_tables(method.schedule_tables, sampler=options['sampler'],
                            steps=options['steps'], eta=options['eta'],
                            variance=options['variance'])
  assert method.conditional == ('conditional' in spec or 'scenes' in spec)
  if ':' not in spec:  # the full recipes' U-Nets fit their images (28 -> 14 -> 7, 32 -> 8)
    example = {'image': jnp.zeros((1, *config.data.input_shape)),
               'label': jnp.zeros(1, jnp.int32)}
    jax.eval_shape(method.init_state, jax.random.key(0), example)


def test_time_and_label_embeddings_survive_group_norm():
  # One channel per group (16 channels, 16 groups) would be instance normalisation, which
  # removes the embeddings the blocks add per channel: the output would ignore t and c.
  assert [unet.num_groups(c, 32) for c in (128, 64, 48, 16, 8, 3)] == [32, 16, 12, 4, 2, 1]
  model = unet.Model(channels=16, channel_multipliers=(1,), num_res_blocks=0,
                     attention_resolutions=(), num_classes=3)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 1)), jnp.float32)
  t, labels = jnp.array([10, 10]), jnp.array([0, 0])
  params = perturbed(jit(model.init)(jax.random.key(0), x, t, labels)['params'], 0.1)
  apply = jit(lambda t, labels: model.apply({'params': params}, x, t, labels))
  base = apply(t, labels)
  assert float(jnp.max(jnp.abs(apply(jnp.array([900, 900]), labels) - base))) > 1e-3
  assert float(jnp.max(jnp.abs(apply(t, jnp.array([1, 3])) - base))) > 1e-3
