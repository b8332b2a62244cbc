"""`python -m resnet_jax.export`: the command line of `resnet_jax.tools.export`, where its code lives."""

from resnet_jax.tools.export import run

if __name__ == "__main__":
    run()
