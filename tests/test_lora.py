"""LoRA with q8lib on the tiny trained default, the way a diffusers user writes it (q8lib.lora).

(a) fuse into the float model, unload, then quantize; (b) adapters on the quantized transformer
(``q8lib.load_lora``, then diffusers' set_adapters/disable_lora/enable_lora/delete_adapters/
unload_lora_weights/fuse_lora). The LoRAs are random, seeded, in diffusers' LoRA file format (a
``.safetensors`` file with ``transformer.transformer_blocks.N.<module>.lora_A/B.weight`` keys); each
case is compared with the unquantized model carrying the same LoRA through diffusers' own loader.
"""
import copy
import os
import sys

import pytest
import torch
from torch import nn

pytest.importorskip("peft")

import q8lib  # noqa: E402
from helpers import rel_err  # noqa: E402
from q8lib.backends import get_backend  # noqa: E402
from q8lib.errors import MissingPackageError, Q8Warning, SettingsError  # noqa: E402
from q8lib.fused import install_fused_blocks, is_fused, uninstall_fused_blocks  # noqa: E402
from q8lib.lora import adapter_layers  # noqa: E402
from q8lib.lora_layer import Q8LoraLinear  # noqa: E402
from q8lib.models import dummy_inputs  # noqa: E402
from q8lib.tiny import default_pipeline  # noqa: E402
from snippets import readme_snippet  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

# every linear of a block (diffusers' names): the FFN up-projection carries the GELU epilogue in Q8
TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
           "attn2.to_out.0", "ff.net.0.proj", "ff.net.2")
# B A of this size changes the tiny default's transformer output by 0.151 (relative, measured), 13x the
# error of the 8-bit transformer itself (int8: 0.0114 against fp32)
STRENGTH = 4.0
MEASURE = os.environ.get("Q8LIB_MEASURE") == "1"  # print the measured errors behind the bounds


def _report(what, value):
    if MEASURE:
        print(f"\nmeasured {what}: {value:.3g}", file=sys.stderr)
    return value


def save_lora(path, transformer, seed, rank=4, blocks=None):
    """A random LoRA in diffusers' LTX file format; returns ``path``."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    state = {}
    for i, block in enumerate(transformer.transformer_blocks):
        if blocks is not None and i not in blocks:
            continue
        for name in TARGETS:
            lin = block.get_submodule(name)
            key = f"transformer.transformer_blocks.{i}.{name}"
            state[f"{key}.lora_A.weight"] = torch.randn(rank, lin.in_features, generator=g) / lin.in_features ** 0.5
            state[f"{key}.lora_B.weight"] = torch.randn(lin.out_features, rank, generator=g) * (
                STRENGTH / (rank * lin.in_features) ** 0.5)
    save_file(state, path)
    return path


@pytest.fixture(scope="module")
def tiny():
    return default_pipeline()


def _pipe(tiny, dtype=torch.float32):
    """A pipeline of its own (a fresh copy of the transformer; the other components are shared)."""
    return type(tiny)(**{**tiny.components, "transformer": copy.deepcopy(tiny.transformer).to(dtype)})


def _q8_pipe(tiny, weight_dtype="int8", dtype=torch.float32):
    pipe = _pipe(tiny, dtype)
    q8lib.quantize_(pipe.transformer, q8lib.Q8Config(weight_dtype=weight_dtype), backend="reference", progress=False)
    return pipe


@torch.no_grad()
def _out(pipe):
    t = pipe.transformer
    return t(**dummy_inputs(dict(t.config), 2, 3, 4, 4, 16, seed=0, dtype=t.dtype)).sample.float()


@pytest.fixture(scope="module")
def loras(tiny, tmp_path_factory):
    d = tmp_path_factory.mktemp("loras")
    return {name: str(save_lora(d / f"{name}.safetensors", tiny.transformer, seed)) for name, seed in
            (("style", 1), ("motion", 2))}


def test_fuse_then_quantize_matches_the_float_model_with_the_lora(tiny, loras):
    """(a): pipe.load_lora_weights + fuse_lora + unload_lora_weights, then quantize_: plain nn.Linear again."""
    ref = _pipe(tiny)
    plain = _out(ref)
    ref.load_lora_weights(loras["style"], adapter_name="style")
    want = _out(ref)
    pipe = _pipe(tiny)
    pipe.load_lora_weights(loras["style"], adapter_name="style")
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    block = pipe.transformer.transformer_blocks[0]
    assert all(type(block.get_submodule(n)) is nn.Linear for n in TARGETS)
    assert not adapter_layers(pipe.transformer)
    q8lib.quantize_(pipe.transformer, q8lib.Q8Config(), backend="reference", progress=False)
    got = _out(pipe)
    effect = _report("LoRA effect on the fp32 output", rel_err(plain, want))
    # measured 0.0135 (the 8-bit transformer's own error against fp32 is 0.0114); the LoRA's effect 0.151
    assert _report("(a) fused+Q8 vs fp32 with LoRA", rel_err(want, got)) < 0.02
    assert effect > 0.1


def test_quantize_refuses_a_transformer_holding_adapter_layers(tiny, loras):
    pipe = _pipe(tiny)
    pipe.load_lora_weights(loras["style"])
    with pytest.raises(SettingsError, match=r"fuse_lora\(\); pipe.unload_lora_weights\(\)"):
        q8lib.quantize_(pipe.transformer, q8lib.Q8Config(), progress=False)
    pipe.fuse_lora()  # fused but not unloaded: the peft layers are still there
    with pytest.raises(SettingsError, match="LoRA adapter layers"):
        q8lib.quantize_(pipe.transformer, q8lib.Q8Config(), progress=False)


@pytest.mark.parametrize("weight_dtype, dtype, bound", [
    ("int8", torch.float32, 0.02),      # measured 0.0144 (Q8 alone vs fp32: 0.0114)
    ("fp8_e4m3", torch.bfloat16, 0.04),  # measured 0.0280 (Q8 alone vs bf16: 0.0236)
])
def test_lora_on_the_q8_transformer_matches_the_float_model(tiny, loras, weight_dtype, dtype, bound):
    """(b): q8lib.load_lora onto the quantized transformer; the adapters run in the model's float dtype."""
    ref = _pipe(tiny, dtype)
    ref.load_lora_weights(loras["style"], adapter_name="style")
    want = _out(ref)
    pipe = _q8_pipe(tiny, weight_dtype, dtype)
    assert q8lib.load_lora(pipe, loras["style"], adapter_name="style") == "style"
    layers = [m for m in pipe.transformer.modules() if isinstance(m, Q8LoraLinear)]
    assert len(layers) == len(TARGETS) * pipe.transformer.config.num_layers
    # peft would have cast the adapter to the base weight's dtype (float8_e4m3fn is floating point)
    assert all(m.lora_A["style"].weight.dtype == dtype and m.lora_B["style"].weight.dtype == dtype for m in layers)
    assert pipe.get_active_adapters() == ["style"]
    assert _report(f"(b) {weight_dtype} Q8+LoRA vs {dtype} with LoRA", rel_err(want, _out(pipe))) < bound


