"""Shared test set-up: quiet TensorFlow, keep it off accelerators, one CPU device by default.

Tests that need several devices or processes start a subprocess with their own XLA_FLAGS.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # TensorFlow must never take an accelerator.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
