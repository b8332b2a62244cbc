"""The data layer's errors: plain Python, so every module of `resnet_jax.data` can raise them."""


class DatasetNotPreparedError(FileNotFoundError):
    """The dataset has not been built into `data_dir`; the message names the command that does it."""


class CorruptImageError(ValueError):
    """An encoded image in the prepared data cannot be decoded; `keys` names the examples."""

    def __init__(self, message, keys=()):
        super().__init__(message)
        self.keys = tuple(keys)
