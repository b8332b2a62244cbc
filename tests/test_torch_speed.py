"""The side-by-side speed report against PyTorch: ratios per round, then their median (PyTorch
itself is not needed: its rounds are given)."""

from __future__ import annotations

from experiments import torch_speed


def _rows(model, batch, ours, torch, last, loads):
    rows = []
    for r, (a, b, c, load) in enumerate(zip(ours, torch, last, loads, strict=True)):
        for who, ips in zip(torch_speed.CONTENDERS, (a, b, c), strict=True):
            rows.append(
                dict(round=r, model=model, batch=batch, who=who, load=load, images_per_sec=ips)
            )
    return rows


def test_table_gives_the_median_of_per_round_ratios_and_the_load_range():
    rows = _rows(
        "resnet20", 128, [300, 400, 200], [600, 400, 100], [1000, 500, 400], [1.2, 1.0, 1.5]
    )
    rows += _rows("resnet56", 32, [100, 100, 100], [100, 200, 50], [100, 100, 100], [1.1, 1.1, 1.1])
    lines = torch_speed.table(rows).splitlines()
    # resnet20: ratios to PyTorch 0.5, 1.0, 2.0 -> 1.00; to channels_last 0.3, 0.8, 0.5 -> 0.50.
    assert lines[2] == "| resnet20 | 128 | 300 | 400 | 500 | 1.00 | 0.50 | 3 | 1.0-1.5 |"
    assert lines[3] == "| resnet56 | 32 | 100 | 100 | 100 | 1.00 | 1.00 | 3 | 1.1-1.1 |"


def test_cpu_name_names_the_model_and_widest_vector_isa():
    name = torch_speed.cpu_name()
    assert "cores" in name and "(" in name
