"""Data: TFDS builders of the embedded datasets, preprocessing ops, input pipelines.

Importing this package registers the embedded builders with TFDS, so
`tfds.builder('digits')` works in research code as in the launcher.
"""

# Registration happens on import of each builder module. Keep this file light: dataset
# preparation workers import the package too.
from vision_jax.data import digits  # noqa: F401
from vision_jax.data import fake_images  # noqa: F401
from vision_jax.data import scenes  # noqa: F401
from vision_jax.data import scenes_video  # noqa: F401
