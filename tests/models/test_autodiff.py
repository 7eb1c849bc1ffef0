"""Every JAX transformation works through every model family, on its default layers.

For a scalar function of the input (the softmax cross-entropy of the outputs, flattened
per example, against a fixed target), in eval mode and in train mode (batch statistics;
dropout with a fixed key), `jax.grad`, `jax.vmap` of a per-example `jax.grad`,
`jax.jvp`, `jax.hessian` (over a few pixels), a Hessian-vector product and the gradient
of a gradient penalty (||df/dx||^2, w.r.t. the parameters, as in WGAN-GP or R1) all run
and agree with central finite differences, in float64 (`jax.enable_x64`, scoped to
these tests). With `cpu_kernels=True` the models compute what they compute on Flax's
layers.

A new model family joins the contract with one entry: its tiny variant in `VARIANTS`
(the `config.model` fields that build it, or for a module that a method composes from
others, a function of the dtype that builds it; the input shape and, for a model that
is not a classifier of images, its entry point and conditioning inputs); a test fails
while a family has none. Keep it tiny (what costs is compiling its second
derivatives), with some widths of 16, the CPU kernels' vector width, so that the
drop-in check runs them, and maps in the last stage that leave the batch statistics
more than two or three numbers to average.
"""

import dataclasses
import functools
import importlib
import pkgutil
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_jax import models
from vision_jax.models import cnn, cpc, dcgan, self_supervised, transformer

# Tiny networks run in milliseconds; XLA's optimising compile is what costs.
jit = functools.partial(jax.jit, compiler_options={
    'xla_backend_optimization_level': 0,
    'xla_llvm_disable_expensive_passes': True,
})


def _same_for_every_example(value):
  """Conditioning inputs of a batch from its size, equal for every example (so that a
  batch of one is an example under vmap)."""
  return lambda x: (jnp.full(x.shape[0], value, jnp.int32),)


def _vae_sample(module, x, *, train=False):
  """The VAE's training path: encode, reparameterise with fixed noise, decode."""
  del train
  mean, log_variance = module.encode(x)
  noise = jnp.cos(jnp.arange(mean.shape[-1], dtype=mean.dtype))
  return module.decode(mean + jnp.exp(0.5 * log_variance) * noise)


def _vqvae_autoencode(module, x, *, train=False):
  """The VQ-VAE's encoder and decoder without the quantiser between them: its
  straight-through output is piecewise constant in the input, which finite differences
  cannot check (tests/models/test_vqvae.py checks that its gradient is the identity)."""
  del train
  return module.decode_latents(module.encode_latents(x))


def _dalle_logits(out):
  """The prior's text and image logits, flattened per example side by side."""
  return jnp.concatenate([out['text_logits'].reshape(out['text_logits'].shape[0], -1),
                          out['image_logits'].reshape(out['image_logits'].shape[0], -1)],
                         axis=-1)


def _clip_logits(out):
  """Per-example products of CLIP's two embeddings, scaled: [N, embed_dim]."""
  image, text, logit_scale = out
  return image * text * jnp.exp(logit_scale)


def _dense_detector_logits(out):
  """FCOS's class, box and centerness outputs of every location and CondInst's mask
  features and controllers, flattened per example."""
  return jnp.concatenate([out[k].reshape(out[k].shape[0], -1)
                          for k in ('class_logits', 'ltrb', 'centerness_logits',
                                    'mask_features', 'controllers')], axis=-1)


def _detr_logits(out):
  """The last decoder layer's class logits and boxes, flattened per example."""
  return jnp.concatenate([out[k][-1].reshape(out[k].shape[1], -1)
                          for k in ('logits', 'boxes')], axis=-1)


