"""PyTorch eager twins of the benchmarked models, for like-for-like timings.

Each twin has the layers, shapes, initial BatchNorm settings and optimizer of its Flax
model (`vision_jax/models/{cnn,cifar_resnet,resnet}.py`), so a training step does
the same arithmetic. Only `vision_jax.benchmark --torch` imports this module; PyTorch
is not a dependency of the project.
"""

import os
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F


def _bn(features: int) -> nn.BatchNorm2d:
  # PyTorch's momentum 0.1 is Flax's 0.9; both use epsilon 1e-5.
  return nn.BatchNorm2d(features, eps=1e-5, momentum=0.1)


class CNN(nn.Module):
  """`models/cnn.py`: conv stages ('SAME', optional BatchNorm, ReLU, 2x2 pool), dense."""

  def __init__(self, in_channels: int, image_size: tuple[int, int], num_classes: int, *,
               features=(32, 64), kernel_size=3, convs_per_stage=1, pooling='max',
               dense_features=(128,), dropout_rate=0.0, use_batchnorm=False, **unused):
    super().__init__()
    del unused
    layers, channels = [], in_channels
    height, width = image_size
    for width_out in features:
      for _ in range(convs_per_stage):
        layers.append(nn.Conv2d(channels, width_out, kernel_size, padding='same',
                                bias=not use_batchnorm))
        if use_batchnorm:
          layers.append(_bn(width_out))
        layers.append(nn.ReLU(inplace=True))
        channels = width_out
      if pooling == 'max':
        layers.append(nn.MaxPool2d(2))
      elif pooling == 'avg':
        layers.append(nn.AvgPool2d(2))
      if pooling != 'none':
        height, width = height // 2, width // 2
    layers.append(nn.Flatten())
    size = channels * height * width
    for width_out in dense_features:
      layers += [nn.Linear(size, width_out), nn.ReLU(inplace=True), nn.Dropout(dropout_rate)]
      size = width_out
    layers.append(nn.Linear(size, num_classes))
    self.net = nn.Sequential(*layers)

  def forward(self, x):
    return self.net(x)


class CifarBlock(nn.Module):
  """`models/cifar_resnet.py: BasicBlock` with its option-A shortcut."""

  def __init__(self, in_filters: int, filters: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(in_filters, filters, 3, stride, 1, bias=False)
    self.bn1 = _bn(filters)
    self.conv2 = nn.Conv2d(filters, filters, 3, 1, 1, bias=False)
    self.bn2 = _bn(filters)
    self.stride, self.pad = stride, filters - in_filters

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)), inplace=True)
    y = self.bn2(self.conv2(y))
    shortcut = x[:, :, ::self.stride, ::self.stride]
    if self.pad:
      shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.pad))
    return F.relu(y + shortcut, inplace=True)


class CifarResNet(nn.Module):
  """`models/cifar_resnet.py: Model`, depth 6n + 2."""

  def __init__(self, in_channels: int, num_classes: int, *, depth=20, num_filters=16,
               **unused):
    super().__init__()
    del unused
    n = (depth - 2) // 6
    self.stem = nn.Sequential(nn.Conv2d(in_channels, num_filters, 3, 1, 1, bias=False),
                              _bn(num_filters), nn.ReLU(inplace=True))
    blocks, channels = [], num_filters
    for stage in range(3):
      for i in range(n):
        filters = num_filters * 2**stage
        blocks.append(CifarBlock(channels, filters, 2 if stage > 0 and i == 0 else 1))
        channels = filters
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Linear(channels, num_classes)

  def forward(self, x):
    return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class Bottleneck(nn.Module):
  """`models/resnet.py: BottleneckBlock` (v1.5: the stride is in the 3x3)."""
  expansion = 4

  def __init__(self, in_filters: int, filters: int, stride: int):
    super().__init__()
    out = 4 * filters
    self.body = nn.Sequential(
        nn.Conv2d(in_filters, filters, 1, bias=False), _bn(filters), nn.ReLU(inplace=True),
        nn.Conv2d(filters, filters, 3, stride, 1, bias=False), _bn(filters),
        nn.ReLU(inplace=True), nn.Conv2d(filters, out, 1, bias=False), _bn(out))
    self.proj = (nn.Sequential(nn.Conv2d(in_filters, out, 1, stride, bias=False), _bn(out))
                 if stride != 1 or in_filters != out else nn.Identity())

  def forward(self, x):
    return F.relu(self.body(x) + self.proj(x), inplace=True)


