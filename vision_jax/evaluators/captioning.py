"""Captioning evaluator: BLEU-1..4 and CIDEr-D on all references, truthfulness on scenes.

Decodes every image of `data.split` with the method's `caption` prediction (beam search
as `captioning.beam_size` says) and scores the captions against all the image's
reference captions (`references_key`, kept on the host through `keep_on_cpu`) with the
COCO caption evaluation's BLEU and CIDEr-D (`vision_jax.caption_metrics`). On `scenes`
data (`objects/...` fields kept on the host) the dataset's own reader also judges each
caption: `truthfulness` (the fraction of captions true of their image), `readable` and
`objects_mentioned` (see `data.scenes_reader`); this says what BLEU cannot.

Files, in `workdir/<name>/`: `captions_<split>.json` (every evaluation, the COCO
results format `[{"image_id", "caption"}]`) and, once, `references_<split>.json` (the
COCO captions annotation format), so the COCO caption tools can rescore them;
figures `captions.png` (test images with generated and reference captions) and, for
the decoders with attention, `attention.png` (each generated word's attention over the
image; the last layer's cross-attention for a Transformer decoder).
"""

import json
import os

import jax
import numpy as np

from vision_jax import caption_metrics, evaluators, parallel, plotting
from vision_jax.data import scenes_reader, text
from vision_jax.data.pipeline import MASK_KEY

OBJECT_FIELDS = ('objects/bbox', 'objects/shape', 'objects/color', 'objects/size')


def _strings(values) -> list[str]:
  return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values).ravel()]


