"""Tools that read models and runs: `summary` (parameters and multiply-adds per model) and
`analysis` (layer responses and gradients, He2015 Fig. 7)."""
