r"""Draws images from text with a trained text-to-image run (DALL-E's prior or text
diffusion), optionally re-ranked by a CLIP run.

  python -m vision_jax.generate --workdir /tmp/dalle_scenes_prior \
      --prompt "a small red circle." [--prompt ...] --out /tmp/dalle_samples \
      [--num 8] [--rerank_with /tmp/clip_scenes] [--keep K] [--seed 0] [--batch_size 64] \
      [--temperature T] [--top_k K]       # dalle's sampling options
      [--guidance W] [--steps S]          # text_diffusion's

Loads the run's latest checkpoint (for dalle also, through its config, the frozen VQ-VAE
it was trained on), draws `--num` candidates for each prompt and writes `samples.npz`
(`images`: uint8 [P * N, H, W, C], prompt by prompt; `prompts`: each image's prompt)
and `samples.png` (one row per prompt) into `--out`. With `--rerank_with`, each
prompt's candidates are ordered by the cosine similarity of the CLIP run's image and
text embeddings, best first (DALL-E's re-ranking), the `--keep` best are kept (all by
default) and the npz gets their `scores`. A missing workdir, a run that does not draw
from text, or a prompt whose words the run's vocabulary does not know at all is a
one-line error (exit code 2).
"""

import argparse
import math
import os
import sys
from typing import Sequence

import jax
import numpy as np

from vision_jax import checkpointing, config_lib, inference, losses, plotting
from vision_jax.data import text
from vision_jax.evaluators import text_to_image
from vision_jax.methods import get_method_class


class GenerateError(ValueError):
  """A run that cannot draw from text, or a bad request."""


def _load_text_to_image(workdir: str):
  method_name = inference.read_config(workdir).method
  if not hasattr(get_method_class(method_name), 'generate_from_text'):
    raise GenerateError(f'{workdir} holds a {method_name} run, which does not draw images '
                        'from text (a dalle or text_diffusion run does)')
  return inference.load_run(workdir)


def _check_prompts(vocab: text.Vocabulary, prompts: Sequence[str], workdir: str) -> None:
  for prompt in prompts:
    ids = vocab.word_ids(prompt)
    if not ids or all(i == vocab.unk_id for i in ids):
      raise GenerateError(f'prompt {prompt!r} has no word the vocabulary of {workdir} knows')


def check_clip_run(workdir: str) -> None:
  method_name = inference.read_config(workdir).method
  if method_name != 'clip':
    raise GenerateError(f'--rerank_with {workdir} holds a {method_name} run, not clip')


def clip_similarities(clip_workdir: str, images: np.ndarray, prompts: Sequence[str], *,
                      batch_size: int = 256) -> np.ndarray:
  """The cosine of each image [N, H, W, C] in [0, 1] and its prompt under a CLIP run,
  [N] float32, both towers in eval mode on the run's own input range."""
  check_clip_run(clip_workdir)
  config, clip, state = inference.load_run(clip_workdir, input_shape=images.shape[1:])
  value_range = text_to_image.input_range(config)
  embed_image = jax.jit(clip.prediction_function('embed_image'))
  embed_text = jax.jit(clip.prediction_function('embed_text'))
  scores = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    image_e = embed_image(state, {'image': text_to_image.to_range(chunk, value_range)})
    text_e = embed_text(state, {'tokens': clip.tokenize(prompts[start:start + batch_size])})
    scores.append(np.sum(np.asarray(losses.l2_normalize(image_e))
                         * np.asarray(losses.l2_normalize(text_e)), axis=-1))
  return np.concatenate(scores).astype(np.float32)


