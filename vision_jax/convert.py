r"""Pretrained PyTorch weights into the project's models: torchvision ResNets and ViTs,
OpenAI / open_clip CLIP.

  python -m vision_jax.convert --from torchvision --arch resnet50 \
      --in resnet50-11ad3fa6.pth --out /tmp/resnet50_torchvision
  python -m vision_jax.convert --from open_clip --arch ViT-B-32-quickgelu \
      --in open_clip_pytorch_model.bin --out /tmp/clip_vit_b32

`--out` gets `checkpoints/0/default`, an Orbax checkpoint of `{'params', 'model_state'}`
laid out like a training run's, so `--config.init_from.path=/tmp/resnet50_torchvision`
starts a run from it (add `--config.init_from.exclude="('params/head',)"` for a new
classifier), and `model.json`: the `config.model` that holds these weights and the
preprocessing they were trained with. `config.init_from.path` also takes the
`.safetensors` (or `.pth`) file itself and converts it on the fly, the architecture then
read from the tensors.

The mapping is explicit: every source tensor is used exactly once (BatchNorm's
`num_batches_tracked` and OpenAI's metadata integers excepted), every shape is checked
against the project's model, convolution kernels go from OIHW to HWIO, dense kernels are
transposed, attention's packed `in_proj` is split into query, key and value per head, and
BatchNorm running statistics go to `model_state/batch_stats`. The first tensor that
does not fit is named in a one-line error.

Covered: torchvision `resnet18/34/50/101/152` and `vit_b_16/b_32/l_16/l_32/h_14` (at any
image size and head), open_clip's ViT CLIPs (`ViT-B-32`, `ViT-B-16`, `ViT-L-14`; append
`-quickgelu` for OpenAI's weights, which use QuickGELU; `--arch auto` reads the sizes from
the tensors). Nothing is downloaded: the user brings the file. `.safetensors` is read
without PyTorch; `.pth`, `.pt` and `.bin` files (pickles, or OpenAI's TorchScript
archives) need PyTorch installed.

OpenAI's CLIP tokenizer is `vision_jax.data.bpe`, with the `bpe_simple_vocab_16e6.txt.gz`
the user has (`bpe_tokenize(77, '<path>')`; its end-of-text id 49407 is the converted
model's `eos_id`).
"""

import argparse
import dataclasses
import json
import math
import os
import re
import sys
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vision_jax import models
from vision_jax.models import resnet, vit

SOURCES = ('torchvision', 'open_clip')
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Integers OpenAI's checkpoints carry beside the weights, and BatchNorm's step counter.
_NOT_WEIGHTS = re.compile(r'(^|\.)(num_batches_tracked|input_resolution|context_length|'
                          r'vocab_size)$')

TORCHVISION_RESNETS = {f'resnet{d}': d for d in (18, 34, 50, 101, 152)}
TORCHVISION_VITS = {'vit_b_16': 'B/16', 'vit_b_32': 'B/32', 'vit_l_16': 'L/16',
                    'vit_l_32': 'L/32', 'vit_h_14': 'H/14'}
# open_clip name -> (image ViT variant, text width, text heads, embedding width)
OPEN_CLIP_VITS = {'ViT-B-32': ('B/32', 512, 8, 512), 'ViT-B-16': ('B/16', 512, 8, 512),
                  'ViT-L-14': ('L/14', 768, 12, 768)}


class ConversionError(ValueError):
  """Weights that do not fit the architecture, or a file that cannot be read."""


# Reading the source file.

def _unwrap(state: Any) -> Any:
  """The state dict inside the usual wrappers ({'state_dict': ...}, {'model': ...})."""
  for key in ('state_dict', 'model', 'module'):
    if isinstance(state, dict) and key in state and isinstance(state[key], dict):
      return _unwrap(state[key])
  return state


