"""`python -m resnet_jax.summary`: the command line of `resnet_jax.tools.summary`, where its code lives."""

from resnet_jax.tools.summary import run

if __name__ == "__main__":
    run()
