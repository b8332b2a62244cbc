"""`python -m resnet_jax.benchmark`: the command line of `resnet_jax.bench.cli`, where its code lives."""

from resnet_jax.bench.cli import run

if __name__ == "__main__":
    run()
