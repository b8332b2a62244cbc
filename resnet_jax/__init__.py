"""resnet_jax: residual networks in JAX/Flax — models, input pipelines, training, and the paper's tables."""

import os

# TensorFlow (the host input pipeline) logs only errors unless TF_CPP_MIN_LOG_LEVEL asks for more.
# Set before anything imports JAX, which otherwise sets it to 1 (warnings) for TensorFlow too.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The project's XLA options (fast CPU steps) go into XLA_FLAGS before anything starts a backend.
from resnet_jax import xla_options  # noqa: F401
