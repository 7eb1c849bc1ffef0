"""vision_jax: reference JAX/Flax implementations of the computer-vision lecture."""

import os

# TensorFlow only feeds the input pipelines: keep its start-up notices (oneDNN, CPU
# features) off the console. Both must be set before TensorFlow is first imported.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
