r"""Exports a trained run's inference function to ONNX or a TF SavedModel, and checks it.

  python -m vision_jax.export --workdir /tmp/resnet18_imagenet --format onnx \
      [--batch dynamic|N] --out /tmp/resnet18.onnx [--overwrite] [--input_shape H,W,C] \
      [--tolerance 1e-4]

Loads the run's latest checkpoint (`vision_jax.inference.load_run`) and exports its
eval-mode prediction (BatchNorm running averages; EMA weights where the run keeps them)
of float32 NHWC images of the run's `data.input_shape` (`--input_shape` for a run whose
config has none), preprocessed as the run's evaluation data is: the printout and the
ONNX file's metadata give that `pp` string, and the class names or vocabulary that the
outputs index.

  classification (images and video clips)  image -> logits [B, classes]
  naive_bayes                              image -> log_joint [B, classes]
  segmentation                             image -> logits [B, H, W, classes]
  rotation, simclr, cpc                    image -> features [B, D] (the encoder's)
  clip                                     image -> embeddings [B, D] (L2-normalised)
  detr                                     image -> boxes, classes, scores, valid
  captioning                               image -> tokens [B, L] (beam search)

The input is named `image`; `--batch dynamic` (the default) gives it a symbolic batch
dimension `B`, `--batch N` a fixed one.

Formats, with the pinned jax 0.10.2, jax2onnx 0.17.1 and tensorflow 2.21:
  onnx         one .onnx file (jax2onnx, opset 23). Every method above; captioning and
               the FCN only with a fixed --batch N. Not FCOS / CondInst detection
               (jax2onnx fails on its vmapped non-maximum suppression), nor models that
               jax2onnx cannot convert (the U-Net's platform-dependent transposed
               convolution): a one-line error names what failed.
  saved_model  a SavedModel folder (jax.experimental.jax2tf; the weights as variables,
               a `serving_default` signature from `image` to the named outputs). The
               graph holds StableHLO in an XlaCallModule op: it runs in TensorFlow (and
               TF Serving) with XLA, not in TF Lite or TF.js. Not FCOS / CondInst
               detection nor captioning: jax serialises their lax.top_k as an op that
               TensorFlow 2.21 cannot read.
VQA (its predict needs question tokens too) and the generative methods (sampling
loops) are not exported.

After writing, the export is checked: in onnxruntime (CPU) or TensorFlow, on a batch of
the run's first evaluator's data (deterministic random inputs when that data is not
available here; the printout says which), against the JAX function, at two batch sizes
for a dynamic batch. The last line reads

  onnxruntime vs JAX on 8 examples (batches of 8 and 3): max abs difference 3.1e-07 (tolerance 1e-4): OK

and the exit status is 1 when the difference exceeds `--tolerance` (the file is kept
for inspection). A missing workdir or checkpoint, an unknown format, an output folder
that does not exist, an existing output (without `--overwrite`), a method that cannot
be exported, a failed conversion or an export that its runtime cannot run (not kept)
is a one-line error, with exit status 2.
"""

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
from typing import Any, Callable, Sequence

import jax
import numpy as np

from vision_jax import checkpointing, config_lib, inference
from vision_jax.methods import get_method_class

FORMATS = ('onnx', 'saved_model')
CHECK_EXAMPLES = 8  # The check's batch with a dynamic batch size ...
SECOND_BATCH = 3  # ... and the second size it checks.
INPUT_NAME = 'image'
SAVED_MODEL_PLATFORMS = ('cpu', 'cuda')
# jax2onnx 0.17.1's pass of this name makes an invalid graph of the ResNet (onnxruntime:
# "Node (node_Add_75) Op (Add) [ShapeInferenceError] Incompatible dimensions").
BROKEN_ONNX_PASS = 'remove_redundant_transpose_pairs'

