"""pyproject.toml installs what a user imports, at the pins the Makefile's environment uses."""

import functools
import os
import re
import tomllib

import jax
import jax.numpy as jnp
import numpy as np
import setuptools
from PIL import Image

from resnet_jax import pretrained
from resnet_jax.models import create_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(name):
    with open(os.path.join(REPO, name), encoding="utf-8") as f:
        return f.read()


def _project():
    return tomllib.loads(_read("pyproject.toml"))


def _name(requirement):
    """The normalised project name of `name[extras]==version` (PEP 503: case, -, _ and .)."""
    return re.sub(r"[-_.]+", "-", re.split(r"[\[=<>~!; ]", requirement)[0]).lower()


def _header_list(label):
    (line,) = [ln for ln in _read("requirements.txt").splitlines() if ln.startswith(f"# {label}:")]
    return sorted(_name(n) for n in line.split(":", 1)[1].split())


def _pins():
    return {
        _name(ln): ln.split("==")[1]
        for ln in _read("requirements.txt").splitlines()
        if ln and not ln.startswith("#")
    }


def _pinned(requirements):
    """{name: version} of `name==version` requirements; fails on any other specifier."""
    for r in requirements:
        assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][0-9A-Za-z.]*", r), r
    return {_name(r): r.split("==")[1] for r in requirements}


def test_dependencies_are_the_direct_ones_at_requirements_txt_pins():
    project = _project()["project"]
    deps = _pinned(project["dependencies"])
    dev = _pinned(project["optional-dependencies"]["dev"])
    assert sorted(deps) == _header_list("Direct dependencies")
    assert sorted(dev) == _header_list("Test and lint tools")
    pins = _pins()
    for name, version in {**deps, **dev}.items():
        assert pins.get(name) == version, (
            f"{name}=={version}, requirements.txt pins {pins.get(name)}"
        )


def test_cuda_extra_is_requirements_cuda_txt_line_for_line():
    lines = [ln for ln in _read("requirements-cuda.txt").splitlines() if ln and ln[0] != "#"]
    assert _project()["project"]["optional-dependencies"]["cuda"] == lines
    # ...and the CUDA wheels are the build of the pinned jax.
    assert {r.split("==")[1] for r in lines} == {_pins()["jax"]}


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