@dataclasses.dataclass(frozen=True)
class Variant:
  # The config.model fields that build it, or (family, dtype -> module) for a module
  # that a method composes around an encoder.
  model: dict[str, Any] | tuple[str, Callable[[Any], Any]]
  input_shape: tuple[int, ...]  # (batch, ...) of the differentiated input
  extra_args: Callable[[jax.Array], tuple] = lambda x: ()  # conditioning inputs
  method: Any = None  # the entry point, a method name or function; None: __call__
  to_logits: Callable[[jax.Array], jax.Array] = lambda out: out  # outputs -> [N, ...]
  # Scales the initial parameters: DCGAN's N(0, 0.02) weights make derivatives too small
  # for finite differences to check.
  params_scale: float = 1.0
  # False where training mode computes the same function (no batch statistics, no
  # dropout): its cases would repeat the eval ones.
  train_mode: bool = True

  @property
  def family(self) -> str:
    return self.model[0] if isinstance(self.model, tuple) else self.model['name']

  def build(self, dtype, **overrides):
    if isinstance(self.model, tuple):
      return self.model[1](dtype)
    return models.get_model(self.model, dtype=dtype, **overrides)


def _tiny_cnn(dtype, use_batchnorm=False):
  """A headless CNN encoder for the modules built around one."""
  return cnn.Model(features=(16,), dense_features=(16,), use_batchnorm=use_batchnorm,
                   num_classes=None, dtype=dtype)


