"""The Vision Transformer experiments: their local modes train end to end, the ImageNet
recipe's preprocessing makes 224x224 inputs of any JPEG, and its variants are the
papers' ViTs."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_jax import config_lib, optim, summary, train
from vision_jax.data import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(REPO, 'experiments/classification')
VIT_IMAGENET = os.path.join(EXPERIMENTS, 'vit_imagenet.py')
VIT_SCENES = os.path.join(EXPERIMENTS, 'vit_scenes.py')


def test_imagenet_local_mode_trains_and_evaluates(tmp_path, data_dir):
  config = config_lib.load_config(VIT_IMAGENET + ':local')
  config_lib.apply_overrides(config, {'data.data_dir': data_dir})
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results['eval/num_examples'] == 128  # fake_images/imagenet2012's validation split
  assert np.isfinite(results['eval/loss'])
  assert 'eval/top5_accuracy' in results


def test_scenes_local_mode_trains_and_evaluates(tmp_path, monkeypatch):
  from vision_jax.data import scenes  # pylint: disable=g-import-not-at-top
  # The real `single` config, shrunk so the test prepares it in seconds; its own data
  # dir, so no other test reads the shrunk dataset.
  tiny = scenes.ScenesConfig(name='single', max_objects=1, num_train=128, num_validation=16,
                             num_test=48)
  monkeypatch.setitem(scenes.Scenes.builder_configs, 'single', tiny)  # TFDS memoizes it.
  config = config_lib.load_config(VIT_SCENES + ':local')
  config_lib.apply_overrides(config, {'data.data_dir': str(tmp_path / 'data')})
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['eval/num_examples'] == 48
  assert np.isfinite(results['eval/loss'])
  assert os.path.isfile(tmp_path / 'run' / 'eval' / 'predictions.png')


def test_scenes_recipe_keeps_the_label_and_fits_the_model():
  config = config_lib.load_config(VIT_SCENES)
  # Colour augmentation would change the class; a vertical flip would turn triangles.
  for op in ('color_jitter', 'random_grayscale', 'flip_ud', 'random_resized_crop'):
    assert op not in config.data.pp_train
  assert 'flip_lr' in config.data.pp_train and 'random_crop(32' in config.data.pp_train
  model, input_shape, init = summary.build_model(config)
  assert input_shape == (32, 32, 3)
  variables = jax.eval_shape(init, jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
  patch = config.model.patch_size
  assert variables['params']['embedding']['kernel'].shape == (patch, patch, 3,
                                                              config.model.width)
  assert variables['params']['head']['kernel'].shape == (config.model.width, 40)
  assert model.sizes()['depth'] == config.model.depth


def _vit_parameters(width, depth, mlp_dim, patch, tokens, representation, classes):
  """The parameter count of a class-token ViT, term by term."""
  embedding = patch * patch * 3 * width + width
  layer_norm = 2 * width
  block = (2 * layer_norm + 4 * (width * width + width)  # LayerNorms, q/k/v/out
           + width * mlp_dim + mlp_dim + mlp_dim * width + width)  # MLP
  return (embedding + width + (tokens + 1) * width  # class token, position embeddings
          + depth * block + layer_norm
          + width * representation + representation
          + representation * classes + classes)


@pytest.mark.parametrize('variant, width, depth, heads', [
    ('Ti/16', 192, 12, 3),
    ('S/16', 384, 12, 6),
    ('B/16', 768, 12, 12),
])
def test_variants_are_the_papers_vits(variant, width, depth, heads):
  config = config_lib.load_config(f'{VIT_IMAGENET}:variant={variant}')
  model, input_shape, init = summary.build_model(config)
  assert input_shape == (224, 224, 3)
  assert model.sizes() == dict(width=width, depth=depth, mlp_dim=4 * width,
                               num_heads=heads, patch_size=(16, 16))
  # Shapes only: B/16's 87M parameters are never initialised.
  variables = jax.eval_shape(init, jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
  params = variables['params']
  assert params['embedding']['kernel'].shape == (16, 16, 3, width)
  assert params['pos_embedding'].shape == (1, 14 * 14 + 1, width)
  blocks = [name for name in params['Transformer'] if name.startswith('encoderblock_')]
  assert len(blocks) == depth
  query = params['Transformer']['encoderblock_0']['MultiHeadDotProductAttention_0']['query']
  assert query['kernel'].shape == (width, heads, width // heads)
  count = sum(x.size for x in jax.tree.leaves(params))
  assert count == _vit_parameters(width, depth, 4 * width, 16, 14 * 14, width, 1000)


def test_bad_variant_is_a_one_line_error_naming_the_choices():
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.load_config(f'{VIT_IMAGENET}:variant=L/16')
  message = str(error.value)
  assert '\n' not in message
  assert all(v in message for v in ('Ti/16', 'S/16', 'B/16', "'L/16'"))


def test_imagenet_recipe_warms_up_and_decays():
  config = config_lib.load_config(VIT_IMAGENET)
  assert (config.batch_size, config.total_epochs) == (1024, 300)
  assert config.compute_dtype == 'bfloat16' and config.optimizer.name == 'adamw'
  steps_per_epoch = 1_281_167 // 1024
  total = config_lib.steps(config, 'total', steps_per_epoch)
  schedule, _ = optim.from_config(config, total_steps=total, steps_per_epoch=steps_per_epoch)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5_000)) == pytest.approx(5e-4)
  assert float(schedule(10_000)) == pytest.approx(1e-3)  # 1e-3 per 1024 images
  assert float(schedule(total)) == pytest.approx(0.0, abs=1e-9)
  config_lib.apply_overrides(config, {'batch_size': '4096'})
  schedule, _ = optim.from_config(config, total_steps=total, steps_per_epoch=steps_per_epoch)
  assert float(schedule(10_000)) == pytest.approx(4e-3)


def test_imagenet_preprocessing_makes_224_inputs_of_any_jpeg(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  # Sizes and modes of real ImageNet files: landscape, portrait, small, grey-scale.
  files_by_split = {'train': [((375, 500), 'RGB'), ((500, 333), 'RGB'), ((120, 90), 'L')],
                    'validation': [((300, 400), 'RGB'), ((256, 256), 'L')]}
  for split, files in files_by_split.items():
    for i, ((height, width), mode) in enumerate(files):
      folder = tmp_path / 'images' / split / f'class{i % 2}'
      os.makedirs(folder, exist_ok=True)
      channels = 3 if mode == 'RGB' else 1
      pixels = rng.integers(0, 256, (height, width, channels), np.uint8).squeeze()
      Image.fromarray(pixels, mode).save(folder / f'{i}.JPEG', quality=90)
  config = config_lib.load_config(VIT_IMAGENET)
  builder = pipeline.get_builder(f'folder:{tmp_path / "images"}')
  for pp, split in ((config.data.pp_train, config.data.train_split),
                    (config.evals.eval.pp, config.evals.eval.data.split)):
    batch = next(iter(pipeline.eval_batches(builder, split, batch_size=8, pp=pp)))
    mask = batch[pipeline.MASK_KEY].astype(bool)
    images = batch['image'][mask]
    assert images.shape == (len(files_by_split[split]), 224, 224, 3)
    assert images.min() >= -1.0 and images.max() <= 1.0
