"""`vision_jax.convert`: torchvision and open_clip weights give the outputs those libraries
gave, every tensor is used once, and what does not fit is named.

The reference outputs were computed by torchvision 0.29 and open_clip 3.3 on the weights
`convert_fixtures.weights` draws (`tests/fixtures/convert/`); the
full-size architectures are checked by their tensor lists alone.
"""

import importlib.util
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from safetensors import numpy as safetensors_numpy

from vision_jax import checkpointing, convert, models, parallel
from vision_jax.methods import base

pytestmark = pytest.mark.xdist_group('convert')

_spec = importlib.util.spec_from_file_location('convert_fixtures', os.path.join(
    os.path.dirname(__file__), 'fixtures', 'convert', 'convert_fixtures.py'))
convert_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(convert_fixtures)


def _saved(tmp_path, name: str) -> tuple[dict, str]:
  """The fixture and its drawn weights written as a .safetensors file."""
  fixture = convert_fixtures.load(name)
  path = str(tmp_path / f'{name}.safetensors')
  safetensors_numpy.save_file(convert_fixtures.weights(fixture['tensors']), path)
  return fixture, path


def _variables(converted: convert.Converted) -> dict:
  return {'params': converted.variables['params'], **converted.variables['model_state']}


def _nhwc(fixture: dict) -> np.ndarray:
  return convert_fixtures.images(fixture['image_shape']).transpose(0, 2, 3, 1)


@pytest.mark.parametrize('name', ['resnet18', 'resnet50', 'vit_tiny'])
def test_torchvision_classifiers_give_torchvision_logits(tmp_path, name):
  fixture, path = _saved(tmp_path, name)
  arch = None if fixture['arch'] == 'custom' else fixture['arch']
  converted = convert.convert_file(path, 'torchvision', arch)
  logits = models.get_model(converted.model).apply(_variables(converted), _nhwc(fixture))
  np.testing.assert_allclose(logits, fixture['outputs']['logits'], atol=1e-4, rtol=0)
  assert converted.preprocessing['mean'] == convert.IMAGENET_MEAN


def test_open_clip_gives_open_clip_embeddings(tmp_path):
  fixture, path = _saved(tmp_path, 'clip_tiny')
  converted = convert.convert_file(path, 'open_clip', 'auto', quick_gelu=True)
  model, variables = models.get_model(converted.model), _variables(converted)
  tokens = convert_fixtures.tokens(*fixture['text_shape'], converted.model['vocab_size'])
  images = model.apply(variables, _nhwc(fixture), method='encode_image')
  texts = model.apply(variables, tokens, method='encode_text')
  np.testing.assert_allclose(images, fixture['outputs']['image_embeddings'], atol=1e-4, rtol=0)
  np.testing.assert_allclose(texts, fixture['outputs']['text_embeddings'], atol=1e-4, rtol=0)
  np.testing.assert_allclose(variables['params']['logit_scale'], np.log(1 / 0.07), rtol=1e-6)
  # The activation matters: with the exact GELU the text embeddings move.
  exact = convert.convert_file(path, 'open_clip', 'auto')
  moved = models.get_model(exact.model).apply(_variables(exact), tokens, method='encode_text')
  assert np.abs(moved - texts).max() > 1e-3


def _zeros(fixture: dict) -> dict:
  """The fixture's tensors as zeros, without the memory (the structure checks)."""
  return {name: np.broadcast_to(np.zeros((), dtype), shape)
          for name, shape, dtype in fixture['tensors']}


@pytest.mark.parametrize('arch, params', [
    ('resnet18', 11_689_512), ('resnet34', 21_797_672), ('resnet50', 25_557_032),
    ('resnet101', 44_549_160), ('resnet152', 60_192_808), ('vit_b_16', 86_567_656),
    ('vit_b_32', 88_224_232), ('vit_l_16', 304_326_632), ('ViT-B-32', 151_277_313)])