def read_tensors(path: str) -> dict[str, np.ndarray]:
  """name -> float32 (or integer) numpy array of a `.safetensors` or PyTorch file."""
  path = os.path.expanduser(path)
  if not os.path.isfile(path):
    raise ConversionError(f'weights file {path} does not exist')
  if path.endswith('.safetensors'):
    from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
    try:
      tensors = safetensors_numpy.load_file(path)
    except Exception as e:  # safetensors raises its own error types for damaged files.
      raise ConversionError(f'{path} is not a readable .safetensors file: {e}') from None
  else:
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ConversionError(
          f'{path}: reading a PyTorch file needs PyTorch (pip install torch); '
          '.safetensors files need no PyTorch') from None
    try:
      state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception:  # pylint: disable=broad-except
      try:  # OpenAI's CLIP files are TorchScript archives.
        state = torch.jit.load(path, map_location='cpu').state_dict()
      except Exception as e:  # pylint: disable=broad-except
        raise ConversionError(f'{path} is neither a PyTorch state dict nor a TorchScript '
                              f'archive: {str(e).splitlines()[0][:300]}') from None
    state = _unwrap(state)
    if not isinstance(state, dict):
      raise ConversionError(f'{path} holds a {type(state).__name__}, not a state dict')
    tensors = {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
               for k, v in state.items() if isinstance(v, torch.Tensor)}
  return {k: (v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v)
          for k, v in tensors.items()}


# The mapping: project variable paths from source tensors, each used once.

class Mapped(NamedTuple):
  """A project variable and the source tensor it came from (for the errors)."""
  value: np.ndarray
  source: str


class _Source:
  """The source tensors; `take` hands each out once and checks its rank."""

  def __init__(self, tensors: dict[str, np.ndarray], where: str):
    self.tensors, self.where, self.used = tensors, where, set()

  def has(self, name: str) -> bool:
    return name in self.tensors

  def take(self, name: str, ndim: int, transform: Callable[[np.ndarray], np.ndarray]
           = lambda a: a) -> Mapped:
    if name not in self.tensors:
      raise ConversionError(f'{self.where}: tensor {name} is missing')
    if name in self.used:
      raise ConversionError(f'{self.where}: tensor {name} is used twice by the mapping')
    array = self.tensors[name]
    if array.ndim != ndim:
      raise ConversionError(f'{self.where}: tensor {name} is {list(array.shape)}, '
                            f'not of rank {ndim}')
    self.used.add(name)
    return Mapped(np.array(transform(array), order="C"), name)

  def dense(self, prefix: str, bias: bool = True) -> dict[str, Mapped]:
    out = {'kernel': self.take(f'{prefix}.weight', 2, np.transpose)}
    if bias:
      out['bias'] = self.take(f'{prefix}.bias', 1)
    return out

  def conv(self, name: str) -> Mapped:
    return self.take(name, 4, lambda w: w.transpose(2, 3, 1, 0))  # OIHW -> HWIO

  def layer_norm(self, prefix: str) -> dict[str, Mapped]:
    return {'scale': self.take(f'{prefix}.weight', 1), 'bias': self.take(f'{prefix}.bias', 1)}

  def attention(self, prefix: str, heads: int) -> dict[str, Any]:
    """PyTorch's `nn.MultiheadAttention` (packed q, k, v rows) as Flax's per-head kernels."""
    packed_kernel = self.take(f'{prefix}.in_proj_weight', 2)
    packed_bias = self.take(f'{prefix}.in_proj_bias', 1)
    width = packed_kernel.value.shape[1]
    if packed_kernel.value.shape[0] != 3 * width or width % heads:
      raise ConversionError(f'{self.where}: tensor {packed_kernel.source} is '
                            f'{list(packed_kernel.value.shape)}, not [3 * width, width] '
                            f'with a width divisible by {heads} heads')
    head_width = width // heads
    out = {}
    for i, name in enumerate(('query', 'key', 'value')):
      rows = slice(i * width, (i + 1) * width)
      out[name] = {
          'kernel': Mapped(packed_kernel.value[rows].T.reshape(width, heads, head_width),
                           packed_kernel.source),
          'bias': Mapped(packed_bias.value[rows].reshape(heads, head_width),
                         packed_bias.source)}
    out['out'] = {'kernel': self.take(f'{prefix}.out_proj.weight', 2,
                                      lambda w: w.T.reshape(heads, head_width, width)),
                  'bias': self.take(f'{prefix}.out_proj.bias', 1)}
    return out

  def check_all_used(self) -> None:
    unused = sorted(k for k in self.tensors if k not in self.used and not _NOT_WEIGHTS.search(k))
    if unused:
      raise ConversionError(f'{self.where}: {len(unused)} tensors have no place in the model, '
                            f'the first {unused[0]} {list(self.tensors[unused[0]].shape)}')


