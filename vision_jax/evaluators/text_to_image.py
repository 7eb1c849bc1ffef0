r"""Text-to-image evaluator: images drawn from captions and class prompts, and how
faithful they are to the prompt.

For a method with `generate_from_text(state, rng, tokens, **sample_options)` and
`tokenize(texts)` (DALL-E's prior, `methods/dalle`; text diffusion,
`methods/text_diffusion`). From fixed noise, so that progress
shows across evaluations, it draws:
- `caption_images` images, one per caption: the first caption of each of the first
  test images of its data (`captions`, kept on the host);
- `samples_per_class` images for each class prompt `prompt_template.format(name)`
  ('a red circle.'), the names being `class_names` or its data's label names (scenes'
  40 colour-shape classes).

Metrics:
- with `classifier_workdir` (a classification run on `scenes/single`, e.g.
  `experiments/classification/cnn_scenes.py`): `faithfulness`, the fraction of the
  class prompts' images that the classifier assigns to the prompt's class (chance
  1 / classes), and `faithfulness_per_class_min`. The classifier's classes must be the
  prompts' (the same names, in the same order). When the data holds colour-shape pairs
  out of training (`scenes/compositional`'s metadata `held_out`), `faithfulness` is
  over the seen classes and `faithfulness_novel` over the held-out ones: compositional
  generation.
- with `clip_workdir` (a CLIP run, `experiments/vision_language/clip_scenes.py`):
  `clip_score (project CLIP)`, the mean cosine similarity of each generated image
  (captions and class prompts alike) and its prompt under that CLIP; it measures the
  agreement of two models trained here, not OpenAI CLIP's score.
Both runs see the images in their own input range, read from the `value_range(a, b)`
op of their training pp ([0, 1] without one).

Figures, in `workdir/<name>/`: `captions.png` (the test images, with their caption, and
the images drawn for it) and `class_prompts.png` (one row per class prompt).
"""

import functools
import os
import re
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vision_jax import checkpointing, config_lib, evaluators, inference, losses, parallel
from vision_jax import plotting
from vision_jax.data.pipeline import MASK_KEY

# The evaluator's noise is the same at every evaluation: fold_in(key(seed), FIXED_SALT).
FIXED_SALT = 0x7E1


def input_range(config) -> tuple[float, float]:
  """The value range a run's images are trained in: its pp's `value_range(a, b)`."""
  found = re.findall(r'value_range\(\s*([-\d.]+)\s*,\s*([-\d.]+)\s*\)',
                     config.data.get('pp_train') or '')
  return (float(found[-1][0]), float(found[-1][1])) if found else (0.0, 1.0)


def to_range(images: jax.Array, value_range: tuple[float, float]) -> jax.Array:
  """Images in [0, 1] mapped linearly to `value_range`."""
  low, high = value_range
  return images * (high - low) + low


def faithfulness(predicted: np.ndarray, num_classes: int, per_class: int,
                 held_out: Sequence[int] = ()) -> dict[str, float]:
  """`faithfulness` (the fraction of images classified as their prompt's class),
  `faithfulness_per_class_min` and `faithfulness_num_images`, for the classes
  `predicted` [num_classes * per_class] of images drawn `per_class` at a time for
  classes 0, 1, ...; with `held_out` classes, those are over the other classes and the
  `_novel` ones over the held-out classes."""
  wanted = np.repeat(np.arange(num_classes), per_class)
  right = (np.asarray(predicted) == wanted).reshape(num_classes, per_class)
  novel = np.isin(np.arange(num_classes), np.asarray(held_out, int))
  results = {}
  for suffix, rows in (('', right[~novel]), ('_novel', right[novel])):
    if len(rows):
      results.update({f'faithfulness{suffix}': float(rows.mean()),
                      f'faithfulness{suffix}_per_class_min': float(rows.mean(axis=1).min()),
                      f'faithfulness{suffix}_num_images': float(rows.size)})
  return results