VARIANTS = {
    'cnn': Variant(dict(name='cnn', features=(16, 16), dense_features=(16,),
                        dropout_rate=0.5, num_classes=5), (3, 8, 8, 1)),
    'cnn_batchnorm': Variant(dict(name='cnn', features=(16, 16), dense_features=(),
                                  use_batchnorm=True, num_classes=5), (3, 8, 8, 2)),
    # 8x8 reaches the stages as 2x2 maps: stage 1 keeps the identity shortcut, stage 2
    # strides to 1x1 through the projection, stages 3 and 4 (16 and 32 filters) stride
    # on 1x1 maps, whose batch statistics still average the 4 examples.
    'resnet18': Variant(dict(name='resnet', depth=18, num_filters=4, num_classes=5),
                        (4, 8, 8, 3)),
    'cifar_resnet8': Variant(dict(name='cifar_resnet', depth=8, num_filters=16,
                                  num_classes=5), (3, 8, 8, 3)),
    'vae': Variant(dict(name='autoencoder', image_shape=(8, 8, 1), features=(4, 8),
                        latent_dim=3, dense_features=(16,), variational=True),
                   (2, 8, 8, 1), method=_vae_sample, train_mode=False),
    'dcgan_generator': Variant({**dcgan.TINY, 'image_shape': (8, 8, 1), 'num_classes': 4},
                               (3, dcgan.TINY['latent_dim']), _same_for_every_example(2),
                               method='generate', params_scale=3.0),
    # D's logit l as a two-class classifier: softmax([l, -l]) = (sigmoid(2l), ...).
    'dcgan_discriminator': Variant(
        {**dcgan.TINY, 'image_shape': (8, 8, 1), 'num_classes': 4}, (3, 8, 8, 1),
        _same_for_every_example(2), method='discriminate',
        to_logits=lambda logits: jnp.stack([logits, -logits], axis=-1), params_scale=3.0),
    # Every kind of block (residual, attention, down, up) once: compiling is what costs.
    # The middle's attention is the one attention block (4x4 halved to 2x2: four tokens).
    # Dropout, its only training-mode difference, is the CNN's case above.
    'unet': Variant(dict(name='unet', channels=8, channel_multipliers=(1, 2),
                         num_res_blocks=0, attention_resolutions=(), num_classes=3),
                    (2, 4, 4, 1), lambda x: (jnp.full(x.shape[0], 437),
                                             jnp.full(x.shape[0], 1)), train_mode=False),
    # The text-conditioned U-Net: a padded caption, cross-attended in the middle block.
    'text_unet': Variant(dict(name='text_unet', vocab_size=7, text_len=5, text_width=8,
                              text_depth=1, text_heads=2,
                              unet=dict(channels=8, channel_multipliers=(1, 2),
                                        num_res_blocks=0, attention_resolutions=())),
                         (2, 4, 4, 1), lambda x: (jnp.full(x.shape[0], 437),
                                                  jnp.tile(jnp.array([[1, 4, 5, 2, 0]]),
                                                           (x.shape[0], 1))),
                         train_mode=False),
    # SimCLR's encoder and projection head (with BatchNorm in both): z = g(f(x)).
    'simclr': Variant(('self_supervised', lambda dtype: self_supervised.EncoderWithHead(
        encoder=_tiny_cnn(dtype, use_batchnorm=True),
        head=self_supervised.ProjectionHead(features=8, use_batchnorm=True, dtype=dtype))),
        (3, 8, 8, 1), to_logits=lambda out: out[1]),
    # CPC on a 2x2 grid: z and the predictions, so the encoder, the context network and
    # W_1 all count.
    'cpc': Variant(('cpc', lambda dtype: cpc.CPC(
        encoder=_tiny_cnn(dtype), patch_size=8, patch_stride=4, context_features=16,
        context_layers=1, kernel_size=3, prediction_steps=1, dtype=dtype)),
        (2, 12, 12, 1), to_logits=lambda out: jnp.concatenate(
            [out[0].reshape(out[0].shape[0], -1),
             jnp.swapaxes(out[1], 0, 1).reshape(out[1].shape[1], -1)], axis=-1),
        train_mode=False),
    # Mean-pooled patch tokens; dropout on the tokens, the residual branches and the
    # attention weights is the training-mode difference.
    'vit': Variant(dict(name='vit', variant=None, width=16, depth=1, num_heads=2,
                        patch_size=4, pool='gap', dropout_rate=0.1,
                        attention_dropout_rate=0.1, num_classes=5), (2, 8, 8, 1)),
    # The shared encoder under a causal mask, as a decoder uses it.
    'transformer': Variant(('transformer', lambda dtype: transformer.Encoder(
        num_layers=1, num_heads=2, mlp_dim=16, dtype=dtype)), (2, 4, 16),
        lambda x: (jnp.tril(jnp.ones((x.shape[1],) * 2, bool)),), train_mode=False),
    # VQA with an LSTM question (padded) attending over the CNN's grid; the gradient is
    # w.r.t. the image, the question a fixed conditioning input.
    'vqa': Variant(dict(name='vqa', vocab_size=9, num_answers=5, embed_dim=4, hidden_dim=16,
                        num_heads=2, classifier_features=(), fusion='attention',
                        image_encoder=dict(name='cnn', features=(16,), dense_features=())),
                   (2, 8, 8, 1), lambda x: (jnp.tile(jnp.array([[1, 5, 7, 2, 0]]),
                                                     (x.shape[0], 1)),),
                   train_mode=False),
    # The soft-attention captioner (an LSTM scanned over the words, attending over the
    # CNN's grid) on fixed words; the gradient is w.r.t. the image.
    'captioner': Variant(dict(name='captioner', decoder='attention', vocab_size=6, max_len=3,
                              width=8, encoder=dict(name='cnn', features=(16,),
                                                    dense_features=())),
                         (2, 8, 8, 1), lambda x: (jnp.tile(jnp.array([[1, 4]]),
                                                           (x.shape[0], 1)),),
                         train_mode=False),
    # R(2+1)D: both convolutions of the factorisation, with BatchNorm between them.
    'video_resnet': Variant(dict(name='video_resnet', block='2plus1d', stage_sizes=(1,),
                                 features=(16,), stem_features=8, stem_kernel=(3, 3, 3),
                                 stem_strides=(1, 1, 1), strides=((2, 2, 2),),
                                 num_classes=5), (2, 4, 4, 4, 1)),
    # Spatial then temporal attention over 2 x 2 x 2 tubelets.
    'vivit': Variant(dict(name='vivit', width=16, spatial_depth=1, temporal_depth=1,
                          num_heads=2, patch_size=2, tubelet_frames=2, num_classes=5),
                     (2, 4, 4, 4, 1), train_mode=False),
    'vqvae': Variant(dict(name='vqvae', features=16, residual_blocks=1, downsample_steps=1,
                          num_codes=4, code_dim=4, channels=1), (2, 4, 4, 1),
                     method=_vqvae_autoencode, train_mode=False),
    'dalle': Variant(dict(name='dalle', text_vocab_size=5, text_len=2, num_image_codes=3,
                          image_tokens=2, width=16, depth=1, heads=2, mlp_dim=16,
                          dropout=0.1), (2, 4, 16), method='logits_from_embeddings',
                     to_logits=_dalle_logits),
    # With the options OpenAI's weights need (QuickGELU, LayerNorm epsilon 1e-5, ln_pre).
    'clip': Variant(dict(name='clip', vocab_size=7, max_len=4, text_width=8, text_depth=1,
                         text_heads=2, embed_dim=4, text_mlp_activation='quick_gelu',
                         text_layer_norm_epsilon=1e-5,
                         image=dict(name='vit', variant=None, patch_size=2, width=8,
                                    depth=1, num_heads=2, mlp_dim=16, pool='gap',
                                    pre_norm=True, patch_bias=False, layer_norm_epsilon=1e-5,
                                    mlp_activation='quick_gelu')),
                    (2, 4, 4, 1), lambda x: (jnp.tile(jnp.array([[1, 4, 5, 2]]),
                                                      (x.shape[0], 1)),),
                    to_logits=_clip_logits, train_mode=False),
    # The dense heads' outputs side by side; eval mode only, to keep the suite short.
    'fcos': Variant(dict(name='fcos', num_classes=3, depth=18, num_filters=2, stem='cifar',
                         levels=('stage3', 'stage4'), fpn_features=4, head_convs=1,
                         num_groups=2, regression='exp', mask_features=2,
                         mask_branch_convs=1, mask_head_channels=2), (2, 16, 16, 1),
                    to_logits=_dense_detector_logits, train_mode=False),
    'segmentation': Variant(dict(name='segmentation', num_classes=3, arch='unet',
                                 features=(4, 8)), (2, 8, 8, 1),
                            to_logits=lambda out: out.reshape(out.shape[0], -1),
                            train_mode=False),
    'detr': Variant(dict(name='detr', num_classes=3, num_queries=3, hidden_dim=16, num_heads=2,
                         num_encoder_layers=1, num_decoder_layers=2, mlp_dim=16,
                         dropout_rate=0.1, backbone=dict(name='cnn', features=(16,),
                                                         dense_features=(),
                                                         use_batchnorm=True)),
                    (2, 8, 8, 1), to_logits=_detr_logits, train_mode=False),
}
MODES = [pytest.param(name, train, id=f'{name}-{"train" if train else "eval"}')
         for name, variant in VARIANTS.items()
         for train in ((False, True) if variant.train_mode else (False,))]