def _count(tensors, pattern: str) -> int:
  """The number of distinct indices captured by `pattern` among the tensor names."""
  return len({m.group(1) for k in tensors if (m := re.match(pattern, k))})


# torchvision ResNet.

def _torchvision_resnet_config(tensors, arch: str | None) -> dict:
  if arch is not None:
    depth = TORCHVISION_RESNETS[arch]
  else:
    stages = tuple(_count(tensors, rf'layer{k}\.(\d+)\.') for k in range(1, 5))
    bottleneck = 'layer1.0.conv3.weight' in tensors
    depths = [d for d, (block, sizes) in resnet.STAGES.items()
              if sizes == stages and (block is resnet.BottleneckBlock) == bottleneck]
    if not depths:
      raise ConversionError(f'the tensors look like a torchvision ResNet with stages '
                            f'{stages}, which is no ResNet-18/34/50/101/152')
    depth = depths[0]
  head = tensors.get('fc.weight')
  filters = tensors['conv1.weight'].shape[0] if 'conv1.weight' in tensors else 64
  return {'name': 'resnet', 'depth': depth, 'num_filters': int(filters),
          'num_classes': None if head is None else int(head.shape[0])}


def _torchvision_resnet(src: _Source, config: dict) -> dict:
  params = {'conv_init': {'kernel': src.conv('conv1.weight')}}
  stats = {}

  def batch_norm(prefix, name, into_params, into_stats):
    into_params[name] = {'scale': src.take(f'{prefix}.weight', 1),
                         'bias': src.take(f'{prefix}.bias', 1)}
    into_stats[name] = {'mean': src.take(f'{prefix}.running_mean', 1),
                        'var': src.take(f'{prefix}.running_var', 1)}

  batch_norm('bn1', 'bn_init', params, stats)
  block, stage_sizes = resnet.STAGES[config['depth']]
  convs = 3 if block is resnet.BottleneckBlock else 2
  for stage, num_blocks in enumerate(stage_sizes):
    for i in range(num_blocks):
      prefix, name = f'layer{stage + 1}.{i}', f'stage{stage + 1}_block{i + 1}'
      block_params, block_stats = params.setdefault(name, {}), stats.setdefault(name, {})
      for c in range(1, convs + 1):
        block_params[f'conv{c}'] = {'kernel': src.conv(f'{prefix}.conv{c}.weight')}
        batch_norm(f'{prefix}.bn{c}', f'bn{c}', block_params, block_stats)
      if src.has(f'{prefix}.downsample.0.weight'):
        block_params['conv_proj'] = {'kernel': src.conv(f'{prefix}.downsample.0.weight')}
        batch_norm(f'{prefix}.downsample.1', 'bn_proj', block_params, block_stats)
  if config['num_classes'] is not None:
    params['head'] = src.dense('fc')
  return {'params': params, 'model_state': {'batch_stats': stats}}


# ViT encoders (torchvision's and CLIP's image tower).

def _heads_for_width(width: int, where: str) -> int:
  for size_width, _, _, heads in vit.SIZES.values():
    if size_width == width:
      return heads
  raise ConversionError(f'{where}: a ViT of width {width} is none of the sizes '
                        f'{sorted(vit.SIZES)}, so its number of heads is unknown')


