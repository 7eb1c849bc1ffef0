"""Video ResNets: R3D's published size, (2+1)D's parameter budget, what each block sees."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_jax.models import video_resnet

jit = functools.partial(jax.jit, static_argnames=('train',))
TINY = dict(stage_sizes=(1, 1), features=(8, 16), stem_features=8, stem_kernel=(3, 3, 3),
            stem_strides=(1, 1, 1), strides=((1, 1, 1), (2, 2, 2)), num_classes=5)


def count(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


def params_of(module, shape):
  return jax.eval_shape(module.init, jax.random.key(0), jnp.zeros(shape))['params']


def test_r3d_18_has_torchvisions_parameters():
  model = video_resnet.Model(block='3d', num_classes=400)
  assert count(params_of(model, (1, 16, 112, 112, 3))) == 33_371_472  # torchvision r3d_18


@pytest.mark.parametrize('in_features, out_features', [(3, 64), (64, 64), (64, 128),
                                                        (256, 512), (16, 32)])
def test_a_factorised_convolution_has_the_parameters_of_the_3d_one(in_features, out_features):
  def kernels(block):
    conv = video_resnet.SpaceTimeConv(out_features, (3, 3, 3), block=block)
    params = params_of(conv, (1, 4, 8, 8, in_features))
    return count({k: v for k, v in params.items() if not k.endswith('_bn')})
  full, factorised = kernels('3d'), kernels('2plus1d')
  mid = video_resnet.midplanes(in_features, out_features, (3, 3, 3))
  # M_i rounds down: the factorised one falls short by less than one intermediate filter.
  assert 0 <= full - factorised < 9 * in_features + 3 * out_features
  assert factorised == mid * (9 * in_features + 3 * out_features)


def test_2plus1d_network_matches_the_3d_networks_size():
  full = count(params_of(video_resnet.Model(block='3d', **TINY), (1, 4, 8, 8, 3)))
  factorised = count(params_of(video_resnet.Model(block='2plus1d', **TINY), (1, 4, 8, 8, 3)))
  assert abs(factorised - full) / full < 0.02


@pytest.mark.parametrize('block, invariant', [('frame', True), ('3d', False),
                                              ('2plus1d', False)])
def test_only_the_single_frame_baseline_ignores_frame_order(block, invariant):
  model = video_resnet.Model(block=block, **TINY)
  clips = jax.random.normal(jax.random.key(1), (2, 4, 8, 8, 3))
  variables = model.init(jax.random.key(0), clips)
  shuffled = clips[:, np.array([2, 0, 3, 1])]
  apply = jit(model.apply)
  same = np.allclose(apply(variables, clips), apply(variables, shuffled), atol=1e-5)
  assert same == invariant
  if invariant:  # Batch statistics too: BatchNorm averages over frames alike.
    out, _ = model.apply(variables, clips, train=True, mutable=['batch_stats'])
    out_shuffled, _ = model.apply(variables, shuffled, train=True, mutable=['batch_stats'])
    np.testing.assert_allclose(out, out_shuffled, atol=1e-5)


def test_frame_logits_are_the_mean_of_per_frame_logits():
  model = video_resnet.Model(block='frame', **TINY)
  clips = jax.random.normal(jax.random.key(1), (2, 4, 8, 8, 3))
  variables = model.init(jax.random.key(0), clips)
  per_frame = jax.vmap(lambda frame: model.apply(variables, frame[:, None]), 1, 1)(clips)
  np.testing.assert_allclose(model.apply(variables, clips), per_frame.mean(1), atol=1e-5)


def test_feature_maps_and_strides():
  model = video_resnet.Model(block='3d', **TINY)
  maps = model.apply(model.init(jax.random.key(0), jnp.zeros((2, 4, 8, 8, 3))),
                     jnp.zeros((2, 4, 8, 8, 3)), method='feature_maps')
  assert maps['stage1'].shape == (2, 4, 8, 8, 8) and maps['stage2'].shape == (2, 2, 4, 4, 16)
  assert maps['pre_logits'].shape == (2, 16) and maps['logits'].shape == (2, 5)
  frame = video_resnet.Model(block='frame', **TINY)
  maps = frame.apply(frame.init(jax.random.key(0), jnp.zeros((2, 4, 8, 8, 3))),
                     jnp.zeros((2, 4, 8, 8, 3)), method='feature_maps')
  assert maps['stage2'].shape == (2, 4, 4, 4, 16)  # time is never strided


def test_bad_inputs_are_named():
  with pytest.raises(ValueError, match='block must be one of'):
    video_resnet.Model(block='4d', **TINY).init(jax.random.key(0), jnp.zeros((1, 4, 8, 8, 3)))
  with pytest.raises(ValueError, match=r'clips \[B, T, H, W, C\]'):
    video_resnet.Model(**TINY).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
