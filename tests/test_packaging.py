"""pyproject.toml installs what a user imports, within ranges the Makefile's lock satisfies."""

import functools
import importlib.metadata
import os
import tomllib

import jax
import jax.numpy as jnp
import numpy as np
import setuptools
from packaging.requirements import Requirement  # pytest's own dependency: in every test venv
from packaging.utils import canonicalize_name
from packaging.version import Version
from PIL import Image

from resnet_jax import pretrained
from resnet_jax.models import create_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(name):
    with open(os.path.join(REPO, name), encoding="utf-8") as f:
        return f.read()


def _project():
    return tomllib.loads(_read("pyproject.toml"))


def _header_list(label):
    (line,) = [ln for ln in _read("requirements.txt").splitlines() if ln.startswith(f"# {label}:")]
    return sorted(canonicalize_name(n) for n in line.split(":", 1)[1].split())


def _lock(*files):
    """{name: Version} of the `name==version` lines of the lock files; fails on any other line."""
    lock = {}
    for name in files:
        for line in _read(name).splitlines():
            if line and not line.startswith("#"):
                (pin,) = Requirement(line).specifier
                assert pin.operator == "==", f"{name}: {line} is not an exact pin"
                lock[canonicalize_name(Requirement(line).name)] = Version(pin.version)
    return lock


def _ranges(group):
    """{name: Requirement} of pyproject.toml's dependencies ("") or one of its extras."""
    project = _project()["project"]
    listed = project["optional-dependencies"][group] if group else project["dependencies"]
    return {canonicalize_name(r.name): r for r in map(Requirement, listed)}


def _unmet(ranges, lock):
    """The requirements of `ranges` whose project the lock leaves out or pins outside the range."""
    return [
        f"{r} (lock: {lock.get(n)})"
        for n, r in ranges.items()
        if n not in lock or lock[n] not in r.specifier
    ]


def test_dependencies_are_the_direct_ones_as_ranges_the_lock_satisfies():
    deps, dev = _ranges(""), _ranges("dev")
    assert sorted(deps) == _header_list("Direct dependencies")
    assert sorted(dev) == _header_list("Test and lint tools")
    assert _unmet({**deps, **dev}, _lock("requirements.txt")) == []
    project = _project()["project"]
    lines = [ln.strip() for ln in _read("pyproject.toml").splitlines()]
    for listed in (project["dependencies"], project["optional-dependencies"]["dev"]):
        for r in listed:
            ops = {s.operator for s in Requirement(r).specifier}
            # A range, not a pin: a user's newer patch release is kept by `pip install`.
            assert ">=" in ops and "==" not in ops, r
            if "<" in ops:  # an upper bound states the break it avoids, on the line above it
                (i,) = [i for i, ln in enumerate(lines) if ln == f'"{r}",']
                assert lines[i - 1].startswith("#"), f"{r} gives no reason for its upper bound"


def test_cuda_extra_is_jaxs_own_and_requirements_cuda_txt_locks_what_it_installs():
    cuda, lock = _ranges("cuda"), _lock("requirements.txt", "requirements-cuda.txt")
    assert list(cuda) == ["jax"] and cuda["jax"].extras == {"cuda12"}
    assert _unmet(cuda, lock) == []
    # What jax's cuda12 extra pulls in (the installed jax is the lock's) is what the lock pins.
    assert Version(importlib.metadata.version("jax")) == lock["jax"]
    extra = [
        Requirement(r)
        for r in importlib.metadata.requires("jax")
        if Requirement(r).marker and Requirement(r).marker.evaluate({"extra": "cuda12"})
    ]
    pulled = {canonicalize_name(r.name): r for r in extra}
    assert "jax-cuda12-plugin" in pulled and _unmet(pulled, lock) == []
    cuda_lock = _lock("requirements-cuda.txt")
    assert set(cuda_lock.values()) == {lock["jax"]}  # the CUDA wheels are the build of that jax


def test_package_discovery_takes_resnet_jax_and_all_its_subpackages_only():
    find = _project()["tool"]["setuptools"]["packages"]["find"]
    found = setuptools.find_packages(REPO, include=find["include"])
    folders = {
        os.path.relpath(root, REPO).replace(os.sep, ".")
        for root, _, files in os.walk(os.path.join(REPO, "resnet_jax"))
        if any(f.endswith(".py") for f in files)
    }
    # A folder of modules without __init__.py would be missing from an installed copy.
    assert sorted(found) == sorted(folders)
    assert "resnet_jax.tools" in found and not {"configs", "experiments", "tests"} & set(found)


def library_example() -> str:
    """The python block of README.md's "Use it as a library" section, as a user copies it."""
    section = _read("README.md").split("## Use it as a library\n", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_library_example_loads_exported_weights_classifies_and_trains(
    tmp_path, monkeypatch, capsys
):
    # The example's files: a fresh ResNet-18 through our PyTorch export, and a photo-sized JPEG.
    model = create_model("resnet18")
    init = jax.jit(functools.partial(model.init, train=False))
    fresh = jax.device_get(init(jax.random.key(1), jnp.zeros((1, 32, 32, 3))))
    state_dict = pretrained.to_torch_state_dict("resnet18", fresh)
    pretrained.save_state_dict(state_dict, str(tmp_path / "resnet18.safetensors"))
    pixels = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "cat.jpg")
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(library_example(), "README.md", "exec"), scope)
    # It classified with exactly the exported weights...
    jax.tree.map(np.testing.assert_array_equal, scope["variables"], fresh)
    probs = np.asarray(scope["probs"])
    assert probs.shape == (1, 1000)
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-5)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"top-5 ImageNet class ids: {np.argsort(-probs[0])[:5]}"
    # ...and trained on its batch: one step taken, and a second one lowers the loss on it.
    state, metrics = scope["state"], scope["metrics"]
    assert int(state.step) == 1 and printed[1] == f"loss {metrics['loss']:.3f}, step 1"
    _, again = scope["train_step"](state, scope["batch"])
    assert float(again["loss"]) < float(metrics["loss"])
