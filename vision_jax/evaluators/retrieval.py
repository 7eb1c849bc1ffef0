"""Image-text retrieval: recall@k in both directions, as reported for CLIP on COCO.

Each test image comes with its K texts as token ids `tokens` [K, L] (e.g.
`tokenize(L, inkey='captions', outkey='tokens')`, all of an image's captions). The
method embeds the images (`pred`, 'embed_image') and the texts (`text_pred`,
'embed_text'); every image is compared with every text of the split by cosine
similarity, on the host, once all embeddings are gathered:

  image_to_text/recall@k  the fraction of images with one of their own texts among
                          the k most similar of all N K texts;
  text_to_image/recall@k  the fraction of texts whose image is among the k most
                          similar of the N images.

A text tied with others counts as ranked below them (the conservative choice). Texts
that fit many images ('exactly one thing.') cap the text-to-image recall below 1.
Figure, in `workdir/<name>/`: `similarity.png`, the cosine similarities of the first
`num_figure_images` test images and their first texts.
"""

import functools
import os

import jax
import numpy as np

from vision_jax import config_lib, evaluators, parallel, plotting
from vision_jax.data import text
from vision_jax.data.pipeline import MASK_KEY

CHUNK_ROWS = 1024  # Query rows scored at once: bounds the host memory of the ranking.


def rank_of_first_match(similarity: np.ndarray, matches: np.ndarray) -> np.ndarray:
  """[Q] the 0-based rank of each query's best-ranked match among all candidates:
  the number of candidates scoring strictly higher than it, ties counting above.

  `similarity` [Q, C] scores, `matches` [Q, C] bool (at least one per row)."""
  best_match = np.where(matches, similarity, -np.inf).max(axis=1, keepdims=True)
  above = (similarity > best_match) | ((similarity == best_match) & ~matches)
  return above.sum(axis=1)


def recall_at_k(image_embeddings: np.ndarray, text_embeddings: np.ndarray,
                ks=(1, 5, 10)) -> dict[str, float]:
  """Recall@k in both directions for N images [N, D] and their K texts each [N, K, D]."""
  n, k_texts = text_embeddings.shape[:2]
  texts = text_embeddings.reshape(n * k_texts, -1)
  owner = np.repeat(np.arange(n), k_texts)  # the image of each text
  image_ranks, text_ranks = [], []
  for start in range(0, n, CHUNK_ROWS):
    rows = np.arange(start, min(start + CHUNK_ROWS, n))
    image_ranks.append(rank_of_first_match(image_embeddings[rows] @ texts.T,
                                           owner[None] == rows[:, None]))
  for start in range(0, n * k_texts, CHUNK_ROWS):
    rows = np.arange(start, min(start + CHUNK_ROWS, n * k_texts))
    text_ranks.append(rank_of_first_match(texts[rows] @ image_embeddings.T,
                                          np.arange(n)[None] == owner[rows, None]))
  image_ranks, text_ranks = np.concatenate(image_ranks), np.concatenate(text_ranks)
  results = {}
  for k in ks:
    results[f'image_to_text/recall@{k}'] = float(np.mean(image_ranks < k))
    results[f'text_to_image/recall@{k}'] = float(np.mean(text_ranks < k))
  return results


@functools.lru_cache(maxsize=None)
def _jitted_embeddings(embed_image, embed_text, mesh):
  def both(state, batch):
    return embed_image(state, batch), embed_text(state, batch)
  return jax.jit(parallel.under_mesh(mesh, both))


class Evaluator(evaluators.Evaluator):
  """Options: text_pred ('embed_text'), ks (the k of recall@k), num_figure_images.
  `pred` defaults to 'embed_image'."""
  OPTIONS = {'pred': 'embed_image', 'text_pred': 'embed_text', 'ks': (1, 5, 10),
             'num_figure_images': 8}

  def __init__(self, method, config, **kwargs):
    super().__init__(method, config, **kwargs)
    if not self.config.ks or min(self.config.ks) < 1:
      raise config_lib.ConfigError(f'evals.{self.name}.ks: {self.config.ks} must be >= 1')
    self._embed = _jitted_embeddings(method.prediction_function(self.config.pred),
                                     method.prediction_function(self.config.text_pred),
                                     self.mesh)
    vocab = getattr(method, 'vocab', None)
    if isinstance(vocab, text.Vocabulary) and 'vocabulary' in (self.data_info.metadata or {}):
      # The pp's `tokenize` uses this data's vocabulary: it must be the model's.
      if text.from_metadata(self.data_info.metadata).tokens != vocab.tokens:
        raise config_lib.ConfigError(
            f'evals.{self.name}: dataset {self.data_info.name} has another word vocabulary '
            'than the training data, so its token ids mean other words to the model')
    self._first = None  # (step, images, image and text embeddings, tokens) of batch 1

  def _embed_all(self, state):
    """Every test image's and text's embeddings, gathered on process 0 (None elsewhere),
    and the first batch's images and embeddings for the figure."""
    images, texts, first = [], [], None
    for batch, _ in self.batches():
      if 'tokens' not in batch or batch['tokens'].ndim != 3:
        raise config_lib.ConfigError(
            f'evals.{self.name}.pp must give each image its texts as tokens [K, L], e.g. '
            f"tokenize(L, inkey='captions', outkey='tokens'); got fields {sorted(batch)}")
      (image_e, text_e), mask = evaluators.local_outputs(self._embed(state, batch),
                                                         batch[MASK_KEY])
      images.append(np.asarray(image_e[mask], np.float32))
      texts.append(np.asarray(text_e[mask], np.float32))
      if first is None:
        first = (parallel.local_rows(batch['image'])[mask], images[-1], texts[-1],
                 parallel.local_rows(batch['tokens'])[mask][:, 0])
    gathered = evaluators.gather_rows([(np.concatenate(images), np.concatenate(texts))])
    if gathered is None:
      return None, None, first
    return (np.concatenate([i for i, _ in gathered]), np.concatenate([t for _, t in gathered]),
            first)

  def evaluate(self, state, *, step, rng):
    del rng
    images, texts, first = self._embed_all(state)
    self._first = (step, *first)
    if images is None:
      return {}
    results = recall_at_k(images, texts, tuple(self.config.ks))
    results.update(num_images=float(len(images)), num_texts=float(texts.shape[0] * texts.shape[1]))
    return results

  def figures(self, state, *, step, rng):
    if self._first is None or self._first[0] != step:
      self.evaluate(state, step=step, rng=rng)
    _, images, image_e, text_e, tokens = self._first
    if jax.process_index() != 0:
      return []
    count = min(self.config.num_figure_images, len(images))
    vocab = getattr(self.method, 'vocab', None)
    texts = [vocab.decode(t) if vocab is not None else f'text of image {i}'
             for i, t in enumerate(tokens[:count])]
    path = os.path.join(self.make_outdir(), 'similarity.png')
    plotting.similarity_matrix(
        text_e[:count, 0] @ image_e[:count].T, images[:count], texts, path,
        title=f'{self.name}: cosine similarity of {self.data_info.name} '
              f'{self.config.data.split} images (top) and their first texts (left); '
              f'matches on the diagonal, step {step}')
    return [path]
