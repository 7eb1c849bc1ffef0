r"""Denoising diffusion: DDPM training, ancestral and DDIM sampling, classifier-free guidance.

Forward process (Ho et al. 2020, eqs. 2 and 4). Timesteps are 0-based, t in {0, ...,
T-1}, as in Ho et al.'s code: beta_t is the variance added by step t, alpha_t = 1 -
beta_t, abar_t = prod_{s <= t} alpha_s (the paper's abar_{t+1}), and

  q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I),

so x_0 itself is the "timestep -1" with abar_{-1} = 1. Images are scaled from the
pipeline's [0, 1] to [-1, 1]; every output is mapped back to [0, 1].

Schedules (`beta_schedule`): 'linear', beta_t = linspace(1e-4, 0.02, T) (Ho et al., for
T = 1000); 'cosine' (Nichol & Dhariwal 2021, eq. 17), abar(t) = f(t) / f(0) with f(t) =
cos^2(((t / T) + s) / (1 + s) * pi / 2), s = 0.008, and beta_t = min(1 - abar((t+1)/T) /
abar(t/T), 0.999) (in 0-based indices abar_t = f((t + 1) / T) / f(0) until the clip).
The tables (`Schedule`) are computed once in float64 numpy and enter the jitted functions
as float32 constants; the loss and the samplers only read them (as in score_sde's
`losses.py` and `sampling.py`, which keep the SDE apart from both).

Loss (Ho et al. eq. 14, Algorithm 1): with t uniform on {0..T-1} and eps ~ N(0, I),

  L_simple = E || eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t) ||^2,

the squared error averaged over pixels (as in Ho et al.'s implementation, `mean_flat`)
and over the batch. Class-conditional training (Ho & Salimans 2022, Algorithm 1) replaces
the label by the null id `num_classes` with probability `label_dropout`, so one network
learns eps_theta(x, t, c) and the unconditional eps_theta(x, t, null).

Sampling runs a decreasing sequence of `steps` timesteps tau_1 = T-1 > ... > tau_S = 0
(`timesteps`: evenly spaced and rounded, so the first step is at T-1 and the last at 0,
unlike the 'leading' spacing that starts at T - T/S, 980 for S = 50 and T = 1000). The
step from tau_i goes to tau_{i+1}, and the last one, from t = 0, to abar = 1: the
predicted x_0 itself. In each step eps is predicted, x_0 = (x_t - sqrt(1 - abar_t) eps) /
sqrt(abar_t) is clipped to [-1, 1] (as Ho et al.'s `clip_denoised`), and eps is
recomputed from the clipped x_0, so that x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
still holds; then, with a = abar_t and a' = abar_{prev}:

  'ddim' (Song et al. 2021, eq. 12):
      x_prev = sqrt(a') x_0 + sqrt(1 - a' - sigma^2) eps + sigma z,
      sigma = eta sqrt((1 - a') / (1 - a)) sqrt(1 - a / a')           (eq. 16)
    eta = 0 is deterministic, eta = 1 is ancestral sampling with the posterior variance.
  'ddpm' (Ho et al. Algorithm 2, on the chain respaced to the `steps` timesteps as in
    Nichol & Dhariwal 2021, section 4, with beta = 1 - a / a'; for steps = T it is the
    original chain):
      x_prev = mu~(x_t, x_0) + sigma z,
      mu~ = sqrt(a') beta / (1 - a) x_0 + sqrt(1 - beta) (1 - a') / (1 - a) x_t
    with sigma^2 = beta ('variance': 'beta', Ho et al.'s fixedlarge, the default) or the
    posterior variance beta~ = beta (1 - a') / (1 - a) ('posterior', fixedsmall). The last
    step adds no noise (z = 0 at t = 0), whichever the variance. Without clipping, mu~ is
    Algorithm 2's 1 / sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps).

Classifier-free guidance (Ho & Salimans 2022, eq. 6), with guidance w >= 0:

  eps = (1 + w) eps_theta(x, t, c) - w eps_theta(x, t, null),

so w = 0 is the plain conditional model (in the w' = 1 + w convention of other papers,
w' = 1). Both predictions come from one pass over the doubled batch. Unconditional
models ignore the labels and take w = 0 only.

Sampling options (`SAMPLE_OPTIONS`, plain Python values fixed at trace time): sampler
('ddim' | 'ddpm'), steps (1..T; default 50), eta (DDIM only), guidance (w), variance
(DDPM only). Sampling, the trajectory and the interpolation are `lax.fori_loop`s with
fixed shapes, jittable; the evaluators use the EMA weights (`ema_decay`, see
`optim.with_ema`; 0 disables).

Capabilities: `generate`; `trajectory` (the chain x_T, ..., x_0 at `num_frames` evenly
spaced steps, the last the final image); `interpolate` (DDIM with eta = 0 from x_T
noises spherically interpolated between pairs, each pair drawn with the label of the
batch's image 2p, so a conditional model shows one class's variety); `test_metrics`
(`simple_loss` per test image, t and eps from the evaluator's fixed rng).

Config: `model` (`vision_jax.models.unet`), `diffusion.conditional`,
`diffusion.beta_schedule` ('linear' | 'cosine'), `diffusion.num_timesteps`,
`diffusion.label_dropout`, `diffusion.ema_decay`.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from vision_jax import config_lib, models, optim, parallel
from vision_jax.methods import base, generative

SAMPLERS = ('ddim', 'ddpm')
VARIANCES = ('beta', 'posterior')


def beta_schedule(kind: str, num_timesteps: int) -> np.ndarray:
  """The betas [T] (float64) of the 'linear' or 'cosine' schedule (module docstring)."""
  if num_timesteps < 1:
    raise ValueError(f'num_timesteps must be positive, got {num_timesteps}')
  if kind == 'linear':
    return np.linspace(1e-4, 0.02, num_timesteps, dtype=np.float64)
  if kind == 'cosine':
    s = 0.008
    f = lambda t: np.cos((t / num_timesteps + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    t = np.arange(num_timesteps, dtype=np.float64)
    return np.minimum(1 - f(t + 1) / f(t), 0.999)
  raise ValueError(f"unknown beta schedule {kind!r}; known: 'linear', 'cosine'")


@dataclasses.dataclass(frozen=True)
class Schedule:
  """The tables of the forward process, float64 numpy [T] (0-based t, see the module doc).

  Attributes:
    betas: beta_t.
    alphas_cumprod: abar_t = prod_{s <= t} (1 - beta_s).
    alphas_cumprod_prev: abar_{t-1}, with abar_{-1} = 1.
    posterior_variance: beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t), the variance of
      q(x_{t-1} | x_t, x_0) (0 at t = 0).
  """
  betas: np.ndarray
  alphas_cumprod: np.ndarray
  alphas_cumprod_prev: np.ndarray
  posterior_variance: np.ndarray

  @classmethod
  def make(cls, kind: str, num_timesteps: int) -> 'Schedule':
    betas = beta_schedule(kind, num_timesteps)
    alphas_cumprod = np.cumprod(1 - betas)
    prev = np.append(1.0, alphas_cumprod[:-1])
    return cls(betas, alphas_cumprod, prev, betas * (1 - prev) / (1 - alphas_cumprod))

  @property
  def num_timesteps(self) -> int:
    return len(self.betas)


def _const(table: np.ndarray) -> jax.Array:
  """A float64 table as the float32 constant the jitted code reads."""
  return jnp.asarray(np.asarray(table, np.float64).astype(np.float32))


def timesteps(num_timesteps: int, steps: int) -> np.ndarray:
  """The `steps` sampling timesteps, decreasing from T-1 to 0 (T-1 alone for 1 step).

  Evenly spaced over [0, T-1] and rounded half up: distinct for steps <= T, and every
  timestep for steps = T.
  """
  if not 1 <= steps <= num_timesteps:
    raise ValueError(f'steps must be in 1..{num_timesteps} (the diffusion timesteps), '
                     f'got {steps}')
  ts = np.floor(np.linspace(num_timesteps - 1, 0, steps) + 0.5).astype(np.int32)
  assert len(np.unique(ts)) == steps
  return ts


def predict_x0(x_t, eps, abar_t):
  """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t): eq. 4 solved for x_0."""
  return (x_t - jnp.sqrt(1 - abar_t) * eps) / jnp.sqrt(abar_t)


def ddim_sigma(abar_t, abar_prev, eta):
  """Song et al. eq. 16: eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)."""
  return eta * np.sqrt((1 - abar_prev) / (1 - abar_t)) * np.sqrt(1 - abar_t / abar_prev)


def ddim_step(x_t, eps, abar_t, abar_prev, sigma, noise):
  """Song et al. eq. 12: x_prev from x_t and the predicted noise eps."""
  x0 = predict_x0(x_t, eps, abar_t)
  # 1 - abar_prev - sigma^2 >= 0 (eq. 16 keeps it so); float32 rounding must not take
  # it below 0 in the last step, where it is 0 (abar_prev = 1).
  direction = jnp.sqrt(jnp.maximum(1 - abar_prev - sigma ** 2, 0.0))
  return jnp.sqrt(abar_prev) * x0 + direction * eps + sigma * noise


def ddpm_step(x_t, eps, abar_t, abar_prev, sigma, noise):
  """Ho et al. Algorithm 2, line 4, as the posterior mean mu~(x_t, x_0) plus sigma z,
  between any two timesteps (beta = 1 - abar_t / abar_prev)."""
  beta = 1 - abar_t / abar_prev
  x0 = predict_x0(x_t, eps, abar_t)
  mean = (jnp.sqrt(abar_prev) * beta / (1 - abar_t) * x0
          + jnp.sqrt(1 - beta) * (1 - abar_prev) / (1 - abar_t) * x_t)
  return mean + sigma * noise


def guided_eps(eps_conditional, eps_unconditional, guidance):
  """Ho & Salimans eq. 6: (1 + w) eps(x, c) - w eps(x, null)."""
  return (1 + guidance) * eps_conditional - guidance * eps_unconditional


def sampling_tables(schedule: Schedule, *, sampler: str, steps: int, eta: float,
                    variance: str) -> dict[str, np.ndarray]:
  """Per sampling step i: 't', 'abar' (abar_t), 'abar_prev' (1 after t = 0) and 'sigma'."""
  if sampler not in SAMPLERS:
    raise config_lib.ConfigError(f'unknown sampler {sampler!r}; known: {", ".join(SAMPLERS)}')
  if variance not in VARIANCES:
    raise config_lib.ConfigError(
        f'unknown DDPM variance {variance!r}; known: {", ".join(VARIANCES)}')
  if eta < 0:
    raise config_lib.ConfigError(f'eta must be >= 0, got {eta}')
  try:
    ts = timesteps(schedule.num_timesteps, steps)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from None
  abar = schedule.alphas_cumprod[ts]
  abar_prev = np.append(schedule.alphas_cumprod[ts[1:]], 1.0)
  if sampler == 'ddim':
    sigma = ddim_sigma(abar, abar_prev, eta)
  else:
    beta = 1 - abar / abar_prev
    var = beta if variance == 'beta' else beta * (1 - abar_prev) / (1 - abar)
    sigma = np.sqrt(var)
    sigma[-1] = 0.0  # No noise in the last step (z = 0 at t = 0 in Algorithm 2).
  return {'t': ts, 'abar': abar, 'abar_prev': abar_prev, 'sigma': sigma}


def shard_rows(x: jax.Array) -> jax.Array:
  """`x` split by rows over the `data` axis of the mesh being traced under, if any.

  The evaluators call the samplers on replicated labels; without this every device
  would run the whole chain for every sample. The values do not change.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or parallel.DATA_AXIS not in mesh.axis_names or (
      x.shape[0] % mesh.shape[parallel.DATA_AXIS]):
    return x
  return jax.lax.with_sharding_constraint(
      x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(parallel.DATA_AXIS)))