EPS = 1e-6  # central differences in float64: O(EPS^2) error, no ReLU kink crossed


def random(shape, seed, dtype=jnp.float64):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def build(name: str, dtype=jnp.float64, **overrides):
  """The variant's model, variables and input, in `dtype`."""
  variant = VARIANTS[name]
  model = variant.build(dtype, **overrides)
  x = random(variant.input_shape, 0, dtype)
  variables = jit(functools.partial(model.init, method=variant.method))(
      jax.random.key(0), x, *variant.extra_args(x))
  # Parameters away from their initial values (BatchNorm scales of one, biases of
  # zero), so that no term of the derivatives vanishes by symmetry.
  params = jax.tree.map(
      lambda p: (variant.params_scale * p * (1 + 0.1 * random(p.shape, p.size, dtype))
                 + 0.01 * random(p.shape, 1, dtype)
                 ).astype(dtype), variables['params'])
  return model, {**variables, 'params': params}, x


def forward(variant: Variant, model, variables, x, train: bool):
  """The variant's outputs [N, K] (flattened per example) and its updated state."""
  apply = functools.partial(model.apply, variables, x, *variant.extra_args(x),
                            method=variant.method, train=train)
  if train:
    out, state = apply(mutable=['batch_stats'], rngs={'dropout': jax.random.key(1)})
  else:
    out, state = apply(), {}
  logits = variant.to_logits(out)
  return logits.reshape(logits.shape[0], -1), state


