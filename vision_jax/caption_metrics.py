"""BLEU-1..4 and CIDEr-D of generated captions against all references, as the COCO
caption evaluation computes them (`pycocoevalcap`'s pure-Python `Bleu` and `Cider`).

The COCO toolkit first runs the Stanford PTB tokenizer, which needs Java; the texts of
this project are tokenized the same way without it: lower case, punctuation split off
and dropped (`caption_tokens`). The BLEU is corpus-level, with the reference length
closest to each hypothesis; the CIDEr is CIDEr-D (clipped n-gram counts, the Gaussian
length penalty with sigma 6, scaled by 10), its idf taken from the references of the
evaluated images, as in the COCO evaluation server.
"""

from typing import Mapping, Sequence

from vision_jax.data import text

# pycocoevalcap's tokenizer drops these tokens (tokenizer/ptbtokenizer.py).
PUNCTUATION = frozenset(["''", "'", '``', '`', '-LRB-', '-RRB-', '-LCB-', '-RCB-', '.', '?',
                         '!', ',', ':', '-', '--', '...', ';'])


def caption_tokens(caption: str) -> str:
  """The caption as the COCO evaluation sees it: lower-case words joined by spaces."""
  return ' '.join(w for w in text.split_words(caption) if w not in PUNCTUATION)


def caption_scores(hypotheses: Mapping[int, str], references: Mapping[int, Sequence[str]]
                   ) -> dict[str, float]:
  """{'bleu1'..'bleu4', 'cider'} of one hypothesis per image id against its references."""
  from pycocoevalcap.bleu.bleu import Bleu  # pylint: disable=g-import-not-at-top
  from pycocoevalcap.cider.cider import Cider  # pylint: disable=g-import-not-at-top
  if set(hypotheses) != set(references):
    raise ValueError('caption_scores: hypotheses and references are of different images')
  if not hypotheses:
    raise ValueError('caption_scores: no captions to score')
  res = {i: [caption_tokens(h)] for i, h in hypotheses.items()}
  gts = {i: [caption_tokens(r) for r in refs] for i, refs in references.items()}
  bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
  cider, _ = Cider().compute_score(gts, res)
  return {**{f'bleu{n + 1}': float(b) for n, b in enumerate(bleu)}, 'cider': float(cider)}
