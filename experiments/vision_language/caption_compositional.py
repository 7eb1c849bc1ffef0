r"""Captioning on `scenes/compositional`: are colour-shape pairs never seen in training
described?

  python -m vision_jax.train --workdir /tmp/caption_compositional_attention \
      --config experiments/vision_language/caption_compositional.py:decoder=attention

One object per image; eight colour-shape pairs (`scenes.HELD_OUT`, e.g. 'red circle')
never appear in training, while each colour and each shape does with other partners.
The recipe of `caption_scenes.py` (same `decoder=` choices and `:local`), evaluated on
`test` (pairs seen in training) and on `test_novel` (only the held-out pairs): BLEU,
CIDEr-D and truthfulness on each say how far the decoder composes words it has seen
apart.

Measured (`decoder=transformer`, 3 epochs, 936 steps of 64; 8 minutes of CPU time, 13
minutes of wall time on 2 cores of an AMD EPYC (AVX2) shared with other jobs), beam 3:
`test` BLEU-4 0.375, CIDEr-D 0.860, truthfulness 0.989; `test_novel` BLEU-4 0.325,
CIDEr-D 0.657, truthfulness 0.919. The high truthfulness is mostly that of safe
captions: 689 of the 2,000 novel images got 'a scene with one object.', true of every
image here and naming no colour or shape, so it says little about composition; BLEU and
CIDEr-D, which reward the reference words, drop on the novel pairs.
"""

import os

from vision_jax import config_lib

_RECIPE = config_lib.load_module(os.path.join(os.path.dirname(__file__), 'caption_scenes.py'))


def get_config(arg=None):
  args = config_lib.parse_config_args(arg)
  unknown = set(args) - {'decoder', 'local'}
  if unknown:
    raise ValueError(f'unknown arguments {sorted(unknown)}; use decoder=..., local')
  decoder = args.get('decoder', 'transformer')
  if decoder not in _RECIPE.DECODERS:
    raise ValueError(f'decoder must be one of {_RECIPE.DECODERS}, got {decoder!r}')
  return _RECIPE.captioning_config(decoder, 'local' in args, data_name='scenes/compositional',
                                   eval_splits=('test', 'test_novel'))
