"""`python -m resnet_jax.bench_suite`: the command line of `resnet_jax.bench.suite`, where its code lives."""

from resnet_jax.bench.suite import run

if __name__ == "__main__":
    run()
