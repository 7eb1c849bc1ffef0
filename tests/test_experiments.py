"""The classic-lecture experiments: their local modes train end to end, their recipes
say what their docstrings say, and the benchmark runs on them."""

import os
import time

import numpy as np
import pytest

from vision_jax import benchmark, config_lib, optim, summary, train
from vision_jax.data import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(REPO, 'experiments/classification')
CNN_MNIST = os.path.join(EXPERIMENTS, 'cnn_mnist.py')
RESNET_CIFAR10 = os.path.join(EXPERIMENTS, 'resnet_cifar10.py')
RESNET_IMAGENET = os.path.join(EXPERIMENTS, 'resnet_imagenet.py')


# Figures of a few images: the evaluation's metrics are what is checked.
FEW_FIGURE_IMAGES = {'evals.eval.num_figure_images': '4'}


@pytest.mark.parametrize('spec, num_eval_examples, overrides', [
    (CNN_MNIST + ':local', 360, {}),  # digits' test split
    (RESNET_CIFAR10 + ':local', 256, {}),  # fake_images/cifar10's test split
    # fake_images/imagenet2012's validation split; the ResNet-18 at half its local width
    # and two steps (its step at 64x64 is the slowest of the three to compile and run).
    (RESNET_IMAGENET + ':local', 128, {'model.num_filters': '4', 'total_steps': '2',
                                       'checkpoint_every_steps': '2'}),
])
def test_local_mode_trains_and_evaluates(tmp_path, data_dir, spec, num_eval_examples,
                                         overrides):
  config = config_lib.load_config(spec)
  config_lib.apply_overrides(config, {'data.data_dir': data_dir, **FEW_FIGURE_IMAGES,
                                      **overrides})
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results['eval/num_examples'] == num_eval_examples
  assert np.isfinite(results['eval/loss'])
  assert 'eval/top5_accuracy' in results


@pytest.mark.parametrize('arg', ['', ':local'])
@pytest.mark.parametrize('spec', [CNN_MNIST, RESNET_CIFAR10, RESNET_IMAGENET])
def test_configured_input_shape_matches_the_preprocessing(data_dir, spec, arg):
  # The summary and the benchmark trust data.input_shape; the pp strings must agree.
  # The full recipes' pp runs on the local stand-in datasets, which have the same
  # features.
  config = config_lib.load_config(spec + arg)
  name = config_lib.load_config(spec + ':local').data.name
  builder = pipeline.get_builder(name, data_dir)
  for pp, split in ((config.data.pp_train, config.data.train_split),
                    (config.evals.eval.pp, config.evals.eval.data.split)):
    batch = next(iter(pipeline.eval_batches(builder, split, batch_size=2, pp=pp)))
    assert batch['image'].shape[1:] == tuple(config.data.input_shape)
  assert pipeline.dataset_info(builder, name).num_classes == config.data.num_classes


@pytest.mark.parametrize('depth', [20, 32, 44, 56, 110])
def test_cifar_recipe_is_the_papers(depth):
  config = config_lib.load_config(f'{RESNET_CIFAR10}:depth={depth}')
  assert config.model.depth == depth
  assert (config.batch_size, config.total_steps) == (128, 64_000)
  schedule, _ = optim.from_config(config, total_steps=64_000, steps_per_epoch=390)
  lrs = [float(schedule(s)) for s in (1_000, 31_999, 32_000, 47_999, 48_000, 63_999)]
  np.testing.assert_allclose(lrs, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-5)
  assert 'random_crop(32, pad=4)|flip_lr' in config.data.pp_train


def test_imagenet_recipe_scales_lr_warms_up_and_decays():
  config = config_lib.load_config(f'{RESNET_IMAGENET}:depth=101')
  assert config.model.depth == 101 and config.batch_size == 1024
  steps_per_epoch = 1_281_167 // 1024
  total = config_lib.steps(config, 'total', steps_per_epoch)
  assert total == 90 * steps_per_epoch
  schedule, _ = optim.from_config(config, total_steps=total, steps_per_epoch=steps_per_epoch)
  warmup = 5 * steps_per_epoch
  assert float(schedule(0)) == 0.0
  assert float(schedule(warmup)) == pytest.approx(0.4)  # 0.1 per 256 images
  assert float(schedule(total)) == pytest.approx(0.0, abs=1e-6)
  assert config.evals.eval.data.split == 'validation'


@pytest.mark.parametrize('spec, error', [
    (RESNET_CIFAR10 + ':depth=18', 'depth must be one of'),
    (RESNET_IMAGENET + ':depth=20', 'depth must be one of'),
    (CNN_MNIST + ':lcoal', 'unknown arguments'),
    (os.path.join(EXPERIMENTS, 'cnn_scenes.py') + ':lcoal', 'unknown arguments'),
])
def test_bad_arguments_are_named(spec, error):
  with pytest.raises(config_lib.ConfigError, match=error):
    config_lib.load_config(spec)


def test_benchmark_runs_the_trainers_step(capsys):
  # Synthetic batches: no dataset is read.
  code = benchmark.main(['--config', CNN_MNIST + ':local', '--steps', '2', '--warmup', '1',
                         '--batch_size', '16', '--cpu_kernels', '--config.data.name=no_such_dataset'])
  assert code == 0
  out = capsys.readouterr().out
  assert 'batch 16 of (28, 28, 1)' in out
  assert 'ex/s' in out and 'ms/step' in out and 'GFLOP/s' in out
  assert out.count('ms/step') == 2 and 'jax / jax-kernels speed' in out
  # FLOPs are counted on XLA's own convolutions, which XLA can see into.
  gflop = float(out.split(' GFLOP per step')[0].rsplit(' ', 1)[-1])
  assert gflop > 0.01


def test_benchmark_steps_take_turns_after_untimed_steps():
  calls = []
  timings = benchmark.time_steps({'a': lambda: calls.append('a'),
                                  'b': lambda: (calls.append('b'), time.sleep(0.002))},
                                 steps=12, warmup=1, block=10, settle=3)
  # Warm-up, then turns of 3 untimed and up to 10 timed steps until 12 are timed.
  assert ''.join(calls) == 'ab' + 'a' * 13 + 'b' * 13 + 'a' * 5 + 'b' * 5
  assert set(timings) == {'a', 'b'}
  assert 0 < timings['a']['ms_per_step'] < timings['b']['ms_per_step']
  assert timings['b']['min_ms_per_step'] >= 2.0


@pytest.mark.parametrize('spec', [CNN_MNIST, RESNET_CIFAR10, RESNET_IMAGENET + ':depth=18'])
def test_torch_twins_have_the_same_parameters(spec):
  pytest.importorskip('torch')
  from vision_jax import benchmark_torch  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(spec)
  model, input_shape, init = summary.build_model(config)
  rows, _ = summary.layers(model, input_shape, init, flops=False, max_depth=0)
  twin = benchmark_torch.build_model(
      config.model.name, {k: v for k, v in config.model.items() if k != 'name'},
      input_shape, config.data.num_classes)
  assert sum(p.numel() for p in twin.parameters()) == rows[0].params
