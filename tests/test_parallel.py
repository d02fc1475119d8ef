"""Context parallelism (Ulysses) on the CPU with gloo: the launch script itself, 2 ranks, tiny model."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("torchrun") is None and sys.platform != "linux", reason="needs torchrun")
def test_ulysses_two_ranks_match_one_rank(tmp_path):
    out = tmp_path / "cp.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(ROOT / "benchmarks" / "bench_cp.py"), "--smoke", "--device", "cpu", "--tol", "1e-4",
           "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["world_size"] == 2 and set(doc["results"]) == {"bf16", "q8"}
    for r in doc["results"].values():
        # measured 0.0: Ulysses gives each rank whole heads over the whole sequence, the same math
        assert r["rel_err_cp_vs_single"] <= 1e-4
