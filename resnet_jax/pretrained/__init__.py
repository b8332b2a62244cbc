"""`python -m resnet_jax.pretrained import|export|compare` (usage in `__main__.py`; the commands
as functions in `cli`), and, for code written against this path, the names of the weights library
`resnet_jax.weights`: `from resnet_jax import pretrained; pretrained.load_state_dict(...)`.

Importing this package loads neither the command's flags nor the engine.
"""

from resnet_jax import weights as _weights
from resnet_jax.weights import *  # noqa: F403

__all__ = _weights.__all__