def loss_fn(model, variables, train: bool, variant: Variant):
  """f(params, x): the mean softmax cross-entropy against a fixed target."""
  def f(params, x):
    logits, _ = forward(variant, model, {**variables, 'params': params}, x, train)
    # The same soft target for every example, so that a batch of one is an example.
    target = jax.nn.softmax(jnp.arange(logits.shape[-1], dtype=logits.dtype))
    return -jnp.mean(jnp.sum(target * jax.nn.log_softmax(logits), axis=-1))
  return f


@dataclasses.dataclass(frozen=True)
class Case:
  """A variant in one mode, in float64, with f and its gradient compiled once for the
  tests that share them."""
  params: Any
  x: jax.Array
  f: Any  # f(params, x), not compiled
  value: Any  # jit(f)
  grad_x: Any  # jit(grad of f w.r.t. x)


@functools.cache
def case(name: str, train: bool) -> Case:
  with jax.enable_x64(True):
    model, variables, x = build(name)
    f = loss_fn(model, variables, train, VARIANTS[name])
    return Case(variables['params'], x, f, jit(f), jit(jax.grad(f, argnums=1)))


def central_difference(fn, x, direction, eps=EPS):
  """(fn(x + eps d) - fn(x - eps d)) / (2 eps), for arrays or trees of them."""
  shifted = lambda sign: jax.tree.map(lambda a, d: a + sign * eps * d, x, direction)
  return jax.tree.map(lambda a, b: (a - b) / (2 * eps), fn(shifted(1)), fn(shifted(-1)))


def assert_close(actual, expected, rtol=1e-5):
  """Equal up to rtol of the largest magnitude (finite differences lose digits)."""
  scale = float(np.max(np.abs(expected)))
  assert scale > 0, 'a vanishing derivative checks nothing'
  np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * scale)


def tree_vdot(a, b):
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


@pytest.mark.usefixtures('x64')
@pytest.mark.parametrize('name, train', MODES)
def test_grad_and_jvp_match_finite_differences(name, train):
  c = case(name, train)
  v = random(c.x.shape, 1)
  grad = c.grad_x(c.params, c.x)
  value, tangent = jit(lambda p, x, v: jax.jvp(lambda x: c.f(p, x), (x,), (v,)))(
      c.params, c.x, v)
  expected = central_difference(lambda x: c.value(c.params, x), c.x, v)
  assert_close(jnp.vdot(grad, v), expected)
  assert_close(tangent, expected)
  np.testing.assert_allclose(value, c.value(c.params, c.x), rtol=1e-12)


@pytest.mark.usefixtures('x64')
@pytest.mark.parametrize('name', VARIANTS)
def test_vmap_of_per_example_grads(name):
  # In eval mode the examples are independent: the per-example gradients are the
  # gradient of the summed per-example losses, i.e. the batch's times its size.
  c = case(name, False)
  one = lambda p, x: c.f(p, x[None])
  per_example = jit(jax.vmap(jax.grad(one, argnums=1), in_axes=(None, 0)))(c.params, c.x)
  chex.assert_shape(per_example, c.x.shape)
  assert_close(per_example, c.x.shape[0] * c.grad_x(c.params, c.x), rtol=1e-10)


