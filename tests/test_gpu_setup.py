"""GPU set-up: the CUDA requirements resolve, and a GPU that JAX does not use is announced."""

import json
import os
import re
import stat
import subprocess
import sys

from resnet_jax.engine import parallel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_nvidia_smi(tmp_path, listing):
    exe = tmp_path / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\nprintf '{listing}'\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return str(tmp_path)


def test_a_gpu_listed_by_nvidia_smi_but_unused_by_jax_is_warned_about(tmp_path, monkeypatch):
    bin_dir = _fake_nvidia_smi(tmp_path, "GPU 0: NVIDIA H200 (UUID: GPU-1)\\nGPU 1: NVIDIA H200\\n")
    monkeypatch.setenv("PATH", bin_dir + os.pathsep + os.environ["PATH"])
    warning = parallel.unused_gpu_warning()
    assert warning is not None
    assert "lists 2 GPU(s) but JAX runs on the CPU" in warning and "ACCEL=cuda" in warning


def test_no_warning_without_nvidia_smi_or_without_a_listed_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert parallel.unused_gpu_warning() is None
    bin_dir = _fake_nvidia_smi(tmp_path, "No devices were found\\n")
    monkeypatch.setenv("PATH", bin_dir)
    assert parallel.unused_gpu_warning() is None


def test_the_trainer_header_names_the_devices_and_the_warning(tmp_path):
    bin_dir = _fake_nvidia_smi(tmp_path, "GPU 0: NVIDIA H200\\n")
    env = dict(
        os.environ,
        PATH=bin_dir + os.pathsep + os.environ["PATH"],
        PYTHONPATH=REPO,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
    )
    code = (
        "from resnet_jax.engine import parallel, trainer\n"
        "print(parallel.describe_devices())\n"
        "print(parallel.unused_gpu_warning())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    devices, warning = out.stdout.splitlines()
    assert devices == "2 devices (cpu)"
    assert warning.startswith("nvidia-smi lists 1 GPU(s)")


def test_cuda_requirements_pin_the_same_jax_and_resolve_on_the_index(tmp_path):
    with open(os.path.join(REPO, "requirements.txt")) as f:
        jax_version = re.search(r"^jax==(\S+)$", f.read(), re.M).group(1)
    with open(os.path.join(REPO, "requirements-cuda.txt")) as f:
        pins = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    assert pins and all(p.endswith(f"=={jax_version}") for p in pins), pins
    report = tmp_path / "report.json"
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed",
         "--quiet", "--report", str(report), *pins],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    resolved = {
        i["metadata"]["name"]: i["metadata"]["version"] for i in json.load(open(report))["install"]
    }
    assert resolved == {"jax-cuda12-plugin": jax_version, "jax-cuda12-pjrt": jax_version}