def test_switch_and_remove_adapters_with_diffusers_calls(tiny, loras):
    ref, pipe = _pipe(tiny), _q8_pipe(tiny)
    plain = _out(pipe)
    for p, load in ((ref, ref.load_lora_weights), (pipe, lambda *a, **k: q8lib.load_lora(pipe, *a, **k))):
        load(loras["style"], adapter_name="style")
        load(loras["motion"], adapter_name="motion")
    assert pipe.get_list_adapters() == {"transformer": ["style", "motion"]}
    for names, weights in ((["style", "motion"], [1.0, 0.5]), (["motion"], [0.7]), (["style"], [1.0])):
        ref.set_adapters(names, weights)
        pipe.set_adapters(names, weights)
        # measured 0.0163, 0.0135, 0.0144
        assert _report(f"set_adapters({names}, {weights})", rel_err(_out(ref), _out(pipe))) < 0.02
    style = _out(pipe)
    pipe.disable_lora()
    assert torch.equal(_out(pipe), plain)  # disabled: exactly the 8-bit transformer
    pipe.enable_lora()
    assert torch.equal(_out(pipe), style)
    pipe.set_adapters(["style", "motion"], [1.0, 0.5])
    pipe.delete_adapters("motion")
    assert pipe.get_list_adapters() == {"transformer": ["style"]}
    assert torch.equal(_out(pipe), style)
    pipe.unload_lora_weights()
    assert torch.equal(_out(pipe), plain)  # removed: the same modules and buffers as before
    assert not adapter_layers(pipe.transformer) and not hasattr(pipe.transformer, "peft_config")
    assert type(pipe.transformer.transformer_blocks[0].attn1.to_q) is q8lib.Q8Linear


def test_fused_blocks_run_diffusers_forward_where_an_adapter_is_active(tiny, loras, tmp_path, monkeypatch):
    """With the fused block forward installed (the GPU path; the reference backend here runs the same
    code), a block whose linears carry an active adapter falls back to the unfused forward."""
    pipe = _q8_pipe(tiny)
    t = pipe.transformer
    n = t.config.num_layers
    calls = []
    be = get_backend("reference")
    real = be.rms_norm_quantize
    monkeypatch.setattr(be, "rms_norm_quantize", lambda *a: calls.append(1) or real(*a))

    def run():  # the output and how many blocks ran fused (norm1 and norm2 each call rms_norm_quantize once)
        calls.clear()
        out = _out(pipe)
        return out, len(calls) // 2

    unfused_plain, _ = run()
    assert install_fused_blocks(t, backend="reference") == n
    fused_plain, fused_blocks = run()
    assert fused_blocks == n and rel_err(unfused_plain, fused_plain) < 1e-6  # measured 0.0
    q8lib.load_lora(pipe, save_lora(tmp_path / "block0.safetensors", t, 3, blocks={0}), adapter_name="block0")
    assert run()[1] == n - 1  # block 0 falls back, the others stay fused
    q8lib.load_lora(pipe, loras["style"], adapter_name="style")
    pipe.set_adapters(["style"])
    style, fused_blocks = run()
    assert fused_blocks == 0
    uninstall_fused_blocks(t)
    assert torch.equal(run()[0], style)  # the fallback is diffusers' forward, bit for bit
    assert install_fused_blocks(t, backend="reference") == n  # blocks with LoRA layers are eligible
    ref = _pipe(tiny)
    ref.load_lora_weights(loras["style"], adapter_name="style")
    # measured 0.0144, as without fused blocks
    assert _report("fused blocks + LoRA vs fp32 with LoRA", rel_err(_out(ref), style)) < 0.02
    pipe.disable_lora()
    out, fused_blocks = run()
    assert torch.equal(out, fused_plain) and fused_blocks == n
    pipe.enable_lora()
    pipe.unload_lora_weights()
    out, fused_blocks = run()
    assert torch.equal(out, fused_plain) and fused_blocks == n and all(is_fused(b) for b in t.transformer_blocks)