def test_every_tensor_of_the_full_size_models_is_used_once(arch, params):
  """The published parameter counts, and every source tensor placed (BatchNorm's
  running statistics into model_state)."""
  fixture = convert_fixtures.load(f'{arch}_tensors')
  converted = convert.convert_tensors(_zeros(fixture), fixture['source'], arch)
  count = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(converted.variables['params']))
  assert count == params
  stats = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(converted.variables['model_state']))
  source_count = sum(int(np.prod(shape)) for name, shape, _ in fixture['tensors']
                     if not name.endswith('num_batches_tracked'))
  assert count + stats == source_count
  # With the arch left to the tensors, the same model.
  assert convert.convert_tensors(_zeros(fixture)).model == converted.model


def test_a_mismatch_names_the_first_tensor_that_does_not_fit():
  tensors = _zeros(convert_fixtures.load('resnet18_tensors'))
  with pytest.raises(convert.ConversionError, match='tensor layer1.0.conv3.weight is missing'):
    convert.convert_tensors(tensors, 'torchvision', 'resnet50')
  extra = {**tensors, 'extra.weight': np.zeros((3, 3), np.float32)}
  with pytest.raises(convert.ConversionError,
                     match=r'1 tensors have no place in the model, the first extra.weight'):
    convert.convert_tensors(extra, 'torchvision', 'resnet18')
  wrong = {**tensors, 'layer2.0.conv1.weight': np.zeros((128, 32, 3, 3), np.float32)}
  with pytest.raises(convert.ConversionError, match=(
      r'tensor layer2.0.conv1.weight \[128, 32, 3, 3\] does not fit resnet18: '
      r'params/stage2_block1/conv1/kernel needs \[3, 3, 64, 128\]')):
    convert.convert_tensors(wrong, 'torchvision', 'resnet18')
  with pytest.raises(convert.ConversionError, match='none of the covered open_clip'):
    convert.convert_tensors(tensors, 'open_clip', 'auto')
  with pytest.raises(convert.ConversionError, match="unknown architecture 'resnet51'"):
    convert.convert_tensors(tensors, 'torchvision', 'resnet51')


def test_unreadable_files_are_one_line_errors(tmp_path):
  with pytest.raises(convert.ConversionError, match='weights file .*missing.pth does not exist'):
    convert.read_tensors(str(tmp_path / 'missing.pth'))
  damaged = tmp_path / 'damaged.safetensors'
  damaged.write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": 1')
  with pytest.raises(convert.ConversionError, match='not a readable .safetensors file'):
    convert.read_tensors(str(damaged))
  if importlib.util.find_spec('torch') is None:
    (tmp_path / 'weights.pth').write_bytes(b'not read')
    with pytest.raises(convert.ConversionError, match='needs PyTorch.*safetensors files need '
                       'no PyTorch'):
      convert.read_tensors(str(tmp_path / 'weights.pth'))


def _classifier_state(config: dict, num_classes: int, image_side: int):
  """A fresh classification state of `config` with a new head, and its sharding."""
  model = models.get_model(config, num_classes=num_classes)
  variables = dict(model.init(jax.random.key(3), np.zeros((1, image_side, image_side, 3))))
  params = variables.pop('params')
  state = base.TrainState(step=np.zeros([], np.int32), params=params, opt_state=(),
                          model_state=variables)
  sharding = jax.tree.map(lambda _: parallel.replicated(parallel.make_mesh(1)), state)
  return jax.device_put(state, sharding), sharding