def _torchvision_vit_config(tensors, arch: str | None) -> dict:
  where = 'torchvision ViT'
  for name in ('conv_proj.weight', 'encoder.pos_embedding'):
    if name not in tensors:
      raise ConversionError(f'{where}: tensor {name} is missing')
  width, _, patch, _ = tensors['conv_proj.weight'].shape
  if arch is not None:
    sizes = vit.decode_variant(TORCHVISION_VITS[arch])
  else:
    depth = _count(tensors, r'encoder\.layers\.encoder_layer_(\d+)\.')
    mlp = tensors.get('encoder.layers.encoder_layer_0.mlp.0.weight')
    sizes = dict(width=int(width), depth=depth, patch_size=int(patch),
                 num_heads=_heads_for_width(int(width), where),
                 mlp_dim=int(mlp.shape[0]) if mlp is not None else 4 * int(width))
  head = tensors.get('heads.head.weight')
  pre_logits = tensors.get('heads.pre_logits.weight')
  return {'name': 'vit', 'variant': None, **sizes, 'pool': 'cls', 'posemb': 'learn',
          'representation_size': None if pre_logits is None else int(pre_logits.shape[0]),
          'num_classes': None if head is None else int(head.shape[0])}


def _vit_image_size(tensors, pos_name: str, patch: int) -> int:
  tokens = tensors[pos_name].shape[-2] - 1  # Without the class token.
  side = math.isqrt(tokens)
  if side * side != tokens:
    raise ConversionError(f'{pos_name} covers {tokens} patches, not a square grid')
  return side * patch


def _encoder_blocks(src: _Source, prefix: str, depth: int, heads: int, names: dict) -> dict:
  """`encoderblock_{i}` of `models.transformer.Encoder` from PyTorch's blocks
  `{prefix}{i}.*`; `names` gives the source's sub-module names."""
  blocks = {}
  for i in range(depth):
    p = f'{prefix}{i}'
    blocks[f'encoderblock_{i}'] = {
        'LayerNorm_0': src.layer_norm(f'{p}.{names["ln_1"]}'),
        'MultiHeadDotProductAttention_0': src.attention(f'{p}.{names["attn"]}', heads),
        'LayerNorm_1': src.layer_norm(f'{p}.{names["ln_2"]}'),
        'MlpBlock_0': {'Dense_0': src.dense(f'{p}.{names["fc1"]}'),
                       'Dense_1': src.dense(f'{p}.{names["fc2"]}')}}
  return blocks


def _torchvision_vit(src: _Source, config: dict) -> dict:
  params = {
      'embedding': {'kernel': src.conv('conv_proj.weight'), 'bias': src.take('conv_proj.bias', 1)},
      'cls': src.take('class_token', 3),
      'pos_embedding': src.take('encoder.pos_embedding', 3),
      'Transformer': {
          **_encoder_blocks(src, 'encoder.layers.encoder_layer_', config['depth'],
                            config['num_heads'], dict(ln_1='ln_1', attn='self_attention',
                                                      ln_2='ln_2', fc1='mlp.0', fc2='mlp.3')),
          'encoder_norm': src.layer_norm('encoder.ln')}}
  if config['representation_size'] is not None:
    params['pre_logits'] = src.dense('heads.pre_logits')
  if config['num_classes'] is not None:
    params['head'] = src.dense('heads.head')
  return {'params': params, 'model_state': {}}


# open_clip / OpenAI CLIP.

OPEN_CLIP_BLOCK = dict(ln_1='ln_1', attn='attn', ln_2='ln_2', fc1='mlp.c_fc', fc2='mlp.c_proj')