# What a run of each method exports: (method module, prediction, output name). A
# subclass (SimCLR of the self-supervised base, CondInst of FCOS) exports as its base.
EXPORTED = (
    ('classification', 'predict', 'logits'),
    ('naive_bayes', 'predict', 'log_joint'),
    ('segmentation', 'predict', 'logits'),
    ('self_supervised', 'embed_image', 'features'),
    ('clip', 'embed_image', 'embeddings'),
    ('detr', 'detect', 'detections'),
    ('detection', 'detect', 'detections'),
    ('captioning', 'caption', 'tokens'),
)
# Why the others are not exported, by method module.
NOT_EXPORTED = (
    ('vqa', 'its predict needs question tokens beside the image; only functions of images '
            'alone are exported'),
    ('generative', 'it generates images by sampling loops, not a function of input images'),
)
# What the pinned converters cannot do, by (method module, format).
_TOP_K = ('jax 0.10.2 serialises lax.top_k as a vhlo.composite_v2 op, which the '
          'XlaCallModule of TensorFlow 2.21 cannot read')
FORMAT_LIMITS = {
    ('detection', 'onnx'): ('jax2onnx 0.17.1 cannot convert its detect: the batching rule '
                            "of its jnp.maximum fails in the vmapped non-maximum suppression "
                            '(incompatible shapes for broadcasting)'),
    ('detection', 'saved_model'): f'its detect ranks locations with lax.top_k, and {_TOP_K}',
    ('captioning', 'saved_model'): f'its beam search uses lax.top_k, and {_TOP_K}',
}


class ExportError(ValueError):
  """A request the exporter refuses, or an export that failed; the message is one line."""


@dataclasses.dataclass
class Result:
  """What `export` wrote and how its check went.

  Attributes:
    path: the file (ONNX) or folder (SavedModel) written.
    method: the run's method.
    prediction: the method's prediction function exported.
    inputs: the input's description, e.g. 'image float32 [B, 64, 64, 3] (NHWC)'.
    outputs: the outputs' names, dtypes and shapes, e.g. ['logits float32 [B, 1000]'].
    preprocessing: the pp string of the run's evaluation data ('' if it has none).
    data: where the check's inputs came from.
    runtime: 'onnxruntime' or 'TensorFlow'.
    batch_sizes: the batch sizes checked.
    max_difference: the largest absolute difference from the JAX outputs.
    tolerance: the largest one allowed.
  """
  path: str
  method: str
  prediction: str
  inputs: str
  outputs: list[str]
  preprocessing: str
  data: str
  runtime: str
  batch_sizes: tuple[int, ...]
  max_difference: float
  tolerance: float

  @property
  def ok(self) -> bool:
    return bool(self.max_difference <= self.tolerance)

  def check_line(self) -> str:
    sizes = (f' (batches of {" and ".join(map(str, self.batch_sizes))})'
             if len(self.batch_sizes) > 1 else '')
    tolerance = f'{self.tolerance:.0e}'.replace('e-0', 'e-').replace('e+0', 'e+')
    return (f'{self.runtime} vs JAX on {self.batch_sizes[0]} examples{sizes}: max abs '
            f'difference {self.max_difference:.1e} (tolerance {tolerance}): '
            f'{"OK" if self.ok else "FAILED"}')


def exported_prediction(method_name: str, fmt: str = 'onnx') -> tuple[str, str]:
  """`(prediction, output name)` that a run of `method_name` exports in format `fmt`;
  `ExportError` naming the method and the reason for one that cannot be exported."""
  method_class = get_method_class(method_name)
  modules = [c.__module__.rpartition('.')[2] for c in method_class.__mro__
             if c.__module__.startswith('vision_jax.methods.')]
  for module, reason in NOT_EXPORTED:
    if module in modules:
      raise ExportError(f'method {method_name} cannot be exported: {reason}')
  for module, prediction, output in EXPORTED:
    if module in modules:
      if (module, fmt) in FORMAT_LIMITS:
        raise ExportError(f'method {method_name} cannot be exported to {fmt}: '
                          f'{FORMAT_LIMITS[module, fmt]}')
      return prediction, output
  raise ExportError(
      f'method {method_name} cannot be exported: the exporter knows the image-to-output '
      f'functions of {", ".join(m for m, _, _ in EXPORTED)} and methods derived from them')


def parse_batch(text: str) -> int | None:
  """`--batch`: None for 'dynamic', else a positive int."""
  if text == 'dynamic':
    return None
  try:
    batch = int(text)
  except ValueError:
    batch = 0
  if batch < 1:
    raise ExportError(f"--batch must be 'dynamic' or a positive number, got {text!r}")
  return batch


