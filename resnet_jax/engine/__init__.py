"""The training engine: pure steps, sharding over the device mesh, checkpoints, metrics, faults,
config validation, evaluation and the loop that wires them (`trainer.train_and_evaluate`).

It reads configs only through `resnet_jax.config`; nothing here is imported by models or data.
"""