def _open_clip_config(tensors, arch: str | None) -> dict:
  where = 'open_clip CLIP'
  for name in ('visual.conv1.weight', 'visual.positional_embedding', 'token_embedding.weight',
               'positional_embedding', 'text_projection', 'visual.proj'):
    if name not in tensors:
      raise ConversionError(f'{where}: tensor {name} is missing (only ViT image towers '
                            'are covered)')
  quick_gelu = arch is not None and arch.endswith('-quickgelu')
  base = arch.removesuffix('-quickgelu') if arch else None
  width, _, patch, _ = tensors['visual.conv1.weight'].shape
  vocab_size, _ = tensors['token_embedding.weight'].shape
  if base is not None:
    variant, text_width, text_heads, embed_dim = OPEN_CLIP_VITS[base]
    image = vit.decode_variant(variant)
  else:  # open_clip's default head width is 64 in both towers.
    text_width = int(tensors['token_embedding.weight'].shape[1])
    text_heads, embed_dim = text_width // 64, int(tensors['text_projection'].shape[1])
    image = dict(width=int(width), patch_size=int(patch), num_heads=int(width) // 64,
                 depth=_count(tensors, r'visual\.transformer\.resblocks\.(\d+)\.'),
                 mlp_dim=int(tensors['visual.transformer.resblocks.0.mlp.c_fc.weight'].shape[0])
                 if 'visual.transformer.resblocks.0.mlp.c_fc.weight' in tensors else 4 * width)
  activation = 'quick_gelu' if quick_gelu else 'gelu'
  image = {'name': 'vit', 'variant': None, **image, 'pool': 'cls', 'posemb': 'learn',
           'patch_bias': False, 'pre_norm': True, 'layer_norm_epsilon': 1e-5,
           'mlp_activation': activation}
  text_depth = _count(tensors, r'transformer\.resblocks\.(\d+)\.') if base is None else 12
  return {'name': 'clip', 'image': image, 'vocab_size': int(vocab_size),
          'max_len': int(tensors['positional_embedding'].shape[0]),
          'text_width': text_width, 'text_depth': text_depth, 'text_heads': text_heads,
          'embed_dim': embed_dim, 'eos_id': int(vocab_size) - 1, 'pad_id': 0,
          'text_layer_norm_epsilon': 1e-5, 'text_mlp_activation': activation}


def _open_clip(src: _Source, config: dict) -> dict:
  image = config['image']
  params = {
      'image_encoder': {
          'embedding': {'kernel': src.conv('visual.conv1.weight')},
          'cls': src.take('visual.class_embedding', 1, lambda c: c.reshape(1, 1, -1)),
          'pos_embedding': src.take('visual.positional_embedding', 2, lambda p: p[None]),
          'pre_norm': src.layer_norm('visual.ln_pre'),
          'Transformer': {
              **_encoder_blocks(src, 'visual.transformer.resblocks.', image['depth'],
                                image['num_heads'], OPEN_CLIP_BLOCK),
              'encoder_norm': src.layer_norm('visual.ln_post')}},
      'image_projection': {'kernel': src.take('visual.proj', 2)},
      'text_encoder': {
          'token_embedding': {'embedding': src.take('token_embedding.weight', 2)},
          'positions': src.take('positional_embedding', 2),
          'Transformer': {
              **_encoder_blocks(src, 'transformer.resblocks.', config['text_depth'],
                                config['text_heads'], OPEN_CLIP_BLOCK),
              'encoder_norm': src.layer_norm('ln_final')}},
      'text_projection': {'kernel': src.take('text_projection', 2)},
      'logit_scale': src.take('logit_scale', 0)}
  return {'params': params, 'model_state': {}}


# Sources, architectures and the checks against the project's model.

@dataclasses.dataclass(frozen=True)
class Family:
  source: str
  archs: tuple[str, ...]
  detect: Callable[[dict], bool]
  config: Callable[[dict, str | None], dict]
  mapping: Callable[[_Source, dict], dict]
  mean: tuple[float, ...]
  std: tuple[float, ...]


FAMILIES = (
    Family('torchvision', tuple(TORCHVISION_RESNETS), lambda t: 'layer1.0.conv1.weight' in t,
           _torchvision_resnet_config, _torchvision_resnet, IMAGENET_MEAN, IMAGENET_STD),
    Family('torchvision', tuple(TORCHVISION_VITS), lambda t: 'conv_proj.weight' in t,
           _torchvision_vit_config, _torchvision_vit, IMAGENET_MEAN, IMAGENET_STD),
    Family('open_clip', tuple(OPEN_CLIP_VITS) + tuple(f'{a}-quickgelu' for a in OPEN_CLIP_VITS),
           lambda t: 'visual.conv1.weight' in t and 'token_embedding.weight' in t,
           _open_clip_config, _open_clip, CLIP_MEAN, CLIP_STD),
)
ARCHS = {source: [a for f in FAMILIES if f.source == source for a in f.archs] + ['auto']
         for source in SOURCES}


