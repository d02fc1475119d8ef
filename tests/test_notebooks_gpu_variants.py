"""The GPU variants notebooks/gpu/*.ipynb (q8lib.tutorial.gpu_variants): in sync with their CPU notebooks, and
either committed unexecuted or with the GPU that executed them recorded. Nothing here executes a notebook: the
variants run on a GPU machine only (notebooks/gpu/README.md), and nbval does not collect them."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from q8lib.tutorial import gpu_run, gpu_variants as gv

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
NAMES = sorted(gv.VARIANTS)


def _code(nb):
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def test_the_variants_on_disk_are_the_declared_ones():
    assert sorted(p.stem for p in (NB_DIR / gv.GPU_DIR).glob("*.ipynb")) == NAMES, \
        f"notebooks/gpu/ must hold exactly the variants of q8lib.tutorial.gpu_variants.VARIANTS: {gv.REGENERATE}"
    for name in NAMES:
        assert (NB_DIR / f"{name}.ipynb").is_file(), f"{name}: a GPU variant without its CPU notebook"


@pytest.mark.parametrize("name", NAMES)
def test_variant_is_in_sync_with_its_cpu_notebook(name):
    problems = gv.variant_problems(NB_DIR, name)
    assert not problems, (f"notebooks/gpu/{name}.ipynb is out of sync with notebooks/{name}.ipynb: "
                          f"{'; '.join(problems)}. Regenerate it with `{gv.REGENERATE}` and commit it (its GPU outputs "
                          "are dropped; re-run it on a GPU as notebooks/gpu/README.md says)")


@pytest.mark.parametrize("name", NAMES)
def test_executed_variant_records_its_gpu(name):
    nb = gv.read_notebook(NB_DIR / gv.GPU_DIR / f"{name}.ipynb")
    code = _code(nb)
    if not gv.is_executed(nb):  # committed unexecuted (until the first GPU run): then no outputs at all
        assert all(not c["outputs"] and c["execution_count"] is None for c in code), \
            f"{name}: outputs without metadata.q8lib.executed_on; execute it with {gv.RUN} on a GPU"
        pytest.skip(f"notebooks/gpu/{name}.ipynb is not yet executed on a GPU (committed unexecuted)")
    rec = nb["metadata"]["q8lib"]["executed_on"]
    assert rec.get("gpu") and rec.get("capability"), f"{name}: executed without a GPU ({rec})"
    assert "error" not in rec and "skipped" not in rec, f"{name}: the GPU run failed: {rec.get('error')}"
    assert rec.get("env") == gv.variant_env(name), f"{name}: executed with {rec.get('env')}"
    ran = [c for c in code if c.get("metadata", {}).get("q8lib", {}).get("output_from") != "cpu"]
    assert [c["execution_count"] for c in ran] == list(range(1, len(ran) + 1)), f"{name}: not run top to bottom"
    assert all(c["execution_count"] is None for c in code if c not in ran), f"{name}: CPU-output cells with counts"
    assert not [o for c in code for o in c["outputs"] if o["output_type"] == "error"], f"{name}: error output"
    size = (NB_DIR / gv.GPU_DIR / f"{name}.ipynb").stat().st_size
    assert size <= gpu_run.MAX_NOTEBOOK_MB * 1e6 * 1.01, f"{name}: {size / 1e6:.1f} MB"


def test_nbval_does_not_collect_the_gpu_variants():
    pytest.importorskip("nbval")
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "notebooks"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "01_inspect_ltx_transformer.ipynb" in out.stdout, out.stdout + out.stderr
    assert "gpu/" not in out.stdout, "notebooks/conftest.py must keep nbval out of notebooks/gpu"


def test_an_edited_cpu_notebook_puts_its_variant_out_of_sync(tmp_path):
    name = "05_q8_attention_inference"
    shutil.copy(NB_DIR / f"{name}.ipynb", tmp_path)
    assert gv.write_variants(tmp_path, [name]) == {name: "written"}
    assert gv.variant_problems(tmp_path, name) == []
    variant = gv.read_notebook(tmp_path / "gpu" / f"{name}.ipynb")
    assert variant["metadata"]["q8lib"]["gpu_run"]["env"]["Q8_MODEL"] == "random-2b"
    assert variant["metadata"]["q8lib"]["executed_on"] is None and "widgets" not in variant["metadata"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in _code(variant))
    assert "Not executed yet" in "".join(variant["cells"][0]["source"])

    cpu = gv.read_notebook(tmp_path / f"{name}.ipynb")
    cell = _code(cpu)[2]
    cell["source"] = "".join(cell["source"]) + "\nprint('edited')\n"
    gv.write_notebook(cpu, tmp_path / f"{name}.ipynb")
    problems = gv.variant_problems(tmp_path, name)
    assert problems and "differs in its source" in problems[0]
    assert gv.write_variants(tmp_path, [name]) == {name: "written"}
    assert gv.variant_problems(tmp_path, name) == []


def test_regenerating_keeps_an_executed_variant_in_sync(tmp_path):
    name = "01_inspect_ltx_transformer"
    shutil.copy(NB_DIR / f"{name}.ipynb", tmp_path)
    gv.write_variants(tmp_path, [name])
    path = tmp_path / "gpu" / f"{name}.ipynb"
    nb = gv.read_notebook(path)  # what run_on_gpu.py leaves: outputs, the GPU in the metadata and the banner
    rec = dict(gpu="NVIDIA H200", capability="sm_90", torch="2.11", triton="3.6", diffusers="0.42.1",
               date="2026-12-02T10:00:00+00:00", env=gv.variant_env(name))
    _code(nb)[0]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["MODEL='random-2b'\n"]}]
    nb["metadata"]["q8lib"]["executed_on"] = rec
    nb["cells"][0]["source"] = gv.banner(name, rec)
    gv.write_notebook(nb, path)
    assert gv.variant_problems(tmp_path, name) == []
    assert "Executed on** NVIDIA H200 (sm_90)" in gv.banner(name, rec)
    assert gv.write_variants(tmp_path, [name]) == {name: "kept"}
    assert gv.read_notebook(path)["metadata"]["q8lib"]["executed_on"] == rec
    assert gv.write_variants(tmp_path, [name], force=True) == {name: "written"}
    assert gv.read_notebook(path)["metadata"]["q8lib"]["executed_on"] is None


def test_cells_added_after_a_gpu_run_keep_its_outputs(tmp_path):
    """New CPU cells that only read results go into an executed variant with the CPU outputs, marked and named in
    the banner; the GPU run's outputs stay. An edited code cell is refused (it needs a GPU run)."""
    name = "01_inspect_ltx_transformer"
    shutil.copy(NB_DIR / f"{name}.ipynb", tmp_path)
    gv.write_variants(tmp_path, [name])
    path = tmp_path / "gpu" / f"{name}.ipynb"
    with pytest.raises(ValueError, match="no GPU run"):
        gv.add_cpu_cells(tmp_path, name)
    nb = gv.read_notebook(path)
    rec = dict(gpu="NVIDIA H200", capability="sm_90", torch="2.11", triton="3.6", diffusers="0.42.1",
               date="2026-12-02T10:00:00+00:00", env=gv.variant_env(name))
    for i, c in enumerate(_code(nb), 1):
        c.update(execution_count=i, outputs=[{"output_type": "stream", "name": "stdout", "text": [f"gpu {i}\n"]}])
    nb["metadata"]["q8lib"]["executed_on"] = rec
    nb["cells"][0]["source"] = gv.banner(name, rec)
    gv.write_notebook(nb, path)
    cpu = gv.read_notebook(tmp_path / f"{name}.ipynb")
    new_code = {"cell_type": "code", "id": "newcell1", "metadata": {}, "execution_count": 7, "source": "print(1)\n",
                "outputs": [{"output_type": "stream", "name": "stdout", "text": ["1\n"]}]}
    cpu["cells"][3:3] = [{"cell_type": "markdown", "id": "newmd1", "metadata": {}, "source": "## New\n"}, new_code]
    gv.write_notebook(cpu, tmp_path / f"{name}.ipynb")
    assert gv.variant_problems(tmp_path, name)
    assert gv.add_cpu_cells(tmp_path, name) == 1
    assert gv.variant_problems(tmp_path, name) == []
    out = gv.read_notebook(path)
    added = [c for c in _code(out) if c.get("metadata", {}).get("q8lib", {}).get("output_from") == "cpu"]
    assert len(added) == 1 and added[0]["execution_count"] is None and added[0]["outputs"] == new_code["outputs"]
    kept = [c for c in _code(out) if c not in added]
    assert [c["outputs"][0]["text"] for c in kept] == [[f"gpu {i}\n"] for i in range(1, len(kept) + 1)]
    assert "Except 1 code cell added" in "".join(out["cells"][0]["source"])
    cell = _code(cpu)[0]  # a code cell of the GPU run edited: refused
    cell["source"] = "".join(cell["source"]) + "\nprint('edited')\n"
    gv.write_notebook(cpu, tmp_path / f"{name}.ipynb")
    with pytest.raises(ValueError, match="GPU run"):
        gv.add_cpu_cells(tmp_path, name)


