"""Two processes on localhost (jax.distributed, gloo CPU collectives) train like one process."""

import socket

import numpy as np

from tests.test_parallel import run_worker


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_end_with_the_params_of_one_process_on_the_same_global_batch(tmp_path):
    port = _free_port()
    procs = [
        run_worker(
            tmp_path / f"p{i}.npz",
            devices=1,
            wait=False,
            extra=[
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num_processes",
                "2",
                "--process_id",
                str(i),
            ],
        )
        for i in range(2)
    ]
    procs.append(run_worker(tmp_path / "single.npz", devices=1, wait=False))
    for p in procs:
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0, out
    single = np.load(tmp_path / "single.npz")
    p0, p1 = np.load(tmp_path / "p0.npz"), np.load(tmp_path / "p1.npz")
    assert int(p0["processes"]) == 2 and int(p0["devices"]) == 2 and int(single["processes"]) == 1
    # Each process fed half of every global batch, yet the loss is the global-batch loss.
    np.testing.assert_allclose(p0["losses"], single["losses"], rtol=1e-5)
    params = set(single.files) - {"losses", "devices", "processes"}
    assert len(params) == 5
    for k in params:
        np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)  # replicas agree bit for bit
        np.testing.assert_allclose(p0[k], single[k], rtol=1e-4, atol=1e-6, err_msg=k)