def _family(tensors, source: str | None, arch: str | None, where: str) -> Family:
  if arch not in (None, 'auto'):
    matches = [f for f in FAMILIES if arch in f.archs and source in (None, f.source)]
    if not matches:
      raise ConversionError(f'unknown architecture {arch!r} for {source}; one of '
                            f'{ARCHS.get(source, sorted(a for f in FAMILIES for a in f.archs))}')
    return matches[0]
  matches = [f for f in FAMILIES if f.detect(tensors) and source in (None, f.source)]
  if not matches:
    raise ConversionError(f'{where}: its tensors (the first {next(iter(tensors), None)}) are '
                          f'none of the covered {source or "torchvision or open_clip"} '
                          'architectures')
  return matches[0]


def _example_inputs(config: dict, tensors) -> tuple:
  if config['name'] == 'resnet':
    return (jnp.zeros((1, 64, 64, 3)),)
  if config['name'] == 'vit':
    side = _vit_image_size(tensors, 'encoder.pos_embedding', config['patch_size'])
    return (jnp.zeros((1, side, side, 3)),)
  image = config['image']
  side = _vit_image_size(tensors, 'visual.positional_embedding', image['patch_size'])
  return jnp.zeros((1, side, side, 3)), jnp.zeros((1, config['max_len']), jnp.int32)


def _check_against_model(mapped: dict, config: dict, tensors, where: str, arch: str) -> None:
  """Every converted variable has the path and shape of the project model's."""
  model = models.get_model(config)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *_example_inputs(config, tensors)))
  expected = {'params': shapes['params'],
              'model_state': {k: v for k, v in shapes.items() if k != 'params'}}
  flat_expected = dict(_flatten(expected))
  flat_mapped = dict(_flatten(mapped, is_leaf=lambda x: isinstance(x, Mapped)))
  for path, leaf in flat_mapped.items():
    if path not in flat_expected:
      raise ConversionError(f'{where}: tensor {leaf.source} maps to {path}, which the '
                            f'project\'s {arch} does not have')
    if tuple(leaf.value.shape) != tuple(flat_expected[path].shape):
      raise ConversionError(
          f'{where}: tensor {leaf.source} {list(tensors[leaf.source].shape)} does not fit '
          f'{arch}: {path} needs {list(flat_expected[path].shape)}, it gives '
          f'{list(leaf.value.shape)}')
  missing = sorted(set(flat_expected) - set(flat_mapped))
  if missing:
    raise ConversionError(f'{where}: no tensor gives the project\'s {missing[0]} '
                          f'({len(missing)} variables of {arch} are missing)')


def _flatten(tree, is_leaf=None):
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
  return [('/'.join(str(getattr(k, 'key', k)) for k in path), leaf) for path, leaf in leaves]


@dataclasses.dataclass
class Converted:
  """A converted model.

  Attributes:
    model: the `config.model` dict that holds these weights.
    variables: `{'params': ..., 'model_state': {...}}` as numpy arrays, the layout of a
      run's `TrainState` (`model_state` holds `batch_stats` for a ResNet).
    source: 'torchvision' or 'open_clip'.
    arch: the source's name for the architecture.
    preprocessing: the mean and std the weights expect inputs normalised with (in the
      [0, 1] range, RGB, per channel) and the image size.
  """
  model: dict
  variables: dict
  source: str
  arch: str
  preprocessing: dict