def test_shrink_outputs_replaces_the_largest_outputs():
    big = {"output_type": "display_data", "metadata": {}, "data": {"text/html": ["x" * 3_000_000]}}
    small = {"output_type": "stream", "name": "stdout", "text": ["kept\n"]}
    cell = {"cell_type": "code", "execution_count": 1, "metadata": {}, "source": "", "outputs": [small, big]}
    nb = {"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    assert gpu_run.shrink_outputs(nb, max_mb=10) == []
    removed = gpu_run.shrink_outputs(nb, max_mb=1)
    assert removed == ["cell 1: 3.0 MB"] and nb["cells"][0]["outputs"][0] == small
    assert "was removed from this copy" in nb["cells"][0]["outputs"][1]["data"]["text/plain"][0]
    assert len(json.dumps(nb)) < 1e6


def test_artifacts_left_out_are_named(tmp_path):
    """An artifact too large to bring back (notebook 05's side-by-side noise video: > 15 MB) or not written is named
    in the run record, not skipped silently."""
    name = "05_q8_attention_inference"
    (rel,) = gv.VARIANTS[name]["artifacts"]
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    assert gpu_run._artifacts(nb_dir, name) == ([], [f"{rel}: not written"])
    video = nb_dir / rel
    video.parent.mkdir(parents=True)
    video.write_bytes(b"0" * 2000)
    assert gpu_run._artifacts(nb_dir, name) == ([nb_dir / rel], [])
    assert gpu_run._artifacts(nb_dir, name, max_bytes=1000)[1] == [f"{rel}: 0.0 MB, over 0.001 MB"]


def test_coalesce_streams_merges_consecutive_prints():
    outs = [{"output_type": "stream", "name": "stdout", "text": ["a\n"]},
            {"output_type": "stream", "name": "stdout", "text": "b\nc\n"},
            {"output_type": "stream", "name": "stderr", "text": ["w\n"]},
            {"output_type": "stream", "name": "stdout", "text": ["d\n"]}]
    nb = {"cells": [{"cell_type": "code", "outputs": outs}, {"cell_type": "markdown", "source": "x"}]}
    gpu_run.coalesce_streams(nb)
    assert [(o["name"], "".join(o["text"])) for o in nb["cells"][0]["outputs"]] == [
        ("stdout", "a\nb\nc\n"), ("stderr", "w\n"), ("stdout", "d\n")]


def test_gpu_record_and_the_executor_refusals(tmp_path):
    torch = pytest.importorskip("torch")
    rec = gpu_run.gpu_record()
    assert rec["torch"] == torch.__version__ and rec["date"] and "triton" in rec
    if torch.cuda.is_available():
        assert rec["gpu"] and rec["capability"].startswith("sm_")
        return
    assert rec["gpu"] is None
    pytest.importorskip("nbclient")
    name = "07_ltx2_in_8_bits"
    shutil.copy(NB_DIR / f"{name}.ipynb", tmp_path)
    with pytest.raises(RuntimeError, match="not in sync"):
        gpu_run.execute_variant(tmp_path, name)
    gv.write_variants(tmp_path, [name])
    with pytest.raises(RuntimeError, match="no CUDA GPU here"):
        gpu_run.execute_variant(tmp_path, name)


def test_cell_clock_logs_each_cell_as_it_runs(capsys):
    nbclient, nbformat = pytest.importorskip("nbclient"), pytest.importorskip("nbformat")
    cell_s = {}
    node = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("x"), nbformat.v4.new_code_cell("1 + 1"),
                                           nbformat.v4.new_code_cell("import time; time.sleep(0.2)")])
    client = nbclient.NotebookClient(node, timeout=60, kernel_name="python3",
                                     on_cell_start=gpu_run._cell_clock(cell_s, "nb", start=True),
                                     on_cell_executed=gpu_run._cell_clock(cell_s, "nb", start=False))
    client.execute()
    assert sorted(cell_s) == [1, 2] and cell_s[2] >= 0.2
    err = capsys.readouterr().err
    assert "nb cell 1:" in err and "nb cell 2:" in err
