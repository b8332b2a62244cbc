"""`python -m resnet_jax.predict`: the command line of `resnet_jax.tools.predict`, where its code lives."""

from resnet_jax.tools.predict import run

if __name__ == "__main__":
    run()