def convert_tensors(tensors: dict[str, np.ndarray], source: str | None = None,
                    arch: str | None = None, where: str = 'the weights', *,
                    quick_gelu: bool = False) -> Converted:
  """The project's model and variables for a source state dict (see the module docstring).

  `source` and `arch` default to what the tensor names say; given, they are checked.
  `quick_gelu` (or an arch ending in '-quickgelu') gives a CLIP QuickGELU MLPs, as
  OpenAI's weights need; the tensors cannot tell. Raises `ConversionError` naming the
  first tensor that does not fit.
  """
  if source is not None and source not in SOURCES:
    raise ConversionError(f'unknown source {source!r}; one of {SOURCES}')
  family = _family(tensors, source, arch, where)
  arch = None if arch == 'auto' else arch
  config = family.config(tensors, arch)
  if quick_gelu:
    if config['name'] != 'clip':
      raise ConversionError(f'quick_gelu is for CLIP weights; these are a {config["name"]}')
    config['image']['mlp_activation'] = config['text_mlp_activation'] = 'quick_gelu'
  src = _Source(tensors, where)
  mapped = family.mapping(src, config)
  src.check_all_used()
  name = arch or f'{family.source} {config["name"]}'
  _check_against_model(mapped, config, tensors, where, name)
  variables = jax.tree.map(lambda m: m.value, mapped, is_leaf=lambda x: isinstance(x, Mapped))
  inputs = _example_inputs(config, tensors)
  return Converted(model=config, variables=variables, source=family.source,
                   arch=arch or 'auto',
                   preprocessing={'mean': family.mean, 'std': family.std,
                                  'image_size': None if config['name'] == 'resnet'
                                  else int(inputs[0].shape[1])})


def convert_file(path: str, source: str | None = None, arch: str | None = None, *,
                 quick_gelu: bool = False) -> Converted:
  return convert_tensors(read_tensors(path), source, arch, where=os.path.expanduser(path),
                         quick_gelu=quick_gelu)


def write(converted: Converted, out: str) -> None:
  """`out/checkpoints/0/default` (Orbax) and `out/model.json`; refuses an existing run."""
  from vision_jax import checkpointing  # pylint: disable=g-import-not-at-top
  out = os.path.abspath(os.path.expanduser(out))
  if os.path.exists(os.path.join(out, 'checkpoints')) or os.path.exists(
      os.path.join(out, 'model.json')):
    raise ConversionError(f'{out} already holds a checkpoint; nothing was overwritten. '
                          'Choose another --out')
  if not os.path.isdir(os.path.dirname(out)):
    raise ConversionError(f'the folder of --out, {os.path.dirname(out)}, does not exist')
  os.makedirs(out, exist_ok=True)
  checkpointer = checkpointing.Checkpointer(out, every_steps=1, keep=1, async_save=False)
  checkpointer.save(0, jax.tree.map(jnp.asarray, converted.variables))
  checkpointer.wait()
  checkpointer.close()
  with open(os.path.join(out, 'model.json'), 'w', encoding='utf-8') as f:
    json.dump({'source': converted.source, 'arch': converted.arch, 'model': converted.model,
               'preprocessing': converted.preprocessing}, f, indent=2)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m vision_jax.convert', description=__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--from', dest='source', required=True, choices=SOURCES)
  parser.add_argument('--arch', required=True,
                      help='; '.join(f'{s}: {", ".join(a)}' for s, a in ARCHS.items()))
  parser.add_argument('--in', dest='path', required=True,
                      help='the .safetensors or .pth/.pt/.bin file')
  parser.add_argument('--out', required=True, help='a new folder for the checkpoint')
  parser.add_argument('--quick_gelu', action='store_true',
                      help='CLIP with QuickGELU MLPs (OpenAI\'s weights) for --arch auto')
  args = parser.parse_args(argv)
  if args.arch not in ARCHS[args.source]:
    parser.error(f'--arch {args.arch!r} is not a {args.source} architecture; one of '
                 f'{ARCHS[args.source]}')
  try:
    converted = convert_file(args.path, args.source, args.arch, quick_gelu=args.quick_gelu)
    write(converted, args.out)
  except ConversionError as e:
    print(f'convert: {e}', file=sys.stderr)
    return 1
  count = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(converted.variables['params']))
  print(f'{args.path} -> {args.out}: {converted.model["name"]} with {count:,} parameters '
        f'(model.json holds its config.model and preprocessing)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