def draw(workdir: str, prompts: Sequence[str], *, num: int, seed: int = 0,
         batch_size: int = 64, **sample_options) -> tuple[np.ndarray, str]:
  """`(images float32 [len(prompts) * num, H, W, C] in [0, 1], run description)`,
  `num` candidates per prompt, prompt by prompt; `sample_options` are the method's
  (None: its default)."""
  config, method, state = _load_text_to_image(workdir)
  _check_prompts(method.vocab, prompts, workdir)
  options = method.sample_options(sample_options)
  top_k = options.get('top_k')
  if top_k is not None and not 1 <= top_k <= method.model.num_image_codes:
    raise GenerateError(f'--top_k {top_k} is not in [1, {method.model.num_image_codes}] '
                        "(the VQ-VAE's codes)")
  for name in ('temperature', 'guidance'):
    if options.get(name, 0) < 0:
      raise GenerateError(f'--{name} must be >= 0, got {options[name]}')
  eval_state = method.eval_state(state)
  generate = jax.jit(lambda rng, tokens: method.generate_from_text(
      eval_state, rng, tokens, **options))
  tokens = method.tokenize([p for p in prompts for _ in range(num)])
  key, chunks = jax.random.key(seed), []
  for start in range(0, len(tokens), batch_size):
    part = tokens[start:start + batch_size]
    chunk = np.zeros((batch_size, tokens.shape[1]), np.int32)  # One shape: one compile.
    chunk[:len(part)] = part
    images = generate(jax.random.fold_in(key, start // batch_size), chunk)
    chunks.append(np.asarray(images)[:len(part)])
  description = f'{config.method} on {config.data.name}'
  description += ' (' + ', '.join(f'{k}={v}' for k, v in options.items()) + ')'
  return np.concatenate(chunks), description


def rerank(scores: np.ndarray, num_prompts: int, keep: int) -> np.ndarray:
  """Indices into the [num_prompts * num] candidates: each prompt's `keep` best by
  score, best first, prompt by prompt (a stable sort keeps the draw order on ties)."""
  per_prompt = scores.reshape(num_prompts, -1)
  order = np.argsort(-per_prompt, axis=1, kind='stable')[:, :keep]
  return (order + per_prompt.shape[1] * np.arange(num_prompts)[:, None]).reshape(-1)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m vision_jax.generate',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True,
                      help='a text-to-image (dalle or text_diffusion) run')
  parser.add_argument('--prompt', action='append', required=True,
                      help='a text to draw images for; repeat for several')
  parser.add_argument('--out', required=True, help='folder for samples.npz and samples.png')
  parser.add_argument('--num', type=int, default=8, help='candidates per prompt')
  parser.add_argument('--rerank_with', default=None, help='a CLIP run that orders them')
  parser.add_argument('--keep', type=int, default=None,
                      help='the best candidates kept per prompt after re-ranking')
  parser.add_argument('--temperature', type=float, default=None, help='dalle: softmax temperature')
  parser.add_argument('--top_k', type=int, default=None, help='dalle: the most likely codes kept')
  parser.add_argument('--guidance', type=float, default=None,
                      help='text_diffusion: classifier-free guidance w')
  parser.add_argument('--steps', type=int, default=None, help='text_diffusion: sampling steps')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--batch_size', type=int, default=64)
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  if args.num < 1 or args.batch_size < 1:
    print('error: --num and --batch_size must be positive', file=sys.stderr)
    return 2
  if args.keep is not None and not (args.rerank_with and 1 <= args.keep <= args.num):
    print('error: --keep needs --rerank_with and a value in [1, --num]', file=sys.stderr)
    return 2
  prompts = list(args.prompt)
  try:
    if args.rerank_with:  # Before the drawing, which takes a while.
      check_clip_run(args.rerank_with)
    images, description = draw(
        args.workdir, prompts, num=args.num, seed=args.seed,
        batch_size=min(args.batch_size, args.num * len(prompts)),
        temperature=args.temperature, top_k=args.top_k, guidance=args.guidance,
        steps=args.steps)
    image_prompts = np.array([p for p in prompts for _ in range(args.num)])
    arrays = {}
    per_prompt = args.num
    if args.rerank_with:
      scores = clip_similarities(args.rerank_with, images, list(image_prompts),
                                 batch_size=args.batch_size)
      per_prompt = args.keep or args.num
      kept = rerank(scores, len(prompts), per_prompt)
      images, image_prompts, arrays['scores'] = images[kept], image_prompts[kept], scores[kept]
      description += ', re-ranked by CLIP'
  except (GenerateError, inference.RunError, config_lib.ConfigError,
          checkpointing.CheckpointError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  os.makedirs(args.out, exist_ok=True)
  uint8 = inference.to_uint8(images)
  np.savez(os.path.join(args.out, 'samples.npz'), images=uint8, prompts=image_prompts,
           **arrays)
  rows = [uint8[i:i + per_prompt] / 255.0 for i in range(0, len(uint8), per_prompt)]
  column_labels = ([f'{s:.3f}' for s in arrays['scores'][:per_prompt]]
                   if len(prompts) == 1 and 'scores' in arrays else ())
  plotting.image_rows(rows, os.path.join(args.out, 'samples.png'), row_labels=prompts,
                      column_labels=column_labels,
                      title=f'{len(uint8)} images of {description}',
                      cell_inches=max(0.5, min(0.9, 9 / math.sqrt(len(uint8)))))
  print(f'wrote {len(uint8)} images to {args.out}/samples.npz and samples.png')
  return 0


if __name__ == '__main__':
  sys.exit(main())
