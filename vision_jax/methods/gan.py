r"""Generative adversarial networks (Goodfellow et al., 2014), trained as DCGAN does.

The two-player game (Goodfellow et al., eq. 1), with D(x) = sigmoid(l(x)) for D's
logit l:

  min_G max_D V(D, G) = E_x[log D(x)] + E_z[log(1 - D(G(z)))],   z ~ N(0, I).

One `update` is the lecture's loop (Goodfellow et al., algorithm 1, with k = 1):
"update D with 1 SGD step on real and fake, then use D to update G with 1 SGD step".

  D step   z_d ~ N(0, I) (the step key's first draw), fakes G(z_d) with G fixed
           (`stop_gradient`), and D descends its loss
             L_D = -E_x[log D(x)] - E_z[log(1 - D(G(z)))] (+ penalty) = -V (+ penalty)
           with its own optimizer (`config.optimizer_d`, `config.schedule_d`).
  G step   a NEW draw z_g ~ N(0, I) (the step key's second draw, as algorithm 1
           samples a fresh minibatch of noise for G), against the UPDATED D, whose
           params are constants of G's loss (G's gradient is taken w.r.t. G's params
           only, and D's enter through `stop_gradient`); G descends
             'non_saturating' (default)  L_G = -E_z[log D(G(z))]
             'minimax'                   L_G =  E_z[log(1 - D(G(z)))]
           with its own optimizer (`config.optimizer_g`, `config.schedule_g`).
           Goodfellow et al. (section 3) recommend the non-saturating form: early on
           D rejects fakes with confidence, log(1 - D(G(z))) saturates and the
           minimax G gets almost no gradient.

Every log-probability is `log_sigmoid` of a logit: log D = log_sigmoid(l) and
log(1 - D) = log_sigmoid(-l), finite for any logit.

BatchNorm (PITFALLS: statistics shared between D's real and fake passes, batches that
mix real and fake, D not frozen in the G step). D runs in training mode on separate
batches: all-real, then all-fake, each normalised with its own statistics (the DCGAN
reference code's practice; a concatenated real + fake batch would let D tell them
apart by the statistics alone). D's running averages are updated by the real pass
only, so eval-mode D (`test_metrics`) normalises test images as it normalised real
training batches. In the G step D runs in training mode on the fake batch, as in its
own fake pass, and everything it would update is discarded: D's params, optimizer
state and statistics change only in the D step. G runs in training mode in both
steps; its running averages are updated by both passes, in order, and `generate` runs
G in eval mode with them, so a sample does not depend on the others in its batch.

Options (`config.gan`): `generator_loss` ('non_saturating' | 'minimax');
`gradient_penalty` ('none' | 'r1' | 'wgan_gp') with `penalty_weight`, added to L_D:
  'r1'       gamma/2 E_x[||grad_x l(x)||^2] on real images (Mescheder et al., 2018,
             eq. 9), gamma = penalty_weight;
  'wgan_gp'  lambda E[(||grad_x l(x^)||_2 - 1)^2] at x^ = e x + (1 - e) G(z),
             e ~ U[0, 1] per image (Gulrajani et al., 2017, algorithm 1; here on the
             logits of the GAN loss), lambda = penalty_weight;
both are gradients of the summed logits of a batch, so with D's BatchNorm they carry
the batch statistics' cross-example terms; Gulrajani et al. replace BatchNorm by layer
normalisation (`model.discriminator_norm = 'layer'`). The outer gradient of a
penalty is a gradient of a gradient. `conditional`: G embeds the label next to z and
D is a projection discriminator (see `vision_jax.models.dcgan`); the fakes of a step
take the real batch's labels, so the classes of the fakes follow the data's.
`ema_decay`: an exponential moving average of G's params (0 disables), kept in G's
optimizer state by `optim.with_ema` and swapped in by `eval_state`.

The latent size is the model's `latent_dim` (`config.model.latent_dim`), an attribute
of G's architecture.

Metrics of every step: `d_loss` (L_D with the penalty), `g_loss`, `value` (V(D, G) of
the D step's batches, before D's update), `d_real` and `d_fake` (D's mean probability
on the real and fake images of the D step), `d_fake_g_step` (the updated D's mean
probability on the G step's fakes), `penalty`, and each player's `d_`/`g_` grad,
update and param norms and learning rate. `loss` is `d_loss`, and `param_norm` the
norm of both players' params, for the trainer's non-finite check. A `d_loss` that
falls towards 0 (d_real -> 1, d_fake -> 0) is the failure where D wins: G's gradient
vanishes (with the minimax loss first) and the samples stop improving; report it.

Capabilities: `generate` (G(z), z from the key; labels used when conditional),
`interpolate` (slerp between pairs of noise vectors from the key, White 2016: linear
paths between Gaussian samples pass through improbably short vectors) and
`test_metrics` (D's probability on test images and on as many samples).
"""