def parse_shape(text: str) -> tuple[int, ...]:
  try:
    shape = tuple(int(d) for d in text.split(','))
  except ValueError:
    shape = ()
  if not shape or min(shape) < 1:
    raise ExportError(f'--input_shape must be positive sizes such as 32,32,3, got {text!r}')
  return shape


def check_format(fmt: str) -> str:
  if fmt not in FORMATS:
    raise ExportError(f'unknown --format {fmt!r}; the formats are {", ".join(FORMATS)}')
  return fmt


def check_out(out: str, fmt: str, overwrite: bool) -> None:
  """An output whose folder exists and that is not there yet, unless `overwrite`."""
  folder = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(folder):
    raise ExportError(f'--out {out}: the folder {folder} does not exist')
  if not os.path.lexists(out):
    return
  if not overwrite:
    raise ExportError(f'--out {out} already exists; pass --overwrite to replace it')
  if fmt == 'onnx' and os.path.isdir(out):
    raise ExportError(f'--out {out} is a folder, not an ONNX file')
  if fmt == 'saved_model' and not (os.path.isdir(out)
                                   and os.path.isfile(os.path.join(out, 'saved_model.pb'))):
    raise ExportError(f'--out {out} exists and is not a SavedModel folder; not replacing it')


def _flat_outputs(outputs: Any, name: str) -> tuple[list[str], list[jax.Array]]:
  """The prediction's arrays and their names: `name` for one array, the dict keys
  joined by '/' for a dict."""
  leaves = jax.tree_util.tree_leaves_with_path(outputs)
  if len(leaves) == 1 and not leaves[0][0]:
    return [name], [leaves[0][1]]
  names = ['/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)
           for path, _ in leaves]
  return names, [leaf for _, leaf in leaves]


def _first_evaluator(config) -> tuple[str, Any] | None:
  evals = config.get('evals') or {}
  for name in evals:
    return name, evals[name]
  return None


def check_inputs(config, input_shape: Sequence[int], num: int) -> tuple[np.ndarray, str]:
  """`num` float32 inputs [num, *input_shape] for the check, and where they come from:
  the first batch of the run's first evaluator (its data, split and pp; padded with
  zeros if the split is smaller), else deterministic standard-normal noise."""
  first = _first_evaluator(config)
  reason = 'the run has no evaluator'
  if first:
    name, evaluator = first
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    from vision_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    data = evaluator.data
    dataset = data.name or config.data.name
    data_dir = data.data_dir if data.name else config.data.get('data_dir')
    try:
      # A TFDS dataset that is not prepared here is not prepared for a check (that could
      # take minutes); the user's own data (folders, COCO files) is read as in training.
      if (not dataset.startswith(pipeline.USER_DATA_PREFIXES)
          and not tfds.builder(dataset, data_dir=data_dir).is_prepared()):
        raise pipeline.DatasetNotFoundError(f'{dataset} is not prepared in '
                                            f'{data_dir or "the default data dir"}')
      builder = pipeline.get_builder(dataset, data_dir)
      # Only the images: other fields (all the captions of an image) may not batch.
      batch = next(pipeline.eval_batches(builder, data.split, batch_size=num,
                                         pp=f'{evaluator.pp}|keep("image")'))
      images = batch.get('image')
      if images is None or tuple(images.shape[1:]) != tuple(input_shape):
        reason = (f'evals.{name} gives no image of shape {tuple(input_shape)}')
      else:
        real = int(batch[pipeline.MASK_KEY].sum())
        return (np.asarray(images, np.float32),
                f'{real} examples of evals.{name}\'s data ({dataset}, split {data.split})')
    except (OSError, ValueError, KeyError, StopIteration, tf.errors.OpError) as e:
      reason = f'evals.{name}\'s data is not available here ({str(e).splitlines()[0][:120]})'
  rng = np.random.default_rng(0)
  return (rng.standard_normal((num, *input_shape), np.float32),
          f'deterministic random inputs (standard normal, seed 0): {reason}')