class Evaluator(evaluators.Evaluator):
  """Options: references_key (the host field of each image's reference captions),
  image_id_key (a host field with each image's id, e.g. COCO's 'image/id'; unset, the
  position in the split), num_figure_images, num_attention_images."""
  OPTIONS = {'pred': 'caption', 'references_key': 'captions', 'image_id_key': None,
             'num_figure_images': 8, 'num_attention_images': 3}

  def __init__(self, method, config, **kwargs):
    super().__init__(method, config, **kwargs)
    c = self.config
    needed = [c.references_key] + ([c.image_id_key] if c.image_id_key else [])
    missing = [k for k in needed if k not in c.keep_on_cpu]
    if missing:
      raise ValueError(f'evals.{self.name}: keep_on_cpu must name {missing} '
                       f'(it names {list(c.keep_on_cpu)})')
    self.vocab = method.vocab
    self.has_attention = method.model.decoder != 'rnn'
    if self.has_attention:
      self._attention = evaluators._jitted(method.prediction_function('attention'), self.mesh)  # pylint: disable=protected-access
    self.judge = all(k in c.keep_on_cpu for k in OBJECT_FIELDS)
    self._last = None  # (step, rows) of the last evaluation, reused by the figures

  def _decode_all(self, state):
    """`[(image_id, caption, references, objects or None)]` of the whole split, on
    process 0 (None elsewhere), and the first batch's images and tokens for figures."""
    c = self.config
    rows, first = [], None
    for batch, host in self.batches():
      tokens, mask = evaluators.local_outputs(self.predict(state, batch), batch[MASK_KEY])
      if first is None:
        first = (parallel.local_rows(batch['image'])[mask], tokens[mask])
      for i in np.flatnonzero(mask):
        objects = None
        if self.judge:
          objects = scenes_reader.objects_from_features(
              *(np.asarray(host[k][i]) for k in OBJECT_FIELDS))
        image_id = int(np.asarray(host[c.image_id_key][i])) if c.image_id_key else None
        rows.append((image_id, self.vocab.decode(tokens[i]),
                     _strings(host[c.references_key][i]), objects))
    rows = evaluators.gather_rows(rows)
    if rows is not None:
      rows = [(index if image_id is None else image_id, *rest)
              for index, (image_id, *rest) in enumerate(rows)]
    return rows, first

  def evaluate(self, state, *, step, rng):
    del rng
    rows, first = self._decode_all(state)
    self._last = (step, first)
    if rows is None:
      return {}
    hypotheses = {image_id: caption for image_id, caption, _, _ in rows}
    references = {image_id: refs for image_id, _, refs, _ in rows}
    results = caption_metrics.caption_scores(hypotheses, references)
    results['num_examples'] = float(len(rows))
    results['mean_length'] = float(np.mean([len(caption_metrics.caption_tokens(h).split())
                                            for h in hypotheses.values()]))
    if self.judge:
      results.update(scenes_reader.caption_truth([r[1] for r in rows], [r[3] for r in rows]))
    self._write_json(rows)
    return results

  def _write_json(self, rows):
    outdir = self.make_outdir()
    split = self.config.data.split.replace('/', '_')
    with open(os.path.join(outdir, f'captions_{split}.json'), 'w') as f:
      json.dump([{'image_id': i, 'caption': caption} for i, caption, _, _ in rows], f)
    path = os.path.join(outdir, f'references_{split}.json')
    if not os.path.exists(path):
      annotations = [{'image_id': i, 'id': len(rows) * k + n, 'caption': ref}
                     for n, (i, _, refs, _) in enumerate(rows) for k, ref in enumerate(refs)]
      with open(path, 'w') as f:
        json.dump({'info': {'description': f'{self.data_info.name} {split} references'},
                   'licenses': [], 'type': 'captions',
                   'images': [{'id': i} for i, _, _, _ in rows],
                   'annotations': annotations}, f)

  def figures(self, state, *, step, rng):
    del rng
    if self._last is not None and self._last[0] == step:
      first = self._last[1]
    else:
      batch, _ = next(self.batches())
      tokens, mask = evaluators.local_outputs(self.predict(state, batch), batch[MASK_KEY])
      first = (parallel.local_rows(batch['image'])[mask], tokens[mask])
    images, tokens = first
    paths = []
    if self.has_attention:
      attention_path = self._attention_figure(state, images, tokens, step)
    if jax.process_index() != 0:
      return []
    batch_refs = next(self.batches())[1][self.config.references_key]
    count = min(self.config.num_figure_images, len(images))
    texts = [[self.vocab.decode(tokens[i]), _strings(batch_refs[i])[0]] for i in range(count)]
    path = os.path.join(self.make_outdir(), 'captions.png')
    plotting.captioned_images(
        images[:count], texts, path, line_labels=('generated', 'reference'),
        title=f'{self.name}: {self.data_info.name} {self.config.data.split}, step {step}')
    paths.append(path)
    if self.has_attention and attention_path:
      paths.append(attention_path)
    return paths

  def _attention_figure(self, state, images, tokens, step):
    """attention.png: each generated word's attention map over its image."""
    count = min(self.config.num_attention_images, len(images))
    if not count:
      return None
    # The decoder's input for word t is word t - 1: bos, then the caption.
    bos = np.full((len(tokens), 1), text.Vocabulary.bos_id, np.int32)
    inputs = np.concatenate([bos, tokens[:, :-1]], 1).astype(np.int32)
    local = parallel.local_batch_size(self.config.batch_size, self.mesh)
    pad = lambda x: np.concatenate([x, np.zeros((local - len(x), *x.shape[1:]), x.dtype)])
    batch = parallel.to_global({'image': pad(images[:local].astype(np.float32)),
                                'tokens': pad(inputs[:local])}, self.mesh)
    attention = parallel.local_rows(self._attention(state, batch))
    if jax.process_index() != 0:
      return None
    rows = []
    for i in range(count):
      words = [self.vocab.tokens[t] for t in tokens[i]]
      length = words.index(text.EOS) + 1 if text.EOS in words else len(words)
      side = int(round(np.sqrt(attention.shape[-1])))
      maps = attention[i, :length].reshape(length, side, -1)
      rows.append((images[i], words[:length], maps))
    path = os.path.join(self.make_outdir(), 'attention.png')
    kind = ("the last decoder layer's cross-attention (mean of its heads)"
            if self.method.model.decoder == 'transformer' else 'the soft attention')
    plotting.attention_maps(rows, path, title=f'{self.name}: {kind} over the image while '
                                              f'generating each word, step {step}')
    return path

