"""Benchmarking: `cli` (`python -m resnet_jax.benchmark`), the timing and FLOP arithmetic of
`core`, and `suite` (`python -m resnet_jax.bench_suite`), tables of many runs in fresh processes."""
