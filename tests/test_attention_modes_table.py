"""Notebook 05's attention-modes table (q8lib.tutorial.attention_modes) on small synthetic results files."""
import json

import pytest

from q8lib.tutorial import attention_modes as am


def _write(tmp_path, drop_int8_e2e=False):
    shapes = {s: {"results": {"sdpa_cudnn_bf16": {"ms": 1.0, "rel_err": 0.002}, "q8_fp8_kernel": {"ms": 0.8},
                              "cudnn_fp8_kernel": {"ms": 0.5, "rel_err": 0.06}}} for s in am.SHAPES}
    (tmp_path / "attention_cudnn_fp8_h200.json").write_text(json.dumps({"shapes": shapes}))
    int8 = {am.SHAPES[0]: {"results": {"q8_int8_kernel": {"ms": 2.0, "rel_err": 0.011}}}}  # second shape missing
    (tmp_path / "attention_h200_int8.json").write_text(json.dumps({"shapes": int8}))
    runs = {f"{w}+{m}": {"psnr_db_mean": p} for (w, m), p in {("q8_linears", "sdpa"): 48.0, ("fp32_linears", "fp8"): 42.0,
                                                              ("q8_linears", "fp8"): 40.0,
                                                              ("fp32_linears", "fp8_tensor"): 41.0,
                                                              ("q8_linears", "fp8_tensor"): 39.0,
                                                              ("fp32_linears", "int8"): 53.0,
                                                              ("q8_linears", "int8"): 49.0}.items()
            if not (drop_int8_e2e and m == "int8")}
    (tmp_path / "accuracy").mkdir()
    (tmp_path / am.E2E_FILE).write_text(json.dumps({"end_to_end": {"runs": runs}}))


def test_table_reads_every_mode_and_marks_what_was_not_measured(tmp_path):
    _write(tmp_path, drop_int8_e2e=True)
    rows = am.attention_modes(tmp_path)
    assert list(rows) == list(am.MODES)
    assert rows["fp8_tensor"]["ms"][am.SHAPES[0]] == 0.5 and rows["fp8_tensor"]["rel_err"] == 0.06
    assert rows["int8"]["ms"][am.SHAPES[1]] is None and rows["int8"]["psnr_alone_db"] is None
    assert rows["sdpa"]["psnr_alone_db"] is None and rows["sdpa"]["psnr_with_linears_db"] == 48.0
    text = am.attention_modes_table(tmp_path)
    lines = text.splitlines()
    fp8t = next(l for l in lines if l.startswith("fp8_tensor "))
    assert "0.500 (2.00x)" in fp8t and "0.0600" in fp8t and "41.0" in fp8t and "39.0" in fp8t
    int8 = next(l for l in lines if l.startswith("int8 "))
    assert "2.000 (0.50x)" in int8 and "–" in int8
    assert "exact" in next(l for l in lines if l.startswith("sdpa "))


def test_missing_results_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="fp8_tensor_e2e_cpu.json"):
        am.attention_modes(tmp_path)
