"""Bernoulli Naive Bayes through the trainer: equal to scikit-learn, 8 devices equal 1."""

import os

import chex
import numpy as np
import orbax.checkpoint as ocp
import pytest
from sklearn.naive_bayes import BernoulliNB

from vision_jax import config_lib, train
from vision_jax.data import pipeline
from vision_jax.methods import base, naive_bayes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB_DIGITS = os.path.join(REPO, 'experiments/classification/nb_digits.py')
PP = 'decode|value_range(0, 1)'


def nb_config(data_dir, **overrides):
  config = config_lib.load_config(NB_DIGITS)
  config_lib.apply_overrides(config, {'data.data_dir': data_dir,
                                      **{k: str(v) for k, v in overrides.items()}})
  return config


def final_params(workdir):
  checkpoints = os.path.join(workdir, 'checkpoints')
  step = max(int(s) for s in os.listdir(checkpoints) if s.isdigit())
  # A CheckpointManager keeps its single item in the step's `default` folder.
  path = os.path.join(checkpoints, str(step), 'default')
  return ocp.StandardCheckpointer().restore(path)['params']


def split_arrays(data_dir, split):
  """The whole split as the pipeline gives it: [N, 8, 8, 1] floats in [0, 1], labels."""
  builder = pipeline.get_builder('digits', data_dir)
  size = pipeline.split_size(builder, split)
  batch = next(pipeline.eval_batches(builder, split, batch_size=size, pp=PP))
  return batch['image'], batch['label']


@pytest.mark.parametrize('smoothing', [1.0, 0.5])
def test_predictions_equal_scikit_learn(tmp_path, data_dir, smoothing):
  # batch_size 479 = 1437 / 3 on one device: every training example is counted once.
  config = nb_config(data_dir, **{'naive_bayes.smoothing': smoothing})
  results = train.train_and_evaluate(config, str(tmp_path), num_devices=1)
  train_images, train_labels = split_arrays(data_dir, 'train')
  test_images, test_labels = split_arrays(data_dir, 'test')
  reference = BernoulliNB(alpha=smoothing, binarize=0.5).fit(
      train_images.reshape(len(train_images), -1), train_labels)
  test_x = test_images.reshape(len(test_images), -1)

  params = final_params(tmp_path)
  np.testing.assert_array_equal(params['class_counts'], reference.class_count_)
  np.testing.assert_array_equal(params['pixel_counts'].reshape(10, -1), reference.feature_count_)
  method = naive_bayes.Method(config, pipeline.dataset_info(
      pipeline.get_builder('digits', data_dir), 'digits'), total_steps=3, steps_per_epoch=3)
  state = base.TrainState(step=None, params=params, opt_state=None, model_state={})
  scores = np.asarray(method.predict(state, {'image': test_images}))
  np.testing.assert_allclose(scores, reference.predict_joint_log_proba(test_x),
                             rtol=1e-6, atol=1e-4)
  np.testing.assert_array_equal(scores.argmax(-1), reference.predict(test_x))
  # The trainer's report goes through the unchanged classification evaluator.
  assert results['eval/accuracy'] == pytest.approx(reference.score(test_x, test_labels))
  assert results['naive_bayes/train_examples'] == 1437


def test_eight_devices_equal_one_device_and_figure(tmp_path, data_dir):
  config = nb_config(data_dir, batch_size=472)  # 8 x 59; 3 steps drop 21 examples.
  one = train.train_and_evaluate(config, str(tmp_path / 'one'), num_devices=1)
  eight = train.train_and_evaluate(config, str(tmp_path / 'eight'))
  assert one['naive_bayes/train_examples'] == eight['naive_bayes/train_examples'] == 3 * 472
  # Integer counts in float32 are exact whatever the reduction order.
  chex.assert_trees_all_equal(final_params(tmp_path / 'one'), final_params(tmp_path / 'eight'))
  assert one['eval/accuracy'] == eight['eval/accuracy']
  assert one['eval/loss'] == pytest.approx(eight['eval/loss'], rel=1e-6)
  figure = tmp_path / 'eight' / 'naive_bayes' / 'class_pixel_probabilities.png'
  assert figure.stat().st_size > 10_000
