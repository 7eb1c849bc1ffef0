"""`fake_images`: random images shaped like real datasets, for local modes and benchmarks.

`fake_images/cifar10` (32x32x3, 10 classes) and `fake_images/imagenet2012` (80x80x3,
1000 classes) have the features and split names of the TFDS datasets they stand in for,
so an experiment's local mode runs the real pipeline and preprocessing ops offline.
Pixels and labels are uniform noise from a fixed seed: the same files on every machine,
prepared in about a second. Nothing can be learned from them beyond the training set.
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds


@dataclasses.dataclass
class FakeImagesConfig(tfds.core.BuilderConfig):
  """Shape, class count and split sizes of one stand-in dataset."""
  image_shape: tuple[int, int, int] = (32, 32, 3)
  num_classes: int = 10
  split_sizes: tuple[tuple[str, int], ...] = (('train', 512), ('test', 256))


class FakeImages(tfds.core.GeneratorBasedBuilder):
  """Uniform random uint8 images with uniform random labels."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'cifar10 and imagenet2012 stand-ins.'}
  BUILDER_CONFIGS = [
      FakeImagesConfig(name='cifar10', description='Shaped like cifar10.',
                       image_shape=(32, 32, 3), num_classes=10,
                       split_sizes=(('train', 512), ('test', 256))),
      FakeImagesConfig(name='imagenet2012',
                       description='Shaped like imagenet2012, with small 80x80 images.',
                       image_shape=(80, 80, 3), num_classes=1000,
                       split_sizes=(('train', 256), ('validation', 128))),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description='Random images for offline smoke runs and benchmarks.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=self.builder_config.image_shape),
            'label': tfds.features.ClassLabel(num_classes=self.builder_config.num_classes),
        }),
        supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded.
    return {split: self._generate_examples(seed, size)
            for seed, (split, size) in enumerate(self.builder_config.split_sizes)}

  def _generate_examples(self, seed, size):
    config = self.builder_config
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (size, *config.image_shape), dtype=np.uint8)
    labels = rng.integers(0, config.num_classes, size)
    for i in range(size):
      yield i, {'image': images[i], 'label': int(labels[i])}
