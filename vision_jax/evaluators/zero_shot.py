"""Zero-shot classification from label text: CLIP's "create dataset classifier from label text".

Every class name c of the evaluator's data (its `label` feature's names, or
`class_names`) is put into each prompt template ('a {}.', 'an image of a {}.', ...),
the prompts are embedded by the method's text tower (`text_pred`, 'embed_text', on
token ids from `method.tokenize`), and each class's embedding is the mean of its
templates' normalised embeddings, normalised again (prompt ensembling, as in Radford
et al. 2021 and big_vision's discriminative classifier). A test image is assigned to
the class whose embedding is nearest (largest cosine similarity) to its image
embedding (`pred`, 'embed_image'). No label of this data is used anywhere: the class
names alone make the classifier.

Metrics: `accuracy` (top-1), `top5_accuracy` (with more than 5 classes),
`mean_per_class_accuracy` (over the classes present in the split), `num_examples`, `num_classes`, `num_prompts`. Figures, in
`workdir/<name>/`: `zero_shot.png` (test images with their five nearest classes, the
bars softmax(100 cos), OpenAI's display convention) and `confusion_matrix.png`.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from vision_jax import config_lib, evaluators, losses, metrics, parallel, plotting
from vision_jax.data.pipeline import MASK_KEY

DEFAULT_TEMPLATES = ('a {}.', 'a photo of a {}.', 'an image of a {}.')
# The temperature of the figure's bars (OpenAI's notebooks show softmax(100 cos)).
DISPLAY_SCALE = 100.0


def class_embeddings(prompt_embeddings: jax.Array) -> jax.Array:
  """[C, T, D] embeddings of C classes' T prompts -> [C, D]: the mean of the normalised
  prompt embeddings of each class, normalised."""
  return losses.l2_normalize(jnp.mean(losses.l2_normalize(prompt_embeddings), axis=1))


@functools.lru_cache(maxsize=None)
def _jitted_sums(predict, num_classes: int, mesh):
  def sums(state, batch, classifier):
    logits = predict(state, batch).astype(jnp.float32) @ classifier.T
    labels, mask = batch['label'], batch[MASK_KEY].astype(jnp.float32)
    predictions = jnp.argmax(logits, -1)
    out = {'count': mask.sum(),
           'accuracy': jnp.sum((predictions == labels) * mask),
           'confusion': metrics.confusion_matrix(labels, predictions, num_classes, mask)}
    if num_classes > 5:
      out['top5_accuracy'] = jnp.sum(metrics.topk_correct(logits, labels, 5) * mask)
    return out
  return jax.jit(parallel.under_mesh(mesh, sums), out_shardings=parallel.replicated(mesh))


class Evaluator(evaluators.Evaluator):
  """Options: templates (prompt templates with one '{}' for the class name),
  class_names (None: the data's label names; give readable names where the dataset's
  are identifiers), text_pred ('embed_text'), num_figure_images. `pred` defaults to
  'embed_image'; `batch_size` also bounds the prompts embedded at once."""
  OPTIONS = {'pred': 'embed_image', 'text_pred': 'embed_text', 'templates': DEFAULT_TEMPLATES,
             'class_names': None, 'num_figure_images': 12}

  def __init__(self, method, config, **kwargs):
    super().__init__(method, config, **kwargs)
    c, where = self.config, f'evals.{self.name}'
    names = tuple(c.class_names) if c.class_names else self.data_info.class_names
    if not names:
      raise config_lib.ConfigError(
          f'{where}: zero-shot classification needs class names; dataset '
          f'{self.data_info.name} has no named label feature and class_names is unset')
    if self.data_info.num_classes not in (None, len(names)):
      raise config_lib.ConfigError(
          f'{where}.class_names: {len(names)} names for the {self.data_info.num_classes} '
          f'classes of {self.data_info.name}')
    bad = [t for t in c.templates if t.count('{}') != 1]
    if not c.templates or bad:
      raise config_lib.ConfigError(
          f'{where}.templates: each template needs exactly one {{}} for the class name; '
          f'got {list(c.templates)}')
    if not hasattr(method, 'tokenize'):
      raise config_lib.ConfigError(
          f'{where}: method {method.config.method} has no text tokenizer for prompts')
    self.class_names = names
    self.prompts = [t.format(name) for name in names for t in c.templates]
    self.tokens = method.tokenize(self.prompts)  # [C * T, L], host-side
    self._embed_text = evaluators._jitted(method.prediction_function(c.text_pred), self.mesh)  # pylint: disable=protected-access
    self._sums = _jitted_sums(self.predict, len(names), self.mesh)
    self._last = None  # (step, confusion) of the last evaluation.

  def classifier(self, state) -> jax.Array:
    """[C, D] class embeddings from the label text, replicated on the mesh."""
    chunk = max(self.config.batch_size, 1)
    count = len(self.tokens)
    # Fixed-size chunks (the last padded with copies of the first rows): one compile.
    padded = np.concatenate([self.tokens, self.tokens[:(-count) % chunk]])
    replicated = parallel.replicated(self.mesh)
    embeddings = [self._embed_text(state, {'tokens': jax.device_put(padded[i:i + chunk],
                                                                    replicated)})
                  for i in range(0, len(padded), chunk)]
    embeddings = jnp.concatenate(embeddings)[:count]
    return class_embeddings(embeddings.reshape(len(self.class_names),
                                               len(self.config.templates), -1))

  def evaluate(self, state, *, step, rng):
    del rng
    classifier = self.classifier(state)
    totals = self.summed(lambda state, batch: self._sums(state, batch, classifier), state)
    count, confusion = totals.pop('count'), totals.pop('confusion')
    self._last = (step, confusion)
    results = {name: float(value / count) for name, value in totals.items()}
    # Over the classes the split holds (test_novel holds only the held-out pairs).
    present = confusion.sum(1) > 0
    per_class = np.diag(confusion)[present] / confusion.sum(1)[present]
    results.update(mean_per_class_accuracy=float(per_class.mean()),
                   num_examples=float(count), num_classes=float(len(self.class_names)),
                   num_prompts=float(len(self.prompts)))
    return results

  def figures(self, state, *, step, rng):
    if self._last is None or self._last[0] != step:
      self.evaluate(state, step=step, rng=rng)
    classifier = self.classifier(state)
    batch, _ = next(self.batches())
    embeddings, mask = evaluators.local_outputs(self.predict(state, batch), batch[MASK_KEY])
    if jax.process_index() != 0:
      return []
    count = min(self.config.num_figure_images, int(mask.sum()))
    images = parallel.local_rows(batch['image'])[mask][:count]
    labels = parallel.local_rows(batch['label'])[mask][:count]
    cosine = np.asarray(embeddings[mask][:count], np.float32) @ np.asarray(classifier).T
    probabilities = np.asarray(jax.nn.softmax(DISPLAY_SCALE * cosine, axis=-1))
    top = np.argsort(-probabilities, axis=-1)[:, :5]
    outdir = self.make_outdir()
    paths = [os.path.join(outdir, 'zero_shot.png'), os.path.join(outdir, 'confusion_matrix.png')]
    plotting.top_k_bars(
        images, [[self.class_names[k] for k in row] for row in top],
        np.take_along_axis(probabilities, top, -1), [self.class_names[y] for y in labels],
        paths[0], title=f'{self.name}: zero-shot top-5 on {self.data_info.name} '
                        f'{self.config.data.split} from label text only (green: the true '
                        f'class), step {step}')
    plotting.confusion_matrix(self._last[1], self.class_names, paths[1])
    return paths
