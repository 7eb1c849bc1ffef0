"""VQA: the ablations read only what they say, padding changes nothing, the metrics count
each question once by its type, and the scenes experiment trains end to end."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from vision_jax import config_lib, train
from vision_jax.data import pipeline, scenes, scenes_reader
from vision_jax.evaluators import vqa as vqa_evaluator
from vision_jax.evaluators.vqa import vqa_accuracy
from vision_jax.models import vqa

# The module fixture trains a run: one xdist worker takes all of this file's tests,
# so that it trains once.
pytestmark = pytest.mark.xdist_group('test_vqa')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VQA_SCENES = os.path.join(REPO, 'experiments/vision_language/vqa_scenes.py')
TINY_ENCODER = dict(name='cnn', features=(4, 8), dense_features=())
# Two questions with bos (1) and eos (2), padded with 0.
TOKENS = jnp.array([[1, 5, 6, 7, 2, 0, 0, 0], [1, 8, 9, 2, 0, 0, 0, 0]])


def tiny_model(**fields):
  return vqa.Model(vocab_size=12, num_answers=5, image_encoder=TINY_ENCODER, embed_dim=8,
                   hidden_dim=8, num_heads=2, max_len=16, classifier_features=(8,),
                   **fields)


def images(seed):
  return jax.random.uniform(jax.random.key(seed), (2, 8, 8, 3))


def logits_fn(model):
  """`(image, tokens) -> logits` of `model` at its initial parameters, compiled once."""
  variables = jax.jit(model.init)(jax.random.key(0), images(0), TOKENS)
  return functools.partial(jax.jit(model.apply), variables)


# Each fusion with each question encoder once (compiling is what costs).
@pytest.mark.parametrize('fusion, encoder', [('attention', 'lstm'),
                                             ('product', 'transformer')])
def test_each_ablation_reads_only_its_input(fusion, encoder):
  model = lambda inputs: tiny_model(inputs=inputs, fusion=fusion, question_encoder=encoder)
  other_tokens = TOKENS.at[:, 1].set(10)
  blind = logits_fn(model('blind'))
  np.testing.assert_array_equal(blind(images(1), TOKENS), blind(images(2), TOKENS))
  assert 'image_encoder' not in jax.eval_shape(
      model('blind').init, jax.random.key(0), images(0), TOKENS)['params']
  image_only = logits_fn(model('image_only'))
  np.testing.assert_array_equal(image_only(images(1), TOKENS),
                                image_only(images(1), other_tokens))
  # Not vacuous: each reads what the other ignores, and the full model reads both.
  assert not np.allclose(blind(images(1), TOKENS), blind(images(1), other_tokens))
  assert not np.allclose(image_only(images(1), TOKENS), image_only(images(2), TOKENS))
  full = logits_fn(model('full'))
  base = full(images(1), TOKENS)
  assert not np.allclose(base, full(images(2), TOKENS))
  assert not np.allclose(base, full(images(1), other_tokens))


@pytest.mark.parametrize('encoder', vqa.QUESTION_ENCODERS)
def test_padding_does_not_change_the_answer(encoder):
  model = tiny_model(question_encoder=encoder, fusion='product')
  variables = model.init(jax.random.key(0), images(0), TOKENS)
  longer = jnp.pad(TOKENS, ((0, 0), (0, 5)))
  apply = jax.jit(model.apply)
  np.testing.assert_allclose(apply(variables, images(1), longer),
                             apply(variables, images(1), TOKENS), rtol=1e-5, atol=1e-6)
  # Not vacuous: a real token in place of the padding does change it.
  assert not np.allclose(apply(variables, images(1), TOKENS.at[:, 6].set(4)),
                         apply(variables, images(1), TOKENS))


def test_vqa_accuracy_on_hand_cases():
  ten = ['yes'] * 2 + ['no'] * 8
  assert vqa_accuracy('no', ten) == 1.0  # eight agree: capped at 1
  assert vqa_accuracy('yes', ten) == pytest.approx(2 / 3)
  assert vqa_accuracy('maybe', ten) == 0.0
  assert vqa_accuracy('two', ['two', 'two', 'three', '2']) == pytest.approx(2 / 3)
  assert vqa_accuracy(' Red', [b'red', 'red', 'RED ']) == 1.0  # normalised, bytes too
  # One answer, as in `scenes`: the exact accuracy.
  assert vqa_accuracy('red', ['red']) == 1.0 and vqa_accuracy('red', ['blue']) == 0.0
  assert vqa_accuracy('red', ['red', 'blue']) == 0.5
  assert vqa_accuracy('red', []) == 0.0


@pytest.fixture(scope='module')
def tiny_multi(tmp_path_factory):
  """A small `scenes/multi` (the real config, shrunk), prepared once for this module."""
  # Test scenes derive from (seed, split, index): fewer training scenes leave them as they are.
  tiny = scenes.ScenesConfig(name='multi', num_train=16, num_validation=8, num_test=21)
  saved = scenes.Scenes.builder_configs['multi']
  scenes.Scenes.builder_configs['multi'] = tiny  # TFDS memoizes the configs by name.
  data_dir = str(tmp_path_factory.mktemp('vqa_scenes'))
  pipeline.get_builder('scenes/multi', data_dir)
  yield data_dir
  scenes.Scenes.builder_configs['multi'] = saved


def local_config(data_dir, arg=''):
  config = config_lib.load_config(VQA_SCENES + ':local' + (f',{arg}' if arg else ''))
  config_lib.apply_overrides(config, {'data.data_dir': data_dir})
  return config


def test_local_mode_trains_counts_each_question_once_by_type_and_draws_answers(
    tmp_path, tiny_multi):
  config = local_config(tiny_multi)
  with config.unlocked():
    config.evals.eval.human_answers = 'answer'
  config.evals.eval.batch_size = 40  # 126 rows: a padded last batch
  # Two steps and the final evaluation only: compiling is what costs.
  config_lib.apply_overrides(config, {'total_steps': '2', 'checkpoint_every_steps': '2',
                                      'eval_every_steps': '0',
                                      'evals.eval.num_figure_images': '2'})
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results['eval/num_examples'] == 21 * 6  # 21 test scenes, 6 questions each
  assert np.isfinite(results['eval/loss']) and 0 <= results['eval/accuracy'] <= 1
  builder = pipeline.get_builder('scenes/multi', tiny_multi)
  questions = [q.decode() for ex in tfds.as_numpy(builder.as_dataset(split='test'))
               for q in ex['questions']]
  types = [t for t in scenes_reader.QUESTION_TYPES if f'eval/accuracy_{t}' in results]
  assert len(types) >= 4
  for kind in scenes_reader.QUESTION_TYPES:
    expected = sum(scenes_reader.question_type(q) == kind for q in questions)
    assert results.get(f'eval/num_examples_{kind}', 0) == expected
  # The per-type accuracies add up to the overall one, weighted by their counts.
  correct = sum(results[f'eval/accuracy_{t}'] * results[f'eval/num_examples_{t}']
                for t in types)
  assert correct == pytest.approx(results['eval/accuracy'] * 21 * 6)
  # One answer per question: the VQA accuracy is the exact accuracy.
  assert results['eval/vqa_accuracy'] == pytest.approx(results['eval/accuracy'])
  assert os.path.getsize(tmp_path / 'eval' / 'answers.png') > 0


def test_the_evaluator_needs_the_questions_on_the_host(tiny_multi, tmp_path):
  config = local_config(tiny_multi)
  config.evals.eval.keep_on_cpu = ()
  with pytest.raises(config_lib.ConfigError, match='keep_on_cpu'):
    train.train_and_evaluate(config, str(tmp_path))


@pytest.mark.parametrize('arg, error', [('model=deaf', 'model must be one of'),
                                        ('modle=blind', 'unknown arguments')])
def test_bad_arguments_are_named(arg, error):
  with pytest.raises(ValueError, match=error):
    config_lib.load_config(f'{VQA_SCENES}:{arg}')


def test_the_recipe_ablates_only_the_inputs():
  full, blind = (config_lib.load_config(f'{VQA_SCENES}:model={m}') for m in ('full', 'blind'))
  assert (full.vqa.inputs, blind.vqa.inputs) == ('full', 'blind')
  assert full.model.to_dict() == blind.model.to_dict()
  assert full.data.pp_train.startswith('per_question|')
  assert vqa_evaluator.Evaluator.OPTIONS['human_answers'] == ''