@contextlib.contextmanager
def _without_onnx_pass(name: str):
  """jax2onnx's graph optimiser without the pass `name`, restored afterwards."""
  # pylint: disable=protected-access
  from jax2onnx.converter import ir_optimizations  # pylint: disable=g-import-not-at-top
  passes = ir_optimizations._OPTIMIZER_PASSES
  ir_optimizations._OPTIMIZER_PASSES = tuple(p for p in passes if p.name != name)
  try:
    yield
  finally:
    ir_optimizations._OPTIMIZER_PASSES = passes


def _first_line(e: Exception) -> str:
  """The line of an exception's message that says what went wrong (MLIR's 'error:'
  line where there is one), at most 300 characters."""
  lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
  errors = [line for line in lines if 'error:' in line]
  return (errors or lines or [type(e).__name__])[0][:300]


def _remove(path: str) -> None:
  if os.path.isdir(path):
    shutil.rmtree(path)
  elif os.path.exists(path):
    os.remove(path)


def to_onnx(fn: Callable, input_shape: Sequence[int], batch: int | None,
            output_names: Sequence[str], metadata: dict[str, str]):
  """The ONNX ModelProto of `fn` (images -> tuple of arrays)."""
  import jax2onnx  # pylint: disable=g-import-not-at-top
  import onnx  # pylint: disable=g-import-not-at-top
  shape = ('B' if batch is None else batch, *input_shape)
  # jax2onnx imports its example plugins too and warns, with a traceback, about each
  # whose optional package (equinox, dm_pix) is not installed; none is used here.
  logging.getLogger('jax2onnx.plugins.plugin_system').setLevel(logging.ERROR)
  try:
    with _without_onnx_pass(BROKEN_ONNX_PASS):
      model = jax2onnx.to_onnx(fn, [shape], return_mode='proto', model_name='vision_jax',
                               input_names=[INPUT_NAME], output_names=list(output_names))
  except Exception as e:  # jax2onnx raises many types for what it cannot convert.
    symbolic = type(e).__name__ == 'InconclusiveDimensionOperation'
    hint = '; a fixed --batch N may convert' if batch is None and symbolic else ''
    raise ExportError(f'jax2onnx cannot convert it: {type(e).__name__}: {_first_line(e)}'
                      f'{hint}') from None
  onnx.helper.set_model_props(model, metadata)
  return model


def _onnx_runner(path: str) -> Callable[[np.ndarray], list[np.ndarray]]:
  import onnxruntime  # pylint: disable=g-import-not-at-top
  session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
  return lambda images: session.run(None, {INPUT_NAME: images})


