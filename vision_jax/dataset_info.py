"""What a method needs to know about its data, independent of TFDS and TensorFlow."""

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Sizes, labels and metadata of a dataset.

  Attributes:
    name: the dataset's `config.data.name`.
    num_examples: examples per split.
    num_classes: classes of the `label` feature, None without a class label.
    class_names: their names, None without a class label.
    metadata: the builder's metadata (e.g. the caption vocabulary), or None.
  """
  name: str
  num_examples: dict[str, int]
  num_classes: int | None
  class_names: tuple[str, ...] | None
  metadata: Any = None