import jax
import jax.numpy as jnp

from vision_jax import config_lib, models, optim
from vision_jax.methods import base, generative
from vision_jax.models import dcgan

GENERATOR_LOSSES = ('non_saturating', 'minimax')
GRADIENT_PENALTIES = ('none', 'r1', 'wgan_gp')
PLAYERS = ('generator', 'discriminator')


# The objective and the losses, from D's logits.

def value_function(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """V(D, G) = E[log D(x)] + E[log(1 - D(G(z)))], with D = sigmoid(logits)."""
  return (jnp.mean(jax.nn.log_sigmoid(real_logits))
          + jnp.mean(jax.nn.log_sigmoid(-fake_logits)))


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """-V(D, G): D ascends V."""
  return -value_function(real_logits, fake_logits)


def generator_loss(fake_logits: jax.Array, kind: str = 'non_saturating') -> jax.Array:
  """-E[log D(G(z))] ('non_saturating') or E[log(1 - D(G(z)))] ('minimax')."""
  if kind == 'non_saturating':
    return -jnp.mean(jax.nn.log_sigmoid(fake_logits))
  if kind == 'minimax':
    return jnp.mean(jax.nn.log_sigmoid(-fake_logits))
  raise ValueError(f'generator_loss must be one of {GENERATOR_LOSSES}, got {kind!r}')


def _squared_norms(grads: jax.Array) -> jax.Array:
  return jnp.sum(jnp.square(grads.reshape(grads.shape[0], -1)), axis=-1)


def r1_penalty(input_grads: jax.Array, gamma: float) -> jax.Array:
  """gamma/2 E[||grad_x D(x)||^2] from the per-image input gradients [N, ...]."""
  return gamma / 2 * jnp.mean(_squared_norms(input_grads))


def wgan_gp_penalty(input_grads: jax.Array, weight: float) -> jax.Array:
  """lambda E[(||grad D(x^)||_2 - 1)^2] from the per-image input gradients [N, ...].

  The norm is sqrt(||g||^2 + 1e-12): the plain norm's gradient is NaN at g = 0.
  """
  norms = jnp.sqrt(_squared_norms(input_grads) + 1e-12)
  return weight * jnp.mean(jnp.square(norms - 1))


def logits_and_input_grads(logits_fn, images: jax.Array):
  """`(logits, aux, grads)` of `logits_fn(images) -> (logits [N], aux)`, with grads the
  gradient of the summed logits w.r.t. the images (per image when D treats images
  independently), differentiable again for the penalty's outer gradient."""
  logits, vjp, aux = jax.vjp(logits_fn, images, has_aux=True)
  (grads,) = vjp(jnp.ones_like(logits))
  return logits, aux, grads


def slerp(z0: jax.Array, z1: jax.Array, t: jax.Array) -> jax.Array:
  """Spherical interpolation of [P, D] vectors at fractions t [T]: [P, T, D].

  Linear where the two vectors are (nearly) parallel, where the formula divides by 0.
  """
  cos = jnp.sum(z0 * z1, -1) / (jnp.linalg.norm(z0, axis=-1) * jnp.linalg.norm(z1, axis=-1))
  omega = jnp.arccos(jnp.clip(cos, -1.0, 1.0))[:, None, None]
  t = t[None, :, None]
  sin = jnp.sin(omega)
  parallel = sin < 1e-6
  safe = jnp.where(parallel, 1.0, sin)
  w0 = jnp.where(parallel, 1 - t, jnp.sin((1 - t) * omega) / safe)
  w1 = jnp.where(parallel, t, jnp.sin(t * omega) / safe)
  return w0 * z0[:, None] + w1 * z1[:, None]


def to_model_range(images: jax.Array) -> jax.Array:
  """[0, 1] pipeline images to G's tanh range [-1, 1]."""
  return images * 2 - 1


def to_image_range(images: jax.Array) -> jax.Array:
  """G's [-1, 1] images to float32 in [0, 1]."""
  return ((images.astype(jnp.float32) + 1) / 2).clip(0, 1)


class Method(generative.Method):
  """A (conditional) GAN: a D step then a G step against the updated D (module doc).

  Config: `model` (name 'dcgan' and its fields), the option group `gan`, and the
  optimizer and schedule groups `optimizer_d`, `schedule_d`, `optimizer_g`,
  `schedule_g`. The base's single `config.optimizer` and `config.schedule` are not
  used; a config that has them is an error, since an option nothing reads would
  silently do nothing.

  State: `params`, `opt_state` and `model_state` are dicts with one entry per player,
  'generator' and 'discriminator' (`model_state[player]` holds its `batch_stats`).

  Attributes:
    model: the `dcgan.Model`, with both players.
    latent_dim: size of z.
    schedule_d, tx_d: D's learning-rate schedule and optimizer.
    schedule_g, tx_g: G's, `tx_g` followed by the EMA stage when `ema_decay` > 0.
  """
  name = 'gan'
  OPTIONS = {
      'generator_loss': 'non_saturating',
      'gradient_penalty': 'none',
      'penalty_weight': 10.0,
      'conditional': False,
      'ema_decay': 0.999,
  }
  CAPABILITIES = ('generate', 'interpolate', 'test_metrics')
  SAMPLE_OPTIONS = {}

  def __init__(self, config, data_info, **kwargs):
    super().__init__(config, data_info, **kwargs)
    options = self.options
    if options.generator_loss not in GENERATOR_LOSSES:
      raise config_lib.ConfigError(
          f'gan.generator_loss must be one of {GENERATOR_LOSSES}, got '
          f'{options.generator_loss!r}')
    if options.gradient_penalty not in GRADIENT_PENALTIES:
      raise config_lib.ConfigError(
          f'gan.gradient_penalty must be one of {GRADIENT_PENALTIES}, got '
          f'{options.gradient_penalty!r}')
    if (config.grad_accum_steps or 1) != 1:
      raise config_lib.ConfigError('method gan takes one D step and one G step per batch; '
                                   'grad_accum_steps must be 1')
    self.model = models.get_model(
        config.model, image_shape=self.image_shape,
        num_classes=self.num_classes if self.conditional else None,
        dtype=self.compute_dtype)
    try:  # The resolutions' error as a config error, before anything is traced.
      dcgan.start_resolution(self.image_shape[:2], len(self.model.generator_features))
    except ValueError as e:
      raise config_lib.ConfigError(f'model.generator_features: {e}') from None
    self.latent_dim = int(self.model.latent_dim)
    self.schedule_d, self.tx_d = self.make_optimizer('optimizer_d', 'schedule_d')
    self.schedule_g, tx_g = self.make_optimizer('optimizer_g', 'schedule_g')
    self.tx_g = optim.with_ema(tx_g, options.ema_decay)

  def make_optimizer(self, key='optimizer', schedule_key='schedule'):
    if key == 'optimizer':  # base.Method's one optimizer: each player has its own.
      present = [k for k in ('optimizer', 'schedule') if k in self.config]
      if present:
        raise config_lib.ConfigError(
            f'method gan trains two players with config.optimizer_d/schedule_d and '
            f'config.optimizer_g/schedule_g; remove config.{" and config.".join(present)}'
            ', which it would not read')
      return None, None
    return super().make_optimizer(key, schedule_key)

  # Helpers.

  def latents(self, rng: jax.Array, num: int) -> jax.Array:
    """z ~ N(0, I), [num, latent_dim] float32."""
    return jax.random.normal(rng, (num, self.latent_dim), jnp.float32)

  def _labels(self, batch, num: int):
    if not self.conditional:
      return None
    labels = batch.get('label') if isinstance(batch, dict) else batch
    return jnp.zeros((num,), jnp.int32) if labels is None else labels.astype(jnp.int32)

  def apply_player(self, player: str, params, model_state, inputs, labels, *, train: bool):
    """Applies one player with its own variables only: `(outputs, its new model_state)`.

    `player` is 'generator' (inputs z, outputs images in [-1, 1]) or 'discriminator'
    (inputs images in [-1, 1], outputs logits). The state is unchanged in eval mode.
    """
    method = 'generate' if player == 'generator' else 'discriminate'
    variables = {'params': {player: params},
                 **{c: {player: tree} for c, tree in model_state.items()}}
    if train and model_state:
      outputs, new = self.model.apply(variables, inputs, labels, train=True, method=method,
                                      mutable=list(model_state))
      return outputs, {c: tree[player] for c, tree in new.items()}
    return self.model.apply(variables, inputs, labels, train=train, method=method), model_state

  # The method interface.

  def init_variables(self, rng, batch):
    self.check_images(batch['image'])
    images = to_model_range(batch['image'])
    return self.model.init(rng, images, self._labels(batch, images.shape[0]), train=False)

  def init_state(self, rng, batch):
    variables = dict(self.init_variables(rng, batch))
    params = variables.pop('params')
    model_state = {p: {c: tree[p] for c, tree in variables.items() if p in tree}
                   for p in PLAYERS}
    opt_state = {'generator': self.tx_g.init(params['generator']),
                 'discriminator': self.tx_d.init(params['discriminator'])}
    return base.TrainState(step=jnp.zeros([], jnp.int32), params=params,
                           opt_state=opt_state, model_state=model_state)

  def discriminator_step_loss(self, d_params, d_state, real, fake, labels, rng):
    """`(L_D, (metrics, new D state))`: D on all-real then all-fake batches (images in
    [-1, 1], fakes constant), plus the gradient penalty."""
    penalty_kind, weight = self.options.gradient_penalty, self.options.penalty_weight

    def real_logits_fn(images):
      return self.apply_player('discriminator', d_params, d_state, images, labels,
                               train=True)

    if penalty_kind == 'r1':
      real_logits, new_state, grads = logits_and_input_grads(real_logits_fn, real)
      penalty = r1_penalty(grads, weight)
    else:
      real_logits, new_state = real_logits_fn(real)
    # The fake pass normalises with its own statistics; only the real pass updates D's
    # running averages (module doc).
    fake_logits, _ = self.apply_player('discriminator', d_params, d_state, fake, labels,
                                       train=True)
    if penalty_kind == 'wgan_gp':
      e = jax.random.uniform(rng, (real.shape[0],) + (1,) * (real.ndim - 1), real.dtype)
      mixed = e * real + (1 - e) * fake
      _, _, grads = logits_and_input_grads(
          lambda x: self.apply_player('discriminator', d_params, d_state, x, labels,
                                      train=True), mixed)
      penalty = wgan_gp_penalty(grads, weight)
    elif penalty_kind == 'none':
      penalty = jnp.zeros([], jnp.float32)
    value = value_function(real_logits, fake_logits)
    metrics = {'value': value, 'penalty': penalty,
               'd_real': jnp.mean(jax.nn.sigmoid(real_logits)),
               'd_fake': jnp.mean(jax.nn.sigmoid(fake_logits))}
    return -value + penalty, (metrics, new_state)

  def generator_step_loss(self, g_params, g_state, d_params, d_state, z, labels):
    """`(L_G, (metrics, new G state))` against D (constant: its params are
    `stop_gradient`ed and its state changes are dropped)."""
    fake, g_state = self.apply_player('generator', g_params, g_state, z, labels, train=True)
    logits, _ = self.apply_player('discriminator', jax.lax.stop_gradient(d_params), d_state,
                                  fake, labels, train=True)
    loss = generator_loss(logits, self.options.generator_loss)
    return loss, ({'d_fake_g_step': jnp.mean(jax.nn.sigmoid(logits))}, g_state)

  def update(self, state, batch, rng):
    """One D step, then one G step against the updated D (module doc)."""
    params, opt_state = dict(state.params), dict(state.opt_state)
    model_state = dict(state.model_state)
    real = to_model_range(batch['image'])
    n = real.shape[0]
    labels = self._labels(batch, n)
    d_key, g_key, penalty_key = jax.random.split(rng, 3)

    # D step: fakes from the current G (constants of D's loss).
    fake, model_state['generator'] = self.apply_player(
        'generator', params['generator'], model_state['generator'], self.latents(d_key, n),
        labels, train=True)
    fake = jax.lax.stop_gradient(fake)
    (d_loss, (d_metrics, model_state['discriminator'])), d_grads = jax.value_and_grad(
        self.discriminator_step_loss, has_aux=True)(
            params['discriminator'], model_state['discriminator'], real, fake, labels,
            penalty_key)
    params['discriminator'], opt_state['discriminator'], d_norms = base.apply_gradients(
        self.tx_d, params['discriminator'], opt_state['discriminator'], d_grads,
        prefix='d_')

    # G step: fresh noise, against the updated D, differentiated w.r.t. G's params only.
    (g_loss, (g_metrics, model_state['generator'])), g_grads = jax.value_and_grad(
        self.generator_step_loss, has_aux=True)(
            params['generator'], model_state['generator'], params['discriminator'],
            model_state['discriminator'], self.latents(g_key, n), labels)
    params['generator'], opt_state['generator'], g_norms = base.apply_gradients(
        self.tx_g, params['generator'], opt_state['generator'], g_grads, prefix='g_')

    metrics = {**d_metrics, **g_metrics, **d_norms, **g_norms,
               'loss': d_loss, 'd_loss': d_loss, 'g_loss': g_loss,
               'param_norm': jnp.hypot(d_norms['d_param_norm'], g_norms['g_param_norm']),
               'd_lr': self.schedule_d(state.step), 'g_lr': self.schedule_g(state.step)}
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              model_state=model_state)
    return new_state, metrics

  def eval_state(self, state):
    """G's params replaced by their EMA when `ema_decay` > 0."""
    if not self.options.ema_decay:
      return state
    params = {**state.params,
              'generator': optim.ema_params(state.opt_state['generator'])}
    return state.replace(params=params)

  # Capabilities (on the eval state).

  def _generate_from(self, state, z, labels):
    images, _ = self.apply_player('generator', state.params['generator'],
                                  state.model_state['generator'], z, labels, train=False)
    return to_image_range(images)

  def generate(self, state, rng, labels):
    """G(z) in [0, 1], [N, *image_shape], z from `rng`; `labels` [N] when conditional."""
    return self._generate_from(state, self.latents(rng, labels.shape[0]),
                               self._labels(labels, labels.shape[0]))

  def interpolate(self, state, batch, rng, num_points):
    """[P, num_points, *image_shape] along slerp paths between P = N // 2 pairs of noise
    vectors from `rng` (the batch gives N and, when conditional, the label of each path:
    that of its pair's first image)."""
    pairs = batch['image'].shape[0] // 2
    z0, z1 = jnp.split(self.latents(rng, 2 * pairs), 2)
    z = slerp(z0, z1, jnp.linspace(0.0, 1.0, num_points)).reshape(-1, self.latent_dim)
    labels = self._labels(batch, 2 * pairs)
    if labels is not None:
      labels = jnp.repeat(labels[0:2 * pairs:2], num_points)
    images = self._generate_from(state, z, labels)
    return images.reshape(pairs, num_points, *self.image_shape)

  def test_metrics(self, state, batch, rng):
    """Eval-mode D's probability that images are real, per example [N]: `d_real` on
    the batch's test images, `d_fake` on as many samples (z from `rng`, the batch's
    labels). Against the training `d_real`, a higher train value says D memorises."""
    n = batch['image'].shape[0]
    labels = self._labels(batch, n)
    d_params, d_state = state.params['discriminator'], state.model_state['discriminator']
    real_logits, _ = self.apply_player('discriminator', d_params, d_state,
                                       to_model_range(batch['image']), labels, train=False)
    fake = to_model_range(self._generate_from(state, self.latents(rng, n), labels))
    fake_logits, _ = self.apply_player('discriminator', d_params, d_state, fake, labels,
                                       train=False)
    return {'d_real': jax.nn.sigmoid(real_logits), 'd_fake': jax.nn.sigmoid(fake_logits)}
