"""`python -m resnet_jax.plot`: the command line of `resnet_jax.tools.plot`, where its code lives."""

from resnet_jax.tools.plot import run

if __name__ == "__main__":
    run()