def slerp(a, b, weight):
  """Spherical interpolation between a and b (per row, over the flattened rest)."""
  flat_a, flat_b = a.reshape(len(a), -1), b.reshape(len(b), -1)
  cos = jnp.sum(flat_a * flat_b, -1) / (
      jnp.linalg.norm(flat_a, axis=-1) * jnp.linalg.norm(flat_b, axis=-1))
  theta = jnp.arccos(jnp.clip(cos, -1, 1)).reshape(-1, *[1] * (a.ndim - 1))
  return (jnp.sin((1 - weight) * theta) * a + jnp.sin(weight * theta) * b) / jnp.sin(theta)


class Method(generative.Method):
  """DDPM training with an epsilon-predicting U-Net; DDPM/DDIM sampling with guidance."""
  name = 'diffusion'
  OPTIONS = {'conditional': False, 'beta_schedule': 'linear', 'num_timesteps': 1000,
             'label_dropout': 0.1, 'ema_decay': 0.9999}
  CAPABILITIES = ('generate', 'interpolate', 'trajectory', 'test_metrics')
  SAMPLE_OPTIONS = {'sampler': 'ddim', 'steps': 50, 'eta': 0.0, 'guidance': 0.0,
                    'variance': 'beta'}
  # The option giving the probability that training drops the condition (for guidance).
  CONDITION_DROPOUT = 'label_dropout'

  def __init__(self, config, data_info, **kwargs):
    super().__init__(config, data_info, **kwargs)
    options = self.options
    try:
      self.schedule_tables = Schedule.make(options.beta_schedule, int(options.num_timesteps))
    except ValueError as e:
      raise config_lib.ConfigError(f'{self.name}: {e}') from None
    dropout = options[self.CONDITION_DROPOUT]
    if not 0 <= dropout < 1:
      raise config_lib.ConfigError(
          f'{self.name}.{self.CONDITION_DROPOUT} must be in [0, 1), got {dropout}')
    if not 0 <= (options.ema_decay or 0) < 1:
      raise config_lib.ConfigError(
          f'{self.name}.ema_decay must be in [0, 1), got {options.ema_decay}')
    self.model = self.build_model()
    self.tx = optim.with_ema(self.tx, options.ema_decay)

  def build_model(self):
    """The epsilon network `config.model` (a U-Net), with the label table if conditional."""
    return models.get_model(
        self.config.model, num_classes=self.num_classes if self.conditional else None,
        dtype=self.compute_dtype)

  @property
  def null_label(self) -> int:
    return self.num_classes

  def eval_state(self, state):
    if not self.options.ema_decay:
      return state
    return state.replace(params=optim.ema_params(state.opt_state))

  # Training.

  def _labels(self, labels):
    return labels.astype(jnp.int32) if self.conditional else None

  def init_variables(self, rng, batch):
    self.check_images(batch['image'])
    n = batch['image'].shape[0]
    labels = batch['label'] if self.conditional else None
    return self.model.init(rng, batch['image'], jnp.zeros([n], jnp.int32),
                           None if labels is None else self._labels(labels))

  def noise_and_timesteps(self, rng, shape):
    """t uniform on {0..T-1} [N] and eps ~ N(0, I) of `shape`, from `rng`."""
    t_key, eps_key = jax.random.split(rng)
    t = jax.random.randint(t_key, shape[:1], 0, self.schedule_tables.num_timesteps)
    return t, jax.random.normal(eps_key, shape, jnp.float32)

  def simple_loss(self, params, model_state, images, rng, *, train, dropout_rng=None,
                  **condition):
    """Per-example L_simple [N] and the new model state; `condition` goes to the model
    (`labels=...` here, `tokens=...` for text)."""
    x0 = 2 * images.astype(jnp.float32) - 1
    t, eps = self.noise_and_timesteps(rng, x0.shape)
    abar = _const(self.schedule_tables.alphas_cumprod)[t].reshape(-1, 1, 1, 1)
    x_t = jnp.sqrt(abar) * x0 + jnp.sqrt(1 - abar) * eps
    pred, model_state = base.apply_model(self.model, params, model_state, x_t, train=train,
                                         rng=dropout_rng, t=t, **condition)
    return jnp.mean((eps - pred) ** 2, axis=(1, 2, 3)), model_state

  def loss(self, params, model_state, batch, rng):
    noise_rng, label_rng, dropout_rng = jax.random.split(rng, 3)
    labels = self._labels(batch['label']) if self.conditional else None
    if labels is not None and self.options.label_dropout:
      drop = jax.random.bernoulli(label_rng, self.options.label_dropout, labels.shape)
      labels = jnp.where(drop, self.null_label, labels)
    per_example, model_state = self.simple_loss(
        params, model_state, batch['image'], noise_rng, train=True,
        dropout_rng=dropout_rng, labels=labels)
    return per_example.mean(), ({}, model_state)

  # Sampling.

  def _eps_fn(self, state, labels, guidance):
    """eps(x, t_scalar) of the eval-mode model, guided for a conditional model.

    `labels` [N] is the sampling loop's condition; a subclass conditioned otherwise
    (on text) overrides this to read its own."""
    labels = self._labels(labels)
    if not self.conditional and guidance:
      raise config_lib.ConfigError(
          f'guidance {guidance}: classifier-free guidance needs a conditional model '
          '(diffusion.conditional)')

    def apply(x, t, labels):
      return self.model.apply({'params': state.params, **state.model_state}, x,
                              jnp.full([x.shape[0]], t, jnp.int32), labels)

    def eps(x, t):
      if not self.conditional:
        return apply(x, t, None)
      if not guidance:
        return apply(x, t, labels)
      null = jnp.full_like(labels, self.null_label)
      both = apply(jnp.concatenate([x, x]), t, jnp.concatenate([labels, null]))
      return guided_eps(both[:len(x)], both[len(x):], guidance)
    return eps

  def _sample_loop(self, state, rng, labels, x_t, options, frames=None):
    """Runs the sampler from x_t; with `frames`, also returns [num_frames, N, ...] states."""
    x_t, labels = shard_rows(x_t), shard_rows(labels)
    tables = sampling_tables(self.schedule_tables, sampler=options['sampler'],
                             steps=int(options['steps']), eta=float(options['eta']),
                             variance=options['variance'])
    eps_fn = self._eps_fn(state, labels, float(options['guidance']))
    step_fn = ddim_step if options['sampler'] == 'ddim' else ddpm_step
    t_table = jnp.asarray(tables['t'])
    abar_table, prev_table, sigma_table = (
        _const(tables[k]) for k in ('abar', 'abar_prev', 'sigma'))
    stochastic = bool(np.any(tables['sigma'] > 0))

    steps = len(tables['t'])
    kept = keep_table = None
    if frames is not None:
      # State k (0: x_T, k: after step k) fills the frames whose evenly spaced index is
      # k (several frames when frames > steps + 1).
      picks = np.floor(np.linspace(0, steps, frames) + 0.5).astype(int)
      keep = picks[None, :] == np.arange(steps + 1)[:, None]  # [steps + 1, frames]
      keep_table = jnp.asarray(keep[1:])
      kept = jnp.where(jnp.asarray(keep[0]).reshape(-1, *[1] * x_t.ndim), x_t[None],
                       jnp.zeros((frames, *x_t.shape), x_t.dtype))

    def body(i, carry):
      x, kept = carry
      abar, abar_prev, sigma = abar_table[i], prev_table[i], sigma_table[i]
      eps = eps_fn(x, t_table[i])
      # Clip the predicted x_0, then recompute eps from it (module docstring).
      x0 = jnp.clip(predict_x0(x, eps, abar), -1, 1)
      eps = (x - jnp.sqrt(abar) * x0) / jnp.sqrt(1 - abar)
      noise = (jax.random.normal(jax.random.fold_in(rng, i), x.shape, x.dtype)
               if stochastic else jnp.zeros_like(x))
      x = step_fn(x, eps, abar, abar_prev, sigma, noise)
      if kept is not None:
        kept = jnp.where(keep_table[i].reshape(-1, *[1] * x.ndim), x[None], kept)
      return x, kept

    x, kept = jax.lax.fori_loop(0, steps, body, (x_t, kept))
    return x, kept

  def _initial_noise(self, rng, n):
    return jax.random.normal(rng, (n, *self.image_shape), jnp.float32)

  @staticmethod
  def _to_unit(x):
    return jnp.clip((x + 1) / 2, 0, 1).astype(jnp.float32)

  def generate(self, state, rng, labels, **sample_options):
    """[N, H, W, C] samples in [0, 1] for labels [N] (see SAMPLE_OPTIONS)."""
    options = self.sample_options(sample_options)
    noise_rng, loop_rng = jax.random.split(rng)
    x_t = self._initial_noise(noise_rng, labels.shape[0])
    x, _ = self._sample_loop(state, loop_rng, labels, x_t, options)
    return self._to_unit(x)

  def trajectory(self, state, rng, labels, num_frames, **sample_options):
    """[N, num_frames, H, W, C]: x_T, evenly spaced states of the chain, the final image.

    The same noise as `generate` with the same rng, so the last frame is its sample.
    """
    options = self.sample_options(sample_options)
    if num_frames < 2:
      raise ValueError(f'a trajectory needs at least 2 frames, got {num_frames}')
    noise_rng, loop_rng = jax.random.split(rng)
    x_t = self._initial_noise(noise_rng, labels.shape[0])
    _, kept = self._sample_loop(state, loop_rng, labels, x_t, options, frames=num_frames)
    return self._to_unit(jnp.swapaxes(kept, 0, 1))

  def interpolate(self, state, batch, rng, num_points, **sample_options):
    """[P, num_points, H, W, C], P = N // 2: DDIM (eta = 0) from slerped x_T noises."""
    options = {**self.sample_options(sample_options), 'sampler': 'ddim', 'eta': 0.0}
    pairs = batch['image'].shape[0] // 2
    a_rng, b_rng, loop_rng = jax.random.split(rng, 3)
    a, b = self._initial_noise(a_rng, pairs), self._initial_noise(b_rng, pairs)
    weights = jnp.linspace(0, 1, num_points)
    x_t = jax.vmap(lambda w: slerp(a, b, w), out_axes=1)(weights)  # [P, points, ...]
    x_t = x_t.reshape(pairs * num_points, *self.image_shape)
    labels = batch.get('label')
    labels = (jnp.repeat(labels[0:2 * pairs:2].astype(jnp.int32), num_points)
              if labels is not None else jnp.zeros([pairs * num_points], jnp.int32))
    x, _ = self._sample_loop(state, loop_rng, labels, x_t, options)
    return self._to_unit(x).reshape(pairs, num_points, *self.image_shape)

  def test_metrics(self, state, batch, rng):
    """`simple_loss` per test image, with t and eps drawn from `rng`."""
    labels = self._labels(batch['label']) if self.conditional else None
    per_example, _ = self.simple_loss(state.params, state.model_state, batch['image'],
                                      rng, train=False, labels=labels)
    return {'simple_loss': per_example}

