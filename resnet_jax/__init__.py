"""resnet_jax: residual networks in JAX/Flax — models, input pipelines, training, and the paper's tables."""