@pytest.mark.usefixtures('x64')
@pytest.mark.parametrize('name, train', MODES)
def test_hessian_and_hessian_vector_product(name, train):
  c = case(name, train)
  x = c.x
  pixels = np.array([0, 5, 17, x.size - 1])  # a few entries of the flattened input
  def on_pixels(p, z):
    return c.f(p, x.ravel().at[pixels].set(z).reshape(x.shape))
  hessian = jit(jax.hessian(on_pixels, argnums=1))(c.params, x.ravel()[pixels])
  chex.assert_shape(hessian, (len(pixels),) * 2)
  assert_close(hessian, hessian.T, rtol=1e-10)
  grad_on_pixels = lambda x: c.grad_x(c.params, x).ravel()[pixels]
  for j, pixel in enumerate(pixels):
    direction = jnp.zeros(x.size).at[pixel].set(1.0).reshape(x.shape)
    assert_close(hessian[:, j], central_difference(grad_on_pixels, x, direction))

  # Forward-over-reverse on the whole input, against differences of the gradient,
  # and against the Hessian above for a direction on those pixels only.
  hvp = jit(lambda p, x, v: jax.jvp(lambda x: jax.grad(c.f, argnums=1)(p, x), (x,),
                                    (v,))[1])
  v = random(x.shape, 1)
  assert_close(hvp(c.params, x, v),
               central_difference(lambda x: c.grad_x(c.params, x), x, v))
  v_pixels = jnp.zeros(x.size).at[pixels].set(random(len(pixels), 2)).reshape(x.shape)
  assert_close(hvp(c.params, x, v_pixels).ravel()[pixels],
               hessian @ v_pixels.ravel()[pixels], rtol=1e-10)


@pytest.mark.usefixtures('x64')
@pytest.mark.parametrize('name, train', MODES)
def test_grad_of_a_gradient_penalty(name, train):
  c = case(name, train)
  def penalty(params):
    return jnp.sum(jax.grad(c.f, argnums=1)(params, c.x) ** 2)
  grads = jit(jax.grad(penalty))(c.params)
  chex.assert_trees_all_equal_shapes(grads, c.params)
  u = jax.tree.map(lambda p: random(p.shape, p.size + 3), c.params)
  # Reverse over reverse against forward over reverse: the same number.
  tangent = jit(lambda p, u: jax.jvp(penalty, (p,), (u,))[1])(c.params, u)
  assert_close(tree_vdot(grads, u), tangent, rtol=1e-10)
  # The penalty jumps where a ReLU of the network switches, so the finite difference
  # takes a step small enough to cross none.
  expected = central_difference(
      lambda params: jnp.sum(c.grad_x(params, c.x) ** 2), c.params, u, eps=1e-9)
  assert_close(tree_vdot(grads, u), expected, rtol=1e-4)


def _has_cpu_kernels(name: str) -> bool:
  family = VARIANTS[name].family
  return hasattr(importlib.import_module(f'vision_jax.models.{family}'), 'cpu_kernel_layers')


def test_every_model_family_is_in_the_contract():
  families = {m.name for m in pkgutil.iter_modules(models.__path__)}
  assert families - {v.family for v in VARIANTS.values()} == set()


@pytest.mark.parametrize('name', [name for name in VARIANTS if _has_cpu_kernels(name)])
def test_cpu_kernels_compute_what_flax_layers_compute(name):
  from vision_jax.kernels import library  # pylint: disable=g-import-not-at-top
  if jax.default_backend() != 'cpu' or not library.enabled():
    pytest.skip('the CPU kernels are not available here (no C++ compiler?)')
  variant = VARIANTS[name]
  model, variables, x = build(name, dtype=jnp.float32)
  kernel_model = models.get_model(variant.model, dtype=jnp.float32, cpu_kernels=True)
  assert kernel_model.conv is not model.conv
  for train in (False, True):
    apply_k = jit(functools.partial(forward, variant, kernel_model, train=train))
    lowered = apply_k.lower(variables, x).as_text()
    assert 'vision_jax_conv_forward' in lowered  # not vacuous: the kernels ran
    logits, stats = jit(functools.partial(forward, variant, model, train=train))(variables, x)
    logits_k, stats_k = apply_k(variables, x)
    assert_close(logits_k, logits, rtol=1e-4)
    chex.assert_trees_all_close(stats_k, stats, rtol=1e-4, atol=1e-5)
  # And their training gradients (reverse mode, which their custom_vjps provide).
  f = loss_fn(model, variables, True, variant)
  f_k = loss_fn(kernel_model, variables, True, variant)
  grads = jit(jax.grad(f))(variables['params'], x)
  grads_k = jit(jax.grad(f_k))(variables['params'], x)
  for g_k, g in zip(jax.tree.leaves(grads_k), jax.tree.leaves(grads)):
    assert_close(g_k, g, rtol=1e-3)