class Evaluator(evaluators.Evaluator):
  """Options: caption_images, samples_per_class, prompt_template, class_names,
  classifier_workdir, clip_workdir, sample_options (the method's: temperature, top_k).
  Its pp must keep 'captions' (added to `keep_on_cpu`, since they are strings)."""
  OPTIONS = {'caption_images': 8, 'samples_per_class': 4, 'prompt_template': 'a {}.',
             'class_names': None, 'classifier_workdir': '', 'clip_workdir': ''}
  FREE_FORM_OPTIONS = ('sample_options',)  # the method's own

  def __init__(self, method, config, **kwargs):
    config = dict(config or {})
    sample_options = dict(config.pop('sample_options', None) or {})
    config['pred'] = ''  # It calls generate_from_text, not a prediction function.
    # The captions are strings of several per image: they stay on the host.
    kept = tuple(config.get('keep_on_cpu') or ())
    config['keep_on_cpu'] = kept + ('captions',) * ('captions' not in kept)
    super().__init__(method, config, **kwargs)
    where = f'evals.{self.name}'
    if not hasattr(method, 'generate_from_text') or not hasattr(method, 'tokenize'):
      raise config_lib.ConfigError(
          f'{where}: type text_to_image needs a text-to-image method (dalle, '
          f'text_diffusion), not '
          f'{method.config.method}')
    self.sample_options = method.sample_options(sample_options)
    if self.config.prompt_template.count('{}') != 1:
      raise config_lib.ConfigError(f'{where}.prompt_template needs exactly one {{}}, got '
                                   f'{self.config.prompt_template!r}')
    names = self.config.class_names or self.data_info.class_names or ()
    self.class_names = tuple(names)
    self.class_prompts = [self.config.prompt_template.format(n) for n in self.class_names]
    self.fixed_key = jax.random.fold_in(jax.random.key(method.config.seed), FIXED_SALT)
    self.classifier = self.clip = None
    if self.config.classifier_workdir:
      self.classifier = self._load(self.config.classifier_workdir, 'classifier_workdir',
                                   ('predict',))
      classes = self.classifier[0].data_info.class_names
      if tuple(classes or ()) != self.class_names:
        raise config_lib.ConfigError(
            f'{where}.classifier_workdir: its classes ({len(classes or ())}) are not the '
            f'{len(self.class_names)} class prompts\' names of {self.data_info.name}')
    if self.config.clip_workdir:
      self.clip = self._load(self.config.clip_workdir, 'clip_workdir',
                             ('embed_image', 'embed_text'))

  def _load(self, workdir, field, predictions):
    """(method, state, input range, {prediction: jitted fn}) of another run."""
    try:
      config, method, state = inference.load_run(
          workdir, input_shape=self.method.image_shape, mesh=self.mesh)
    except (inference.RunError, config_lib.ConfigError, checkpointing.CheckpointError) as e:
      raise config_lib.ConfigError(f'evals.{self.name}.{field}: {e}') from None
    missing = set(predictions) - set(method.PREDICTIONS)
    if missing:
      raise config_lib.ConfigError(
          f'evals.{self.name}.{field}: the {config.method} run in {workdir} has no '
          f'{sorted(missing)[0]} prediction')
    fns = {p: self._replicated_jit(method.prediction_function(p)) for p in predictions}
    return method, state, input_range(config), fns

  def _replicated_jit(self, fn):
    return jax.jit(parallel.under_mesh(self.mesh, fn),
                   out_shardings=parallel.replicated(self.mesh))

  @functools.cached_property
  def _generate(self):
    method, options = self.method, self.sample_options
    return self._replicated_jit(lambda state, rng, tokens: method.generate_from_text(
        method.eval_state(state), rng, tokens, **options))

  def draw(self, state, prompts, *, salt: int) -> np.ndarray:
    """Images [len(prompts), H, W, C] in [0, 1] for `prompts`, from fixed noise, in
    batches of `batch_size` (the last one padded, so there is one compile)."""
    tokens = self.method.tokenize(prompts)
    size, chunks = self.config.batch_size, []
    for start in range(0, len(prompts), size):
      chunk = np.zeros((size, tokens.shape[1]), np.int32)
      part = tokens[start:start + size]
      chunk[:len(part)] = part
      rng = jax.random.fold_in(jax.random.fold_in(self.fixed_key, salt), start // size)
      images = self._generate(state, rng, jax.device_put(chunk, parallel.replicated(self.mesh)))
      chunks.append(parallel.fetch(images)[:len(part)])
    return np.concatenate(chunks)

  def _test_captions(self):
    """(images, first captions) of the first `caption_images` test examples."""
    images, captions = [], []
    for batch, host in self.batches():
      local = parallel.local_rows(batch['image'])
      mask = parallel.local_rows(batch[MASK_KEY]).astype(bool)
      for image, texts, keep in zip(local, host['captions'], mask):
        if keep and len(captions) < self.config.caption_images:
          images.append(image)
          captions.append(_text(texts[0]))
      if len(captions) >= self.config.caption_images:
        break
    return np.stack(images), captions

  def _apply(self, run, name, images=None, tokens=None):
    method, state, value_range, fns = run
    batch = ({'image': jnp.asarray(to_range(images, value_range))} if tokens is None
             else {'tokens': jnp.asarray(tokens)})
    return np.asarray(parallel.fetch(fns[name](state, batch)))

  def _class_images(self, state):
    per_class = self.config.samples_per_class
    prompts = [p for p in self.class_prompts for _ in range(per_class)]
    return prompts, self.draw(state, prompts, salt=1)

  def evaluate(self, state, *, step, rng):
    del step, rng  # Fixed randomness: evaluations compare across steps.
    results = {}
    if not (self.classifier or self.clip):
      return results
    prompts, images = self._class_images(state)
    if self.classifier is not None:
      per_class = self.config.samples_per_class
      predicted = np.concatenate([
          self._apply(self.classifier, 'predict', images[i:i + self.config.batch_size])
          for i in range(0, len(images), self.config.batch_size)]).argmax(-1)
      results.update(faithfulness(predicted, len(self.class_names), per_class,
                                  self.held_out_classes))
    if self.clip is not None:
      _, captions = self._test_captions()
      caption_images = self.draw(state, captions, salt=2)
      all_images = np.concatenate([images, caption_images])
      all_prompts = prompts + captions
      results['clip_score (project CLIP)'] = float(np.mean(self.clip_scores(all_images,
                                                                            all_prompts)))
    return results

  @property
  def held_out_classes(self) -> list[int]:
    """The classes whose colour-shape pairs the training data lacks (its metadata's
    `held_out`, as in `scenes/compositional`), by index."""
    held_out = (self.data_info.metadata or {}).get('held_out', ())
    return [self.class_names.index(name) for name in held_out if name in self.class_names]

  def clip_scores(self, images: np.ndarray, prompts) -> np.ndarray:
    """The cosine of each image [N, H, W, C] in [0, 1] and its prompt under the CLIP run."""
    clip_method = self.clip[0]
    size, scores = self.config.batch_size, []
    for i in range(0, len(images), size):
      image_e = self._apply(self.clip, 'embed_image', images[i:i + size])
      text_e = self._apply(self.clip, 'embed_text',
                           tokens=clip_method.tokenize(prompts[i:i + size]))
      scores.append(np.sum(np.asarray(losses.l2_normalize(image_e))
                           * np.asarray(losses.l2_normalize(text_e)), axis=-1))
    return np.concatenate(scores)

  def figures(self, state, *, step, rng):
    del rng
    real, captions = self._test_captions()
    drawn = self.draw(state, captions, salt=2)
    _, class_images = self._class_images(state) if self.class_prompts else (None, None)
    if jax.process_index() != 0:
      return []
    outdir, paths = self.make_outdir(), []
    path = os.path.join(outdir, 'captions.png')
    plotting.image_rows([real, drawn], path, row_labels=['test image', 'drawn'],
                        column_labels=[_short(c) for c in captions],
                        title=f'{self.name}: images drawn from test captions, step {step}')
    paths.append(path)
    if self.class_prompts:
      per_class = self.config.samples_per_class
      rows = [class_images[k * per_class:(k + 1) * per_class]
              for k in range(len(self.class_prompts))]
      path = os.path.join(outdir, 'class_prompts.png')
      novel = set(self.held_out_classes)
      labels = [p + ' (held out)' * (k in novel) for k, p in enumerate(self.class_prompts)]
      plotting.image_rows(rows, path, row_labels=labels,
                          title=f'{self.name}: images drawn from class prompts, step {step}')
      paths.append(path)
    return paths


def _text(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def _short(caption: str, width: int = 20, max_lines: int = 2) -> str:
  """A caption folded onto at most `max_lines` lines of about `width` characters (cut
  with '...'), for a column title: the figure leaves room for two lines."""
  lines, line = [], ''
  for word in caption.split():
    if line and len(line) + 1 + len(word) > width:
      lines.append(line)
      line = word
    else:
      line = f'{line} {word}'.strip()
  lines.append(line)
  if len(lines) > max_lines:
    lines = lines[:max_lines]
    lines[-1] += '...'
  return '\n'.join(lines)