class Basic(nn.Module):
  """`models/resnet.py: BasicBlock`."""
  expansion = 1

  def __init__(self, in_filters: int, filters: int, stride: int):
    super().__init__()
    self.body = nn.Sequential(
        nn.Conv2d(in_filters, filters, 3, stride, 1, bias=False), _bn(filters),
        nn.ReLU(inplace=True), nn.Conv2d(filters, filters, 3, 1, 1, bias=False),
        _bn(filters))
    self.proj = (nn.Sequential(nn.Conv2d(in_filters, filters, 1, stride, bias=False),
                               _bn(filters))
                 if stride != 1 or in_filters != filters else nn.Identity())

  def forward(self, x):
    return F.relu(self.body(x) + self.proj(x), inplace=True)


_STAGES = {18: (Basic, (2, 2, 2, 2)), 34: (Basic, (3, 4, 6, 3)),
           50: (Bottleneck, (3, 4, 6, 3)), 101: (Bottleneck, (3, 4, 23, 3)),
           152: (Bottleneck, (3, 8, 36, 3))}


class ResNet(nn.Module):
  """`models/resnet.py: Model` (torchvision's layout)."""

  def __init__(self, in_channels: int, num_classes: int, *, depth=50, num_filters=64,
               **unused):
    super().__init__()
    del unused
    block, sizes = _STAGES[depth]
    self.stem = nn.Sequential(
        nn.Conv2d(in_channels, num_filters, 7, 2, 3, bias=False), _bn(num_filters),
        nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
    blocks, channels = [], num_filters
    for stage, count in enumerate(sizes):
      for i in range(count):
        filters = num_filters * 2**stage
        blocks.append(block(channels, filters, 2 if stage > 0 and i == 0 else 1))
        channels = filters * block.expansion
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Linear(channels, num_classes)

  def forward(self, x):
    return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def build_model(name: str, kwargs: dict[str, Any], input_shape, num_classes: int) -> nn.Module:
  """The twin of `vision_jax.models.<name>.Model(**kwargs)` for NHWC `input_shape`."""
  height, width, channels = input_shape
  if name == 'cnn':
    return CNN(channels, (height, width), num_classes, **kwargs)
  if name == 'cifar_resnet':
    return CifarResNet(channels, num_classes, **kwargs)
  if name == 'resnet':
    return ResNet(channels, num_classes, **kwargs)
  raise ValueError(f'no PyTorch twin of model {name!r} (have cnn, cifar_resnet, resnet)')


def _param_groups(model: nn.Module, weight_decay: float, weights_only: bool):
  """Weight decay on kernels only (ndim > 1) when `weights_only`, as in `optim.py`."""
  if not weights_only:
    return [{'params': list(model.parameters()), 'weight_decay': weight_decay}]
  params = list(model.parameters())
  return [{'params': [p for p in params if p.ndim > 1], 'weight_decay': weight_decay},
          {'params': [p for p in params if p.ndim <= 1], 'weight_decay': 0.0}]


def make_optimizer(model: nn.Module, opt_config, lr: float) -> torch.optim.Optimizer:
  """`optim.make_optimizer`'s sgd/momentum, adam and adamw, at a constant `lr`."""
  groups = _param_groups(model, opt_config.get('weight_decay', 0.0),
                         opt_config.get('decay_weights_only', True))
  name = opt_config.name
  if name in ('sgd', 'momentum'):
    return torch.optim.SGD(groups, lr=lr, momentum=opt_config.get('momentum') or 0.0,
                           nesterov=opt_config.get('nesterov', False))
  betas = (opt_config.get('b1', 0.9), opt_config.get('b2', 0.999))
  if name == 'adam':
    return torch.optim.Adam(groups, lr=lr, betas=betas)
  if name == 'adamw':
    return torch.optim.AdamW(groups, lr=lr, betas=betas)
  raise ValueError(f'no PyTorch optimizer for {name!r}')


def make_train_step(config, input_shape, num_classes: int, batch_size: int,
                    channels_last: bool = True) -> Callable[[], None]:
  """A closure running one eager training step on a fixed random batch."""
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  torch.manual_seed(config.seed)
  model = build_model(config.model.name, {k: v for k, v in config.model.items()
                                          if k not in ('name', 'dtype')},
                      input_shape, num_classes)
  memory_format = torch.channels_last if channels_last else torch.contiguous_format
  model = model.to(memory_format=memory_format).train()
  optimizer = make_optimizer(model, config.optimizer, config.lr)
  height, width, channels = input_shape
  images = torch.randn(batch_size, channels, height, width).to(memory_format=memory_format)
  labels = torch.randint(0, num_classes, (batch_size,))
  smoothing = config.get('label_smoothing', 0.0)

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(images), labels, label_smoothing=smoothing)
    loss.backward()
    optimizer.step()

  return step
