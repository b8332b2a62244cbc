"""The import structure of docs/architecture.md: floors that import only downwards, no circles,
and every documented `python -m` entry point alive."""

import ast
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Lowest first. A module may import modules of its own floor or below, never above. Prefixes
# match a package and everything in it, and each module matches exactly one (a package sits on
# one floor whole); a name ending in "=" matches that module alone.
FLOORS = (
    (
        "resnet_jax.models",
        "resnet_jax.data",
        "resnet_jax.optim",
        "resnet_jax.recipes",  # published recipes and their scaling rules (no config)
        "resnet_jax.entry",
        "resnet_jax.xla_options",  # XLA_FLAGS set before JAX starts a backend
        "resnet_jax=",  # the package's own __init__ (which sets them at import), not its modules
        "resnet_jax.weights",  # PyTorch state dicts <-> variables, weights files
        "resnet_jax.plugins",  # the user's modules a run imports before building its model
    ),  # no config, no loop
    ("resnet_jax.config",),  # config -> model, optimizer, resolved sizes
    ("resnet_jax.engine",),  # the training engine: steps, sharding, checkpoints, loop, evaluation
    ("resnet_jax.bench", "resnet_jax.tools"),  # tools built on the engine
    # `python -m` entry points
    (
        "resnet_jax.main",
        "resnet_jax.benchmark",
        "resnet_jax.bench_suite",
        "resnet_jax.summary",
        "resnet_jax.analysis",
        "resnet_jax.plot",
        "resnet_jax.predict",
        "resnet_jax.export",
        "resnet_jax.pretrained",
    ),
    ("experiments", "configs"),  # paper tables and recipes, on top of everything
)

ENTRY_POINTS = (
    "resnet_jax.main",
    "resnet_jax.summary",
    "resnet_jax.benchmark",
    "resnet_jax.bench_suite",
    "resnet_jax.analysis",
    "resnet_jax.plot",
    "resnet_jax.predict",
    "resnet_jax.export",
    "resnet_jax.pretrained",
    "resnet_jax.data.prepare",
    "experiments.run",
    "experiments.report",
)


def _modules() -> dict[str, str]:
    """Dotted name -> path of every project module (packages by their __init__)."""
    out = {}
    for top in ("resnet_jax", "experiments", "configs"):
        for root, _, files in os.walk(os.path.join(REPO, top)):
            for f in files:
                if not f.endswith(".py"):
                    continue
                rel = os.path.relpath(os.path.join(root, f), REPO)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                out[".".join(rel)] = os.path.join(root, f)
    return out


def _imports(modules: dict[str, str]) -> dict[str, set[str]]:
    """Module -> project modules it imports anywhere in its body (function-level imports too)."""
    graph = {}
    for name, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        deps = set()
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import sub` names the submodule where one exists, else pkg itself.
                targets = [
                    f"{node.module}.{a.name}"
                    if f"{node.module}.{a.name}" in modules
                    else node.module
                    for a in node.names
                ]
            deps.update(t for t in targets if t in modules and t != name)
        graph[name] = deps
    return graph


def _floor(module: str) -> int:
    matches = [
        i
        for i, prefixes in enumerate(FLOORS)
        for p in prefixes
        if module == p.rstrip("=") or (not p.endswith("=") and module.startswith(p + "."))
    ]
    if len(matches) != 1:
        raise AssertionError(
            f"{module} is on {len(matches)} floors of FLOORS, not one: place it in "
            "docs/architecture.md"
        )
    return matches[0]


def _upward(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{a} (floor {_floor(a)}) imports {b} (floor {_floor(b)})"
        for a, deps in sorted(graph.items())
        for b in sorted(deps)
        if _floor(b) > _floor(a)
    ]


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    state, cycles = {}, []

    def visit(node, path):
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(path[path.index(dep) :] + [dep]))
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def test_every_import_goes_down_or_stays_on_its_floor():
    upward = _upward(_imports(_modules()))
    assert not upward, "\n".join(upward)


def test_no_import_circle():
    cycles = _cycles(_imports(_modules()))
    assert not cycles, "\n".join(cycles)


def test_the_checks_find_a_planted_circle_and_an_upward_import():
    graph = _imports(_modules())
    assert "resnet_jax.config" in graph["resnet_jax.engine.trainer"]  # the reader sees imports
    assert "resnet_jax.engine.checkpoint" in graph["resnet_jax.engine.evaluate"]  # in functions
    planted = {k: set(v) for k, v in graph.items()}
    planted["resnet_jax.engine.steps"].add("resnet_jax.engine.trainer")
    planted["resnet_jax.models.resnet"].add("resnet_jax.config")
    planted["resnet_jax.weights.mapping"].add("resnet_jax.pretrained.cli")
    assert any("resnet_jax.engine.steps" in c for c in _cycles(planted))
    assert _upward(planted) == [
        "resnet_jax.models.resnet (floor 0) imports resnet_jax.config (floor 1)",
        "resnet_jax.weights.mapping (floor 0) imports resnet_jax.pretrained.cli (floor 4)",
    ]


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_documented_entry_point_answers_help(module):
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    p = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert "usage" in out.lower() or "flags" in out.lower(), out
