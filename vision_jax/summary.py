r"""A per-layer table of an experiment's model: output shapes, parameters and FLOPs.

  python -m vision_jax.summary \
      --config experiments/classification/resnet_imagenet.py:depth=50 [--depth 2] \
      [--no_flops] [--config.<field>=<value> ...]

Nothing is computed: shapes come from `jax.eval_shape` and FLOPs from XLA's cost
analysis of each module's lowered forward pass, so no dataset, accelerator or
checkpoint is needed. The input is one example of shape `config.data.input_shape`
(the shape after preprocessing, which the experiment configs state), the classes are
`config.data.num_classes`, and the model is the one the experiment's method builds,
initialised with that method's inputs (a GAN's two players, a U-Net with its timestep
and label). FLOPs count a multiply-add as two, per example, in
eval mode; XLA leaves out the taps of a convolution that fall on its zero padding, so
ResNet-50 counts 7.95 GFLOPs rather than the usual 2 x 4.1 G. The last line is
`total params: N`.
"""

import copy
import dataclasses
import sys
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vision_jax import config_lib
from vision_jax.data import pipeline
from vision_jax.methods import get_method_class


@dataclasses.dataclass(frozen=True)
class Layer:
  """One module call of the forward pass."""
  path: tuple[str, ...]
  module_type: str
  output_shape: tuple[int, ...]
  params: int
  flops: int | None


def build_model(config: ml_collections.ConfigDict
                ) -> tuple[nn.Module, tuple[int, ...], Callable[[jax.Array], dict]]:
  """The experiment's model, its per-example input shape, and `init(x)`: the model's
  variables for a batch of images x, initialised as the experiment's method does it
  (with the method's other inputs: labels, a timestep). Read from the config alone."""
  data = config.data
  # Methods without classes (CLIP, generative models) need no data.num_classes.
  needed = ('input_shape', 'num_classes') if config.method == 'classification' else (
      'input_shape',)
  missing = [f'data.{f}' for f in needed if data.get(f) is None]
  if missing:
    raise config_lib.ConfigError(
        f'the config does not set {" and ".join(missing)}: the shape of one '
        'preprocessed example and the class count, e.g. (224, 224, 3) and 1000')
  # Flax's own layers whatever `model.cpu_kernels` says: the kernels have the same
  # parameters and shapes, and XLA cannot count FLOPs inside their custom calls.
  config = copy.deepcopy(config)
  with config.unlocked():
    config.model.cpu_kernels = False
  info = pipeline.DatasetInfo(name=data.get('name', ''), num_examples={},
                              num_classes=data.get('num_classes'), class_names=None)
  method = get_method_class(config.method)(config, info, total_steps=1, steps_per_epoch=1)
  model = getattr(method, 'model', None)
  if not isinstance(model, nn.Module):
    raise config_lib.ConfigError(f'method {config.method!r} has no Flax model to summarise')

  def init(x):
    # The method's made-up batch gives its other inputs (labels, token ids).
    batch = method.synthetic_batch(x.shape[0], x.shape[1:], np.random.default_rng(0))
    batch.update({key: x for key in ('image', *method.TRAIN_IMAGE_KEYS)})
    return method.init_variables(jax.random.key(0), batch)
  return model, tuple(data.input_shape), init


def _subtree(variables: dict, path: tuple[str, ...]) -> dict:
  """The variables of every collection under `path`."""
  out = {}
  for collection, tree in variables.items():
    for name in path:
      tree = tree.get(name, {}) if isinstance(tree, dict) else {}
    if tree:
      out[collection] = tree
  return out


