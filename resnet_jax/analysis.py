"""`python -m resnet_jax.analysis`: the command line of `resnet_jax.tools.analysis`, where its code lives."""

from resnet_jax.tools.analysis import run

if __name__ == "__main__":
    run()
