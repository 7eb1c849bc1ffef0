"""`digits`: scikit-learn's 1,797 real 8x8 handwritten digits as a TFDS dataset.

Prepared offline in seconds (the images ship inside scikit-learn). The 0..16 grey
levels are rescaled to 0..255 uint8 so that every image dataset shares one range.
"""

import numpy as np
import tensorflow_datasets as tfds

_NUM_TEST = 360  # A fixed 20% test split, drawn once with a fixed seed.


class Digits(tfds.core.GeneratorBasedBuilder):
  """The UCI/scikit-learn optical handwritten digits, 8x8 grey, 10 classes."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Fixed 1,437/360 train/test split (seed 0).'}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description='Real 8x8 handwritten digits shipped with scikit-learn.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(8, 8, 1)),
            'label': tfds.features.ClassLabel(names=[str(i) for i in range(10)]),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://scikit-learn.org/stable/datasets/toy_dataset.html',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded.
    order = np.random.default_rng(0).permutation(1797)
    return {'train': self._generate_examples(np.sort(order[_NUM_TEST:])),
            'test': self._generate_examples(np.sort(order[:_NUM_TEST]))}

  def _generate_examples(self, indices):
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
    for i in indices:
      yield int(i), {'image': images[i], 'label': int(digits.target[i])}