def test_cli_output_and_the_weights_file_both_start_a_run_with_a_new_head(tmp_path):
  fixture, path = _saved(tmp_path, 'resnet18')
  out = str(tmp_path / 'resnet18_torchvision')
  result = subprocess.run(
      [sys.executable, '-m', 'vision_jax.convert', '--from', 'torchvision', '--arch',
       'resnet18', '--in', path, '--out', out], capture_output=True, text=True, check=False,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert result.returncode == 0, result.stderr
  assert 'resnet with 11,181,642 parameters' in result.stdout
  assert sorted(os.listdir(out)) == ['checkpoints', 'model.json']
  converted = convert.convert_file(path)

  for init_path in (out, path):
    state, sharding = _classifier_state(converted.model, 3, 64)
    init_from = ml_collections.ConfigDict({'path': init_path, 'step': None,
                                           'subtrees': ('params', 'model_state'),
                                           'exclude': ('params/head',)})
    started = checkpointing.initialize_from(init_from, state, sharding)
    np.testing.assert_array_equal(started.params['stage3_block2']['conv2']['kernel'],
                                  converted.variables['params']['stage3_block2']['conv2']['kernel'])
    np.testing.assert_array_equal(
        started.model_state['batch_stats']['bn_init']['var'],
        converted.variables['model_state']['batch_stats']['bn_init']['var'])
    np.testing.assert_array_equal(started.params['head']['kernel'], state.params['head']['kernel'])

  for arch, message in (('resnet50', 'layer1.0.conv3.weight is missing'),
                        ('resnet18', 'already holds a checkpoint; nothing was overwritten')):
    again = subprocess.run(
        [sys.executable, '-m', 'vision_jax.convert', '--from', 'torchvision', '--arch', arch,
         '--in', path, '--out', out], capture_output=True, text=True, check=False,
        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
    assert again.returncode == 1
    assert again.stderr.strip().count('\n') == 0 and message in again.stderr
  assert sorted(os.listdir(out)) == ['checkpoints', 'model.json']
  assert sorted(os.listdir(os.path.join(out, 'checkpoints'))) == ['0']


def test_finetune_pretrained_trains_from_the_converted_weights(tmp_path, data_dir):
  """The README's two commands: convert, then fine-tune with a new head."""
  from vision_jax import config_lib, train  # pylint: disable=g-import-not-at-top
  # torchvision's ResNet-18 layout at an eighth of its widths, so that it trains in seconds.
  fixture = convert_fixtures.load('resnet18')
  narrow = [[name, [d // 8 if d % 64 == 0 else d for d in shape], dtype]
            for name, shape, dtype in fixture['tensors']]
  path = str(tmp_path / 'narrow_resnet18.safetensors')
  safetensors_numpy.save_file(convert_fixtures.weights(narrow), path)
  out = str(tmp_path / 'resnet18_torchvision')
  convert.write(convert.convert_file(path, 'torchvision', 'resnet18'), out)
  config = config_lib.load_config(os.path.join(
      os.path.dirname(os.path.dirname(__file__)),
      f'experiments/classification/finetune_pretrained.py:init_from={out},local'))
  config_lib.apply_overrides(config, {'data.name': 'fake_images/cifar10',
                                      'data.data_dir': data_dir,
                                      'evals.eval.num_figure_images': '4'})
  assert config.data.pp_train.endswith(
      f'normalize({convert.IMAGENET_MEAN}, {convert.IMAGENET_STD})|keep("image", "label")')
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['eval/num_examples'] == 256 and np.isfinite(results['eval/loss'])
  tuned = checkpointing.read_latest(str(tmp_path / 'run'))
  pretrained = convert.convert_file(path).variables
  kernel = ('params', 'stage4_block2', 'conv2', 'kernel')
  start, end = pretrained, tuned
  for key in kernel:
    start, end = start[key], end[key]
  # Three small SGD steps from the pretrained kernel, not from a fresh initialisation.
  assert np.abs(end - start).max() < 0.1 * np.abs(start).max()
  assert tuned['params']['head']['kernel'].shape == (64, 10)


def test_the_clip_recipe_takes_converted_weights_with_their_activation(tmp_path):
  from vision_jax import config_lib  # pylint: disable=g-import-not-at-top
  _, path = _saved(tmp_path, 'clip_tiny')
  out = str(tmp_path / 'clip')
  convert.write(convert.convert_file(path, 'open_clip', 'auto', quick_gelu=True), out)
  recipe = os.path.join(os.path.dirname(os.path.dirname(__file__)),
                        'experiments/vision_language/clip_vit_b32.py')
  config = config_lib.load_config(f'{recipe}:pretrained={out}')
  assert config.init_from.path == out and config.init_from.subtrees == ('params',)
  assert config.model.text_mlp_activation == config.model.image.mlp_activation == 'quick_gelu'
  assert config.model.image.layer_norm_epsilon == 1e-5 and config.model.text_width == 128
  with pytest.raises(ValueError, match='has no model.json'):
    config_lib.load_config(f'{recipe}:pretrained={tmp_path}')
