"""Q8Config is the weight format (what q8lib.json holds); runtime choices are arguments (Q8Runtime); filter_fn."""
import warnings

import pytest
import torch

import q8lib
from q8lib import Q8Config, Q8Linear, Q8Runtime, SettingsError
from q8lib.models import dummy_inputs
from q8lib.tiny import make_tiny_transformer


def test_metadata_holds_the_weight_format_only():
    meta = Q8Config(weight_dtype="int8", hadamard_block=64).to_metadata()
    assert set(meta) == {"format", "format_version", "weight_dtype", "hadamard_block", "keep_high_precision"}
    assert Q8Config.from_metadata(meta) == Q8Config(weight_dtype="int8", hadamard_block=64)


def test_quantization_config_entry_names_q8lib_and_round_trips():
    cfg = Q8Config(weight_dtype="fp8_e4m3", hadamard_block=64, keep_high_precision=("proj_in",))
    entry = cfg.to_quantization_config()
    assert entry["quant_method"].startswith("q8lib") and "q8lib.load_pipeline_q8(" in entry["quant_method"]
    assert entry["q8lib_version"] == q8lib.__version__ and Q8Config.is_quantization_config(entry)
    assert Q8Config.from_quantization_config(entry) == cfg
    assert not Q8Config.is_quantization_config({"quant_method": "torchao"})
    # quantize_ puts it in the model's diffusers config (what save_pretrained writes), runtime choices not
    model = q8lib.quantize_(make_tiny_transformer(), cfg, attention="sdpa", progress=False)
    assert model.config["quantization_config"] == entry and "attention" not in entry


def test_runtime_is_checked_and_has_defaults():
    assert Q8Config().runtime() == Q8Runtime(backend="auto", attention="fp8")
    assert Q8Config().runtime(attention="sdpa") == Q8Runtime(backend="auto", attention="sdpa")
    assert Q8Runtime(attention="int8").attention == "int8"
    with pytest.raises(SettingsError, match="attention must be 'fp8', 'int8', 'sdpa', 'fp8_tensor' or 'keep'"):
        Q8Runtime(attention="flash")
    with pytest.raises(SettingsError, match="backend must be a name"):
        q8lib.quantize_(make_tiny_transformer(), Q8Config(), backend="", progress=False)


def test_earlier_runtime_keywords_still_work_and_name_the_new_place():
    with pytest.warns(FutureWarning, match=r"q8lib\.quantize_\(model, config, backend='reference', attention='sdpa'\)"):
        cfg = Q8Config(weight_dtype="int8", backend="reference", attention="sdpa")
    assert (cfg.backend, cfg.attention) == ("reference", "sdpa")  # read access of earlier versions
    assert "backend" not in cfg.to_metadata()
    model = q8lib.quantize_(make_tiny_transformer(), cfg, progress=False)
    assert model._q8_runtime == Q8Runtime(backend="reference", attention="sdpa")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new form warns about nothing
        model = q8lib.quantize_(make_tiny_transformer(), Q8Config(weight_dtype="int8"), attention="keep",
                                progress=False)
    assert model._q8_runtime.attention == "keep"


def test_filter_fn_chooses_modules_and_the_checkpoint_round_trips(tmp_path, seed):
    model = make_tiny_transformer(seed=seed % 1000)
    q8 = q8lib.quantize_(model, Q8Config(weight_dtype="int8"), lambda module, fqn: ".attn1." in fqn,
                         attention="sdpa", progress=False)
    linears = {n for n, m in q8.named_modules() if isinstance(m, Q8Linear)}
    assert linears and all(".attn1." in n for n in linears)
    assert "transformer_blocks.0.attn2.to_q" in q8._q8_config.keep_high_precision
    inputs = dummy_inputs(dict(model.config), seed=seed)
    with torch.no_grad():
        out = q8(**inputs).sample
        q8lib.save_q8(q8, tmp_path / "ck")
        loaded = q8lib.load_q8(tmp_path / "ck", torch_dtype=torch.float32, attention="sdpa")
        assert {n for n, m in loaded.named_modules() if isinstance(m, Q8Linear)} == linears
        torch.testing.assert_close(loaded(**inputs).sample, out, rtol=0, atol=0)
    with pytest.raises(SettingsError, match="filter_fn must be a function"):
        q8lib.quantize_(make_tiny_transformer(), Q8Config(), "attn1", progress=False)
