"""Input pipelines: tfds datasets (imagenet2012, cifar10, cifar100, the built-in shapes10), the
paper's augmentations in tf ops, and per-process tf.data iterators yielding numpy batches.

Importing this package does not import TensorFlow; the submodules that need it
(`augment`, `pipeline`, `shapes`, `prepare`) import it, with every GPU hidden from it.
`synthetic` (random batches made on the devices) needs only JAX.
See docs/data.md.
"""