def test_fuse_lora_on_q8_requantizes_lossily(tiny, loras):
    """diffusers' fuse_lora on the 8-bit transformer: dequantize, add, requantize (one more rounding)."""
    ref = _pipe(tiny)
    ref.load_lora_weights(loras["style"], adapter_name="style")
    want = _out(ref)
    pipe = _q8_pipe(tiny)
    plain = _out(pipe)
    q8lib.load_lora(pipe, loras["style"], adapter_name="style")
    unfused = _out(pipe)
    install_fused_blocks(pipe.transformer, backend="reference")
    with pytest.warns(Q8Warning, match="lossy"):
        pipe.fuse_lora()
    fused = _out(pipe)
    _report("fuse_lora on Q8 vs the unfused adapter", rel_err(unfused, fused))
    # measured 0.0143 (0.0150 from the unfused adapter; fused before quantizing: 0.0135, adapter: 0.0144)
    assert _report("fuse_lora on Q8 vs fp32 with LoRA", rel_err(want, fused)) < 0.03
    with pytest.warns(Q8Warning):
        pipe.unfuse_lora()  # the adapter runs beside the 8-bit weights again, which were rounded twice more
    # measured 0.0168 and 0.0138: each fuse/unfuse adds about the 8-bit transformer's own error (0.011)
    assert _report("after unfuse_lora vs before fuse_lora", rel_err(unfused, _out(pipe))) < 0.03
    pipe.disable_lora()
    assert _report("unfused and disabled vs plain Q8", rel_err(plain, _out(pipe))) < 0.03
    pipe.enable_lora()
    with pytest.warns(Q8Warning):
        pipe.fuse_lora()
    fused = _out(pipe)
    pipe.unload_lora_weights()  # keeps the merged 8-bit weights, drops the adapter layers
    assert type(pipe.transformer.transformer_blocks[0].ff.net[0].proj) is q8lib.Q8Linear
    assert torch.equal(_out(pipe), fused)


def test_load_lora_errors(tiny, loras, tmp_path, monkeypatch):
    pipe = _q8_pipe(tiny)
    with pytest.raises(ValueError, match="not supported"):  # diffusers' own loader: peft has no Q8Linear layer
        pipe.load_lora_weights(loras["style"])
    assert not adapter_layers(pipe.transformer)
    with pytest.raises(SettingsError, match="not a LoRA state dict"):
        q8lib.load_lora(pipe, {"transformer.proj_in.weight": torch.zeros(4, 4)})
    with pytest.raises(SettingsError, match="no keys under 'transformer.'"):
        q8lib.load_lora(pipe, {"text_encoder.x.lora_A.weight": torch.zeros(4, 4)})
    with pytest.raises(SettingsError, match="hotswap"):
        q8lib.load_lora(pipe, loras["style"], adapter_name="style", hotswap=True)
    q8lib.load_lora(pipe.transformer, loras["style"], adapter_name="style")  # the transformer alone works too
    with pytest.raises(SettingsError, match="already in use"):
        q8lib.load_lora(pipe, loras["motion"], adapter_name="style")
    with pytest.raises(SettingsError, match="save_q8: the transformer holds LoRA adapter layers"):
        q8lib.save_q8(pipe.transformer, tmp_path / "ck")
    monkeypatch.setitem(sys.modules, "peft", None)  # as if peft were not installed
    with pytest.raises(MissingPackageError, match=r"q8lib\[lora\]"):
        q8lib.load_lora(pipe, loras["motion"], adapter_name="motion")


@pytest.mark.slow  # a whole 8-step generation each: 8-10 s on 2 cores, a minute on a busy machine
@pytest.mark.parametrize("name", ["lora-fuse", "lora-q8"])
def test_readme_lora_snippet_runs(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the snippets write their LoRA files to the working folder
    code = readme_snippet(name)
    exec(compile(code, f"README.md <!-- snippet: {name} -->", "exec"), {"__name__": "__readme__"})
