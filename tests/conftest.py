"""Shared test set-up: quiet TensorFlow, keep it off accelerators, one CPU device by default.

Tests that need several devices or processes start a subprocess with their own XLA_FLAGS.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # TensorFlow must never take an accelerator.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests train the same tiny nets, several in subprocesses (kill, preemption, multi-host), and
# each would compile the same steps again: a persistent compilation cache shared by every test
# process (subprocesses inherit the variable) compiles each of them once per machine.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax"
    ),
)
# XLA's CPU backend optimisations roughly double the compile time of the small nets the tests
# train for a few steps, and those steps run for milliseconds: the suite compiles without them.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
