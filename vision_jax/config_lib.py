"""Experiment configs: loading `path.py[:arg]`, `--config.field=value` overrides, durations.

A config file defines `get_config(arg=None) -> ml_collections.ConfigDict`. Errors are
`ConfigError`s whose message names the file or field, so the launcher can print them
as one line.
"""

import argparse
import ast
import copy
import difflib
import importlib.util
import os
from typing import Any, Iterable, Sequence

import ml_collections
from ml_collections.config_dict import placeholder


class ConfigError(ValueError):
  """A config file, argument or override that cannot be used."""


def load_module(path: str):
  """The experiment file `path` as a module (for an experiment built on another's recipe)."""
  if not os.path.isfile(path):
    raise ConfigError(f'config file not found: {path}')
  module_spec = importlib.util.spec_from_file_location(
      'vision_jax_config_' + os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:
    raise ConfigError(f'config file {path} failed to load: {type(e).__name__}: {e}') from e
  return module


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:arg]` and returns the locked config."""
  path, _, arg = spec.partition(':')
  module = load_module(path)
  if not hasattr(module, 'get_config'):
    raise ConfigError(f'config file {path} has no get_config()')
  try:
    config = module.get_config(arg or None)
  except (ValueError, KeyError, TypeError) as e:
    raise ConfigError(f'config file {path} rejected argument {arg!r}: {e}') from e
  add_method_options(config)
  add_evaluator_options(config)
  config.lock()
  return config


def add_method_options(config: ml_collections.ConfigDict) -> None:
  """Completes `config.<method name>` with the method's `OPTIONS`, so that every option
  of the method can be overridden (`--config.naive_bayes.smoothing=0.5`) and a
  misspelt one is an error naming it."""
  if not config.get('method'):
    return
  from vision_jax.methods import get_method_class  # pylint: disable=g-import-not-at-top
  method = get_method_class(config.method)
  if not method.name or not method.OPTIONS:
    return
  given = config.get(method.name)
  with config.unlocked():
    config[method.name] = complete(given, ml_collections.ConfigDict(method.OPTIONS),
                                   method.name)


def add_evaluator_options(config: ml_collections.ConfigDict) -> None:
  """Completes each `config.evals.<name>` with its type's `OPTIONS`, so that every option
  of an evaluator can be overridden (`--config.evals.probe.train_split=train[:4000]`)
  and a misspelt one is an error naming it. An unknown type is left for the trainer to
  report."""
  for name, evaluator in (config.get('evals') or {}).items():
    if not isinstance(evaluator, ml_collections.ConfigDict) or not evaluator.get('type'):
      continue
    try:
      module = importlib.import_module(f'vision_jax.evaluators.{evaluator.type}')
    except ModuleNotFoundError:
      continue
    free_form = {k: evaluator[k] for k in module.Evaluator.FREE_FORM_OPTIONS if k in evaluator}
    defaults = evaluator_config()
    defaults.update(module.Evaluator.OPTIONS)
    completed = complete({k: v for k, v in evaluator.items() if k not in free_form},
                         defaults, f'evals.{name}')
    completed.update(free_form)
    with config.unlocked():
      config.evals[name] = completed


def parse_config_args(spec: str) -> dict[str, str]:
  """Parses the `key=value,flag` argument string of `--config path.py:ARGS`."""
  args = {}
  for item in filter(None, (spec or '').split(',')):
    key, eq, value = item.partition('=')
    args[key.strip()] = value.strip() if eq else 'True'
  return args


def _field_names(config: ml_collections.ConfigDict, prefix: str = '') -> Iterable[str]:
  for key, value in config.items():
    yield prefix + key
    if isinstance(value, ml_collections.ConfigDict):
      yield from _field_names(value, prefix + key + '.')


def _parse_value(text: str, current: Any, field_type: type, field: str) -> Any:
  """Converts the override string to the field's type (its placeholder type when None)."""
  try:
    literal = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    literal = text  # A bare word is a string.
  if current is None:
    if literal is None or field_type is type(None):
      return literal
    if field_type is float and isinstance(literal, int):
      return float(literal)
    if isinstance(literal, field_type) and not (isinstance(literal, bool) and field_type is int):
      return literal
    if field_type is str:
      return text
    raise ConfigError(f'config field {field} expects {field_type.__name__}, got {text!r}')
  if isinstance(current, bool):
    if text.lower() in ('true', '1', 'yes'):
      return True
    if text.lower() in ('false', '0', 'no'):
      return False
  elif isinstance(current, str):
    return text
  elif isinstance(current, float) and isinstance(literal, (int, float)) \
      and not isinstance(literal, bool):
    return float(literal)
  elif isinstance(current, int) and isinstance(literal, int) and not isinstance(literal, bool):
    return literal
  elif isinstance(current, (tuple, list)) and isinstance(literal, (tuple, list)):
    return type(current)(literal)
  elif literal is None:
    return None
  raise ConfigError(
      f'config field {field} expects {type(current).__name__}, got {text!r}')


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, str]) -> None:
  """Applies `{'data.name': 'mnist', ...}` in place; unknown fields are errors."""
  for field, text in overrides.items():
    *parents, leaf = field.split('.')
    node = config
    for i, name in enumerate(parents + [leaf]):
      if not isinstance(node, ml_collections.ConfigDict) or name not in node:
        close = difflib.get_close_matches(field, list(_field_names(config)), n=1)
        hint = f' (did you mean {close[0]}?)' if close else ''
        raise ConfigError(f'unknown config field {field}{hint}')
      if i < len(parents):
        node = node[name]
    current = node[leaf]
    if isinstance(current, ml_collections.ConfigDict):
      raise ConfigError(f'config field {field} is a group; set one of its fields')
    value = _parse_value(text, current, node.get_type(leaf), field)
    with node.ignore_type():
      node[leaf] = value
    # A duration is given once: `--config.total_steps=N` clears a configured total_epochs.
    for unit, twin_unit in (('_steps', '_epochs'), ('_epochs', '_steps')):
      twin = leaf[:-len(unit)] + twin_unit if leaf.endswith(unit) else None
      if twin and twin in node and '.'.join(parents + [twin]) not in overrides:
        with node.ignore_type():
          node[twin] = None


def steps(config: ml_collections.ConfigDict, prefix: str, steps_per_epoch: int,
          default: int | None = None) -> int | None:
  """Reads a duration given as `<prefix>_steps` or `<prefix>_epochs`, in steps."""
  step_value = config.get(f'{prefix}_steps')
  epoch_value = config.get(f'{prefix}_epochs')
  if step_value is not None and epoch_value is not None:
    raise ConfigError(f'set only one of {prefix}_steps and {prefix}_epochs')
  if step_value is not None:
    return int(step_value)
  if epoch_value is not None:
    return int(round(epoch_value * steps_per_epoch))
  return default


def optimizer_config(**fields: Any) -> ml_collections.ConfigDict:
  """An optimizer group (see `vision_jax.optim`), e.g. a GAN's `config.optimizer_d`."""
  config = ml_collections.ConfigDict(dict(
      name='sgd', momentum=0.9, nesterov=False, b1=0.9, b2=0.999, weight_decay=0.0,
      decay_weights_only=True, grad_clip_norm=placeholder(float),
      lr=placeholder(float)))  # None: the experiment's config.lr.
  return complete(fields, config, 'optimizer')


def schedule_config(**fields: Any) -> ml_collections.ConfigDict:
  """A learning-rate schedule group (see `vision_jax.optim`)."""
  config = ml_collections.ConfigDict(dict(
      name='cosine', warmup_steps=placeholder(int), warmup_epochs=placeholder(float),
      boundaries_steps=placeholder(tuple), boundaries_epochs=placeholder(tuple),
      decay_factor=0.1))
  return complete(fields, config, 'schedule')


def evaluator_config(**fields: Any) -> ml_collections.ConfigDict:
  """An evaluator group `config.evals.<name>` with the fields every evaluator has (see
  `vision_jax.evaluators`); fields of the evaluator's type may be added."""
  config = ml_collections.ConfigDict(dict(
      type='',
      data=dict(name='', split='test', data_dir=placeholder(str)),  # name '': the training data.
      pp='decode|value_range(0, 1)',
      batch_size=256,
      every_steps=placeholder(int),  # None: config.eval_every_steps; 0: only at the end.
      figures_every_steps=0,  # 0: figures only at the end.
      pred=placeholder(str),  # The method's prediction function; None: the type's default.
      keep_on_cpu=(),  # Fields kept on the host (strings, variable-length references).
      cache=True,
      skip_undecodable=False))
  extra = {k: v for k, v in fields.items() if k not in config}
  config.update(extra)
  return complete(fields, config, 'evals')


def complete(given, defaults: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """`defaults` updated with the fields of `given`; a field `defaults` lacks is an error.

  How a group of options (an optimizer, a method's or an evaluator's options) is read:
  every field has a default, and a misspelt one is never silently ignored.
  """
  given = dict(given or {})
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    close = difflib.get_close_matches(unknown[0], list(defaults), n=1)
    hint = f' (did you mean {name}.{close[0]}?)' if close else ''
    raise ConfigError(f'unknown config field {name}.{unknown[0]}{hint}; '
                      f'{name} has {", ".join(sorted(defaults))}')
  # A deep copy: `defaults` often wraps a class's OPTIONS, whose placeholders are field
  # references that setting a value would otherwise change for every later instance.
  config = copy.deepcopy(ml_collections.ConfigDict(defaults))
  for key, value in given.items():
    default = defaults[key]
    if isinstance(default, ml_collections.ConfigDict) and isinstance(
        value, (dict, ml_collections.ConfigDict)):
      value = complete(value, default, f'{name}.{key}')
    with config.ignore_type():
      config[key] = value
  return config


def check_fields(config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict,
                 name: str) -> None:
  """Raises `ConfigError` when `config` has a field that `defaults` lacks."""
  complete(config, defaults, name)


def base_config() -> ml_collections.ConfigDict:
  """The fields every experiment shares, with their defaults; experiments fill the rest."""
  config = ml_collections.ConfigDict()
  config.method = 'classification'
  config.seed = 0
  config.batch_size = 128  # Global: across all devices and processes.
  config.total_steps = placeholder(int)  # Or total_epochs; the last one set on the command line wins.
  config.total_epochs = placeholder(float)
  config.log_every_steps = 50
  config.eval_every_steps = 0  # 0: only at the end.
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 3
  config.async_checkpoints = True
  config.grad_accum_steps = 1
  config.compute_dtype = 'float32'  # 'bfloat16' for mixed precision; params stay float32.

  config.data = ml_collections.ConfigDict()
  config.data.name = ''
  # An embedded dataset trained on (with a message) when data.name is not prepared here,
  # so a recipe for MNIST runs on the embedded digits on a machine without MNIST.
  config.data.fallback = ''
  config.data.data_dir = placeholder(str)  # None: TFDS's default (~/tensorflow_datasets or $TFDS_DATA_DIR).
  config.data.train_split = 'train'
  config.data.pp_train = 'decode|value_range(0, 1)'
  config.data.cache = True
  config.data.skip_undecodable = False  # Image folders: leave out files that cannot be decoded.
  config.data.shuffle_buffer = 50_000
  # A word list (text.Vocabulary.save) that becomes the dataset's vocabulary, for text
  # datasets whose metadata has none (TFDS coco_captions); None: the dataset's own.
  config.data.vocabulary = placeholder(str)

  config.model = ml_collections.ConfigDict()
  config.model.name = ''
  # The C++ convolution and batch-norm kernels of `vision_jax.kernels` on XLA:CPU, in
  # place of Flax's layers (opt-in; ignored on other backends).
  config.model.cpu_kernels = False

  # Start from another run's weights (unless this workdir has a checkpoint): `path` is
  # its workdir or a checkpoint folder, `step` None for its latest, `subtrees` the
  # '/'-separated state paths to copy ('params/backbone'), or 'source:target' pairs;
  # `exclude` the state paths under them that keep their initial values ('params/head').
  config.init_from = ml_collections.ConfigDict(dict(
      path=placeholder(str), step=placeholder(int), subtrees=('params', 'model_state'),
      exclude=()))

  config.optimizer = optimizer_config()
  config.lr = 0.1
  config.lr_batch_base = placeholder(int)  # When set, lr is scaled by batch_size / lr_batch_base.
  config.schedule = schedule_config()

  config.evals = ml_collections.ConfigDict()
  return config


def parse_config_overrides(rest: Sequence[str], parser: argparse.ArgumentParser
                           ) -> dict[str, str]:
  """`--config.a.b=v` or `--config.a.b v` arguments as `{'a.b': 'v'}`; others are errors."""
  overrides = {}
  i = 0
  while i < len(rest):
    item = rest[i]
    if not item.startswith('--config.'):
      parser.error(f'unrecognized argument {item}')
    field, eq, value = item[len('--config.'):].partition('=')
    if not eq:
      if i + 1 >= len(rest):
        parser.error(f'--config.{field} needs a value')
      value, i = rest[i + 1], i + 1
    overrides[field] = value
    i += 1
  return overrides


def command_line_parser(prog: str, doc: str) -> argparse.ArgumentParser:
  """An argument parser with `--config path.py[:args]`, for the project's commands."""
  parser = argparse.ArgumentParser(
      prog=prog, description=doc.split('\n\n')[0],
      epilog='Override any config field with --config.<field>=<value>.')
  parser.add_argument('--config', required=True,
                      help='experiments/<area>/<name>.py[:key=value,...]')
  return parser


def parse_command_line(parser: argparse.ArgumentParser, argv: Sequence[str],
                       extra_overrides: dict[str, str] | None = None):
  """Returns `(args, config)`: the config loaded, overridden and locked.

  Raises `ConfigError` for a missing file or a bad field, with a one-line message.
  """
  args, rest = parser.parse_known_args(argv)
  overrides = {**parse_config_overrides(rest, parser), **(extra_overrides or {})}
  config = load_config(args.config)
  if 'method' in overrides:  # The new method's options become fields to override.
    apply_overrides(config, {'method': overrides.pop('method')})
    add_method_options(config)
  apply_overrides(config, overrides)
  return args, config
