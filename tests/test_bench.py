"""The transformer benchmark (``python -m q8lib.bench``) on the CPU smoke configuration: its JSON says what it
measured and on which host (the host probe makes a slow or busy host visible next to launch-bound timings)."""
import json

import pytest

from q8lib.bench.transformer import main
from q8lib.timing import host_probe


def test_host_probe_reports_load_and_speed():
    h = host_probe(loops=1000)
    assert h["cpu_count"] >= 1 and h["python_loop_us"] > 0 and h["python_loop_iters"] == 1000
    assert h["loadavg_1m"] is None or h["loadavg_1m"] >= 0


@pytest.mark.slow
def test_bench_tiny_writes_results_with_host_state(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["--config", "tiny", "--variants", "bf16", "--iters", "1", "--warmup", "0", "--no-fp32",
                 "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert {"device", "date", "versions", "shape", "results"} <= set(doc)
    res = doc["results"]["bf16"]
    assert res["fwd_ms"] > 0 and res["rel_err_vs_bf16"] == 0
    assert {"loadavg_1m", "cpu_count", "python_loop_us"} <= set(res["host"])