def to_saved_model(fn: Callable, variables: Any, input_shape: Sequence[int],
                   batch: int | None, output_names: Sequence[str], path: str) -> None:
  """Saves `fn(variables, images) -> tuple of arrays` as a SavedModel at `path`, the
  variables as TF variables, with a `serving_default` signature."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], 'GPU')  # TensorFlow only runs the check here.
  except RuntimeError:  # Already initialised: the input pipeline hides them as well.
    pass
  tf_variables = jax.tree.map(lambda x: tf.Variable(np.asarray(x), trainable=False),
                              variables)
  # Lowered for CPUs and CUDA GPUs whatever this machine has; TensorFlow picks its own.
  converted = jax2tf.convert(fn, with_gradient=False,
                             polymorphic_shapes=[None, None if batch else '(b, ...)'],
                             native_serialization_platforms=SAVED_MODEL_PLATFORMS)

  def serve(image):
    return dict(zip(output_names, converted(tf_variables, image)))

  module = tf.Module()
  module.variables_list = jax.tree.leaves(tf_variables)  # Saved with the module.
  module.serve = tf.function(serve, autograph=False, input_signature=[
      tf.TensorSpec([batch, *input_shape], tf.float32, name=INPUT_NAME)])
  _remove(path)  # check_out allows only a SavedModel folder here, with --overwrite.
  try:
    tf.saved_model.save(module, path, signatures={'serving_default': module.serve})
  except Exception as e:  # jax2tf and TF raise many types for what they cannot convert.
    _remove(path)
    raise ExportError(f'jax2tf cannot convert it: {type(e).__name__}: {_first_line(e)}'
                      ) from None


def _saved_model_runner(path: str, output_names: Sequence[str]
                        ) -> Callable[[np.ndarray], list[np.ndarray]]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  serve = tf.saved_model.load(path).signatures['serving_default']
  return lambda images: [serve(**{INPUT_NAME: tf.constant(images)})[name].numpy()
                         for name in output_names]


def max_difference(got: Sequence[np.ndarray], want: Sequence[np.ndarray]) -> float:
  """The largest absolute difference of corresponding arrays (equal infinities and
  NaNs count as equal); infinite for arrays of other shapes."""
  worst = 0.0
  for g, w in zip(got, want, strict=True):
    g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
    if g.shape != w.shape:
      return float('inf')
    with np.errstate(invalid='ignore'):  # inf - inf, which the next line zeroes.
      diff = np.abs(g - w)
    diff[(g == w) | (np.isnan(g) & np.isnan(w))] = 0.0
    if np.isnan(diff).any():  # NaN against a number.
      return float('inf')
    worst = max(worst, float(diff.max(initial=0.0)))
  return worst


def _metadata(method, workdir: str, prediction: str, preprocessing: str) -> dict[str, str]:
  """What a user of the file needs besides its inputs and outputs: the run, the
  preprocessing and the class names or vocabulary that the outputs index."""
  metadata = {'vision_jax.workdir': os.path.abspath(workdir),
              'vision_jax.method': method.config.method,
              'vision_jax.prediction': prediction,
              'vision_jax.input': f'{INPUT_NAME}: float32 NHWC',
              'vision_jax.preprocessing': preprocessing}
  if prediction == 'caption':
    metadata['vision_jax.vocabulary'] = json.dumps(list(method.vocab.tokens))
  elif prediction in ('predict', 'detect'):  # Outputs over classes.
    class_names = getattr(method, 'class_names', None) or method.data_info.class_names
    if class_names:
      metadata['vision_jax.class_names'] = json.dumps(list(class_names))
  return metadata


def export(workdir: str, out: str, *, fmt: str = 'onnx', batch: int | None = None,
           input_shape: Sequence[int] | None = None, tolerance: float = 1e-4,
           overwrite: bool = False) -> Result:
  """Exports the run in `workdir` to `out` in format `fmt` and checks it (see the module
  docstring). `batch` None is a dynamic batch dimension."""
  check_format(fmt)
  check_out(out, fmt, overwrite)
  if not os.path.isdir(workdir):
    raise inference.RunError(f'--workdir {workdir} does not exist')
  run_config = inference.read_config(workdir)
  prediction, output_name = exported_prediction(run_config.method, fmt)
  if not input_shape and not run_config.data.get('input_shape'):
    raise ExportError(f'the config of {workdir} has no data.input_shape; pass --input_shape '
                      'H,W,C, the shape of a preprocessed example')
  try:
    config, method, state = inference.load_run(workdir, input_shape=input_shape)
  except (ValueError, TypeError) as e:
    if not input_shape or isinstance(e, (inference.RunError, config_lib.ConfigError)):
      raise
    raise ExportError(f'--input_shape {",".join(map(str, input_shape))} does not fit the '
                      f'model of {workdir}: {_first_line(e)}') from None
  if config.model.get('cpu_kernels'):
    # The C++ CPU kernels are FFI calls that no converter reads; Flax's own layers are
    # the same model with the same parameters.
    config = config.copy_and_resolve_references()
    config.model.cpu_kernels = False
    method = type(method)(config, method.data_info, total_steps=1, steps_per_epoch=1)
  shape = tuple(input_shape or config.data.input_shape)
  eval_state = method.eval_state(state)
  # Only what a prediction reads: the optimizer state would be traced for nothing.
  variables = {'params': eval_state.params, 'model_state': eval_state.model_state}
  predict = getattr(method, prediction)

  def apply(variables, images):
    outputs = predict(eval_state.replace(opt_state=None, **variables), {INPUT_NAME: images})
    return tuple(_flat_outputs(outputs, output_name)[1])

  abstract = jax.eval_shape(lambda x: predict(eval_state, {INPUT_NAME: x}),
                            jax.ShapeDtypeStruct((1, *shape), np.float32))
  output_names, output_shapes = _flat_outputs(abstract, output_name)
  batch_dim = 'B' if batch is None else str(batch)
  outputs = [f'{n} {s.dtype} [{", ".join([batch_dim, *map(str, s.shape[1:])])}]'
             for n, s in zip(output_names, output_shapes)]
  first = _first_evaluator(config)
  preprocessing = first[1].pp if first else ''
  method_name = config.method
  what = f'the {prediction} prediction of the {method_name} run in {workdir}'

  num = batch or CHECK_EXAMPLES
  images, data = check_inputs(config, shape, num)
  sizes = (num,) if batch else (num, SECOND_BATCH)
  reference = jax.jit(lambda x: apply(variables, x))
  # Full float32 products, as the runtimes compute them (on GPUs JAX's default is TF32).
  with jax.default_matmul_precision('highest'):
    wants = [jax.device_get(reference(images[:size])) for size in sizes]
  try:
    if fmt == 'onnx':
      model = to_onnx(lambda x: apply(variables, x), shape, batch, output_names,
                      _metadata(method, workdir, prediction, preprocessing))
      import onnx  # pylint: disable=g-import-not-at-top
      try:
        onnx.save_model(model, out)
      except ValueError as e:  # A model over protobuf's 2 GB.
        _remove(out)
        raise ExportError(f'onnx cannot write it: {_first_line(e)}') from None
      runtime = 'onnxruntime'
    else:
      to_saved_model(apply, variables, shape, batch, output_names, out)
      runtime = 'TensorFlow'
  except ExportError as e:
    raise ExportError(f'{what} cannot be exported to {fmt}: {e}') from None
  try:
    run = _onnx_runner(out) if fmt == 'onnx' else _saved_model_runner(out, output_names)
    worst = max(max_difference(run(images[:size]), want) for size, want in zip(sizes, wants))
  except Exception as e:  # The runtimes' own exception types (InvalidGraph, OpError, ...).
    _remove(out)  # A file its runtime cannot run is of no use.
    raise ExportError(f'{runtime} cannot run the export of {what} ({type(e).__name__}: '
                      f'{_first_line(e)}); {out} was not kept') from None
  inputs = f'{INPUT_NAME} float32 [{", ".join([batch_dim, *map(str, shape)])}] (NHWC)'
  return Result(path=out, method=method_name, prediction=prediction, inputs=inputs,
                outputs=outputs, preprocessing=preprocessing, data=data, runtime=runtime,
                batch_sizes=sizes, max_difference=worst, tolerance=tolerance)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m vision_jax.export',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True, help='a trained run')
  parser.add_argument('--format', default='onnx', help=' or '.join(FORMATS))
  parser.add_argument('--batch', default='dynamic', help="'dynamic' or a fixed batch size")
  parser.add_argument('--out', required=True,
                      help='the .onnx file, or the SavedModel folder, to write')
  parser.add_argument('--overwrite', action='store_true', help='replace an existing --out')
  parser.add_argument('--input_shape', default=None,
                      help='H,W,C of a preprocessed example, for runs without data.input_shape')
  parser.add_argument('--tolerance', type=float, default=1e-4,
                      help='the largest absolute difference from JAX the check accepts')
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  try:
    result = export(args.workdir, args.out, fmt=check_format(args.format),
                    batch=parse_batch(args.batch),
                    input_shape=parse_shape(args.input_shape) if args.input_shape else None,
                    tolerance=args.tolerance, overwrite=args.overwrite)
  except (ExportError, inference.RunError, config_lib.ConfigError,
          checkpointing.CheckpointError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'wrote {result.path}: {result.method} run, prediction {result.prediction}')
  print(f'  input:  {result.inputs}')
  print(f'  output: {", ".join(result.outputs)}')
  if result.preprocessing:
    print(f"  preprocessing (the run's evaluation pp): {result.preprocessing}")
  print(f'checked on {result.data}')
  print(result.check_line())
  return 0 if result.ok else 1


if __name__ == '__main__':
  sys.exit(main())
