"""`python -m vision_jax.summary`: parameter counts, shapes and FLOPs without any data."""

import os

import pytest

from vision_jax import config_lib, summary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(REPO, 'experiments/classification')


def run(capsys, *args):
  # A missing dataset must not matter: only the config is read.
  code = summary.main([*args, '--config.data.name=no_such_dataset'])
  captured = capsys.readouterr()
  assert code == 0, captured.err
  return captured.out.strip().splitlines()


@pytest.mark.parametrize('spec, total', [
    ('resnet_imagenet.py:depth=50', '25,557,032'),  # torchvision's resnet50
    ('resnet_cifar10.py:depth=20', '269,722'),  # "0.27M" in He et al. (2015), table 6
])
def test_total_params(capsys, spec, total):
  lines = run(capsys, '--config', os.path.join(EXPERIMENTS, spec), '--no_flops',
              '--depth', '1')
  assert lines[-1] == f'total params: {total}'


def test_layer_rows_and_flops_match_closed_forms():
  config = config_lib.load_config(os.path.join(EXPERIMENTS, 'cnn_mnist.py'))
  rows, total_flops = summary.layers(*summary.build_model(config))
  by_name = {'/'.join(r.path): r for r in rows}
  assert by_name[''].output_shape == (1, 10)
  assert by_name['stage1_conv1'].output_shape == (1, 28, 28, 32)
  assert by_name['stage2_conv1'].output_shape == (1, 14, 14, 64)
  dense = by_name['dense1']
  assert dense.params == 7 * 7 * 64 * 256 + 256
  assert dense.flops == 2 * 7 * 7 * 64 * 256 + 256  # multiply-adds, then the bias
  # XLA counts the taps that land on the image, not on the zero padding: per axis,
  # a 5-tap window over 28 positions with 2 pixels of padding covers 28 * 5 - 6.
  taps = (28 * 5 - 6) ** 2
  assert by_name['stage1_conv1'].flops == 2 * taps * 1 * 32
  assert total_flops >= sum(r.flops for r in rows if len(r.path) == 1)


def test_clip_vit_b32_has_openais_parameter_count(capsys):
  # No vocabulary file and no class count are needed to build the model.
  lines = run(capsys, '--config', os.path.join(REPO, 'experiments/vision_language/clip_vit_b32.py'),
              '--no_flops', '--depth', '1')
  assert lines[-1] == 'total params: 151,277,313'


def test_depth_limits_rows_and_missing_fields_are_named(capsys):
  lines = run(capsys, '--config', os.path.join(EXPERIMENTS, 'resnet_cifar10.py:local'),
              '--depth', '0')
  assert sum('(Model)' in line for line in lines) == 1 and not any(
      'stage1_block1' in line for line in lines)
  assert lines[-2].startswith('forward FLOPs per example: ')
  code = summary.main(['--config', os.path.join(REPO, 'experiments/classification/cnn_digits.py')])
  assert code == 2
  assert 'data.input_shape and data.num_classes' in capsys.readouterr().err


@pytest.mark.parametrize('spec', ['gan_mnist.py:conditional', 'ddpm_mnist.py:conditional',
                                  'vae_mnist.py'])
def test_generative_models_as_their_methods_build_them(spec):
  config = config_lib.load_config(os.path.join(REPO, 'experiments/generative', spec))
  model, input_shape, init = summary.build_model(config)
  rows, _ = summary.layers(model, input_shape, init, flops=False, max_depth=2)
  by_name = {'/'.join(r.path): r for r in rows}
  if spec.startswith('gan'):  # both players; G projects [z, label embedding] to 7x7x64
    assert {'generator', 'discriminator'} <= set(by_name)
    assert by_name['generator/project'].params == (
        (model.latent_dim + model.label_features) * 7 * 7 * 64)
    assert by_name['generator'].output_shape == (1, 28, 28, 1)
  elif spec.startswith('ddpm'):  # eps_theta(x_t, t, label): the label table has a null row
    assert by_name[''].output_shape == (1, 28, 28, 1)
    assert by_name['label_embedding'].params == 11 * 4 * config.model.channels
  else:  # the encoder's mean and log-variance, the decoder's logits
    assert by_name['encoder'].output_shape == (1, 2 * config.model.latent_dim)
    assert by_name['decoder'].output_shape == (1, 28, 28, 1)
  assert by_name[''].params == sum(r.params for r in rows if len(r.path) == 1)


def test_simclr_counts_the_encoder_and_its_projection_head():
  """SimCLR's CIFAR-10 ResNet-18 (3x3 stem, headless: torchvision's 11,181,642 for 10
  classes, less the 7x7 stem's extra weights and the head) and its 512-128 projection."""
  config = config_lib.load_config(os.path.join(REPO, 'experiments/self_supervised',
                                               'simclr_cifar10.py'))
  model, input_shape, init = summary.build_model(config)
  rows, _ = summary.layers(model, input_shape, init, flops=False, max_depth=1)
  by_name = {'/'.join(r.path): r for r in rows}
  assert by_name['encoder'].params == 11_181_642 - 64 * 3 * 40 - (512 * 10 + 10)
  assert by_name['head'].params == 512 * 512 + 2 * 512 + 512 * 128 + 128
  assert by_name['head'].output_shape == (1, 128)