def _count(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


def _flops(fn, *args) -> int:
  cost = jax.jit(fn).lower(*args).cost_analysis()
  return int(cost.get('flops', 0)) if cost else 0


def layers(model: nn.Module, input_shape: Sequence[int],
           init: Callable[[jax.Array], dict] | None = None, *,
           flops: bool = True, max_depth: int | None = None
           ) -> tuple[list[Layer], int | None]:
  """Every module call of `model` on one example, in call order, and the model's FLOPs.

  `init(x)` initialises the model's variables (`build_model`'s; default
  `model.init(key, x, train=False)`). A row counts the parameters of its module and
  all its submodules. Rows deeper than `max_depth` (the top-level model is depth 0)
  are left out.
  """
  if init is None:
    init = lambda x: model.init(jax.random.key(0), x, train=False)  # noqa: E731
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  calls = []

  def record(next_fun, args, kwargs, context):
    if context.method_name != '__call__':
      return next_fun(*args, **kwargs)
    index = len(calls)  # A parent is listed before its submodules.
    calls.append(None)
    out = next_fun(*args, **kwargs)
    module = context.module
    calls[index] = (module.path, module.clone(parent=None), args, kwargs,
                    jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), out))
    return out

  def recorded_init(x):
    with nn.intercept_methods(record):
      return init(x)

  variables = jax.eval_shape(recorded_init, x)
  # Abstract arguments of each call; an argument that is not an array (a flag) stays.
  as_abstract = lambda a: (jax.ShapeDtypeStruct(a.shape, a.dtype)
                           if isinstance(a, jax.Array) else a)
  rows, seen = [], set()
  for path, module, args, kwargs, out in calls:
    # A module called twice (shared weights) is listed once.
    if path in seen or (max_depth is not None and len(path) > max_depth):
      continue
    seen.add(path)
    module_vars = _subtree(variables, path)
    row_flops = None
    if flops:
      args = jax.tree.map(as_abstract, args)
      kwargs = jax.tree.map(as_abstract, kwargs)
      row_flops = _flops(lambda v, a, m=module, k=kwargs: m.apply(v, *a, **k),
                         module_vars, args)
    shapes = [tuple(o.shape) for o in jax.tree.leaves(out)]
    rows.append(Layer(path, type(module).__name__, shapes[0] if len(shapes) == 1 else shapes,
                      _count(module_vars.get('params', {})), row_flops))
  total_flops = rows[0].flops if rows and rows[0].path == () else None
  return rows, total_flops


def _si(n: float) -> str:
  for unit, scale in (('G', 1e9), ('M', 1e6), ('K', 1e3)):
    if abs(n) >= scale:
      return f'{n / scale:.2f}{unit}'
  return str(int(n))


def format_table(rows: list[Layer], total_params: int, total_flops: int | None) -> str:
  names = ['  ' * len(r.path) + ('/'.join(r.path) or 'model') + f' ({r.module_type})'
           for r in rows]
  width = max(len(n) for n in names + ['module'])
  shape_width = max(len(str(r.output_shape)) for r in rows)
  lines = [f'{"module":<{width}}  {"output shape":<{shape_width}}  {"params":>12}  '
           f'{"FLOPs":>9}']
  lines.append('-' * len(lines[0]))
  for name, row in zip(names, rows):
    flops = '' if row.flops is None else _si(row.flops)
    lines.append(f'{name:<{width}}  {str(row.output_shape):<{shape_width}}  '
                 f'{row.params:>12,}  {flops:>9}')
  lines.append('-' * len(lines[0]))
  if total_flops is not None:
    lines.append(f'forward FLOPs per example: {total_flops:,} ({_si(total_flops)})')
  lines.append(f'total params: {total_params:,}')
  return '\n'.join(lines)


def summarize(config: ml_collections.ConfigDict, *, flops: bool = True,
              max_depth: int | None = None) -> str:
  """The table for `config.model`, ending with `total params: N`."""
  model, input_shape, init = build_model(config)
  rows, total_flops = layers(model, input_shape, init, flops=flops, max_depth=max_depth)
  total_params = rows[0].params  # The top-level row holds every parameter.
  header = (f'{type(model).__module__}.{type(model).__name__} on inputs of shape '
            f'(batch, {", ".join(map(str, input_shape))})')
  return header + '\n' + format_table(rows, total_params, total_flops)


def main(argv: Sequence[str] | None = None) -> int:
  parser = config_lib.command_line_parser('python -m vision_jax.summary', __doc__)
  parser.add_argument('--depth', type=int, default=None,
                      help='show modules down to this nesting depth (default: all)')
  parser.add_argument('--no_flops', action='store_true',
                      help='skip the per-layer cost analysis (faster on deep models)')
  try:
    args, config = config_lib.parse_command_line(
        parser, sys.argv[1:] if argv is None else argv)
    print(summarize(config, flops=not args.no_flops, max_depth=args.depth))
  except config_lib.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
