"""Issue #16.1: a Q8 transformer or pipeline saved with diffusers' save_pretrained loads back (with q8lib's
loaders) to the same outputs, and a plain diffusers from_pretrained of such a folder fails naming q8lib.

Each test runs the workflow as a diffusers user writes it, on the embedded tiny default (CPU, reference
backend: the outputs are compared bit for bit).
"""
import json

import pytest
import torch
from diffusers import LTXPipeline, LTXVideoTransformer3DModel

import q8lib
from q8lib.models import dummy_inputs
from q8lib.tiny import SHAPES_DIR
from snippets import README, run_snippet, snippet

PROMPT = "a red circle moving right"
SMALL = dict(height=32, width=32, num_frames=9, num_inference_steps=2, output_type="pt")


def _generate(pipe) -> torch.Tensor:
    pipe.set_progress_bar_config(disable=True)
    return pipe(PROMPT, generator=torch.Generator().manual_seed(0), **SMALL).frames


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``(folder, video)``: the tiny default quantized with quantize_, its video, then pipe.save_pretrained(folder)."""
    pipe = LTXPipeline.from_pretrained(SHAPES_DIR)
    q8lib.quantize_(pipe.transformer, q8lib.Q8Config(), progress=False)
    video = _generate(pipe)
    folder = tmp_path_factory.mktemp("roundtrip") / "ltx-q8"
    pipe.save_pretrained(folder)
    return folder, video


def _tiny_transformer(weight_dtype="int8"):
    model = LTXVideoTransformer3DModel.from_pretrained(SHAPES_DIR, subfolder="transformer")
    return q8lib.quantize_(model, q8lib.Q8Config(weight_dtype=weight_dtype), progress=False)


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("weight_dtype", ["int8", "fp8_e4m3"])
def test_transformer_save_pretrained_loads_with_load_q8_to_the_same_output(tmp_path, weight_dtype):
    q8 = _tiny_transformer(weight_dtype)
    q8.save_pretrained(tmp_path / "t")  # diffusers' own save
    entry = json.loads((tmp_path / "t" / "config.json").read_text())["quantization_config"]
    assert entry["weight_dtype"] == weight_dtype and entry["q8lib_version"] == q8lib.__version__
    loaded = q8lib.load_q8(tmp_path / "t", torch_dtype=None)
    _assert_same_state(q8, loaded)
    inputs = dummy_inputs(dict(q8.config), 1, 2, 4, 4, 8)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).sample, q8(**inputs).sample)


def test_plain_diffusers_pipeline_load_is_refused_naming_q8lib(saved):
    folder, _ = saved
    with pytest.raises(ValueError) as e:
        LTXPipeline.from_pretrained(folder)
    msg = str(e.value)
    assert msg.startswith("Unknown quantization type, got q8lib (a Q8 checkpoint saved by q8lib")
    assert "q8lib.load_pipeline_q8(pipeline_folder)" in msg and "q8lib.load_q8(transformer_folder)" in msg
    assert msg.split(" - supported")[0] in README.read_text()  # the README quotes it as users see it


def test_plain_diffusers_transformer_load_is_refused_naming_q8lib(saved):
    folder, _ = saved
    for args in ((folder / "transformer",), (folder,)):
        with pytest.raises(ValueError, match=r"got q8lib \(.*q8lib\.load_q8\(transformer_folder\)"):
            LTXVideoTransformer3DModel.from_pretrained(*args, **({"subfolder": "transformer"} if args == (folder,) else {}))


def test_load_pipeline_q8_generates_the_same_video(saved):
    folder, video = saved
    pipe = q8lib.load_pipeline_q8(folder)
    assert type(pipe) is LTXPipeline and q8lib.is_quantized(pipe.transformer)
    assert torch.equal(_generate(pipe), video)
    # the same by hand, the diffusers way of passing a component already built
    pipe = LTXPipeline.from_pretrained(folder, transformer=q8lib.load_q8(folder, subfolder="transformer",
                                                                         torch_dtype=None))
    assert torch.equal(_generate(pipe), video)


def test_load_pipeline_q8_takes_from_pretrained_arguments(saved):
    folder, _ = saved
    pipe = q8lib.load_pipeline_q8(folder, LTXPipeline, dtype=torch.bfloat16, attention="sdpa")
    assert pipe.transformer.proj_in.weight.dtype == pipe.vae.dtype == torch.bfloat16
    assert pipe.transformer._q8_runtime.attention == "sdpa"
    assert pipe.transformer.transformer_blocks[0].attn1.to_q.weight.dtype == pipe.transformer._q8_config.qdtype
    with pytest.raises(q8lib.SettingsError, match="loads the transformer itself"):
        q8lib.load_pipeline_q8(folder, transformer=pipe.transformer)


@pytest.mark.parametrize("options", [dict(max_shard_size="300KB"), dict(safe_serialization=False),
                                     dict(safe_serialization=False, max_shard_size="300KB"), dict(variant="q8")],
                         ids=["sharded", "bin", "bin-sharded", "variant"])
def test_every_save_pretrained_layout_loads(tmp_path, options):
    q8 = _tiny_transformer()
    q8.save_pretrained(tmp_path / "t", **options)
    files = {p.name for p in (tmp_path / "t").iterdir()}
    if "max_shard_size" in options:
        assert any(f.endswith(".index.json") for f in files) and len(files) > 3
    if options.get("safe_serialization") is False:
        assert not any(f.endswith(".safetensors") for f in files)
    loaded = q8lib.load_q8(tmp_path / "t", torch_dtype=None, variant=options.get("variant"))
    _assert_same_state(q8, loaded)
    if "variant" in options:
        with pytest.raises(q8lib.Q8CheckpointError, match=r"diffusion_pytorch_model\.q8\.safetensors: pass the variant="):
            q8lib.load_q8(tmp_path / "t")


def test_save_q8_and_save_pretrained_write_the_same_folder(tmp_path):
    q8 = _tiny_transformer()
    q8.save_pretrained(tmp_path / "diffusers")
    q8lib.save_q8(q8, tmp_path / "q8lib")
    assert (tmp_path / "diffusers" / "config.json").read_text() == (tmp_path / "q8lib" / "config.json").read_text()
    meta = json.loads((tmp_path / "q8lib" / "q8lib.json").read_text())
    entry = json.loads((tmp_path / "q8lib" / "config.json").read_text())["quantization_config"]
    assert {k: entry[k] for k in meta} == meta
    _assert_same_state(q8lib.load_q8(tmp_path / "diffusers", torch_dtype=None),
                       q8lib.load_q8(tmp_path / "q8lib", torch_dtype=None))


def test_a_pipeline_folder_given_to_load_q8_says_what_to_do(saved):
    folder, _ = saved
    with pytest.raises(q8lib.Q8CheckpointError, match="a pipeline folder; load its transformer with subfolder='transformer'"):
        q8lib.load_q8(folder)


def test_readme_save_load_snippet_runs(tmp_path):
    ns = run_snippet("save-load", tmp_path)
    assert len(ns["video"]) == 9 and q8lib.is_quantized(ns["pipe"].transformer)
    _assert_same_state(ns["pipe"].transformer, ns["transformer"])
    with pytest.raises(ValueError, match="got q8lib"):  # what the snippet's comment says
        LTXPipeline.from_pretrained(tmp_path / "ltx-q8")


def test_snippet_helper_finds_exactly_one_block(tmp_path):
    (tmp_path / "R.md").write_text("<!-- snippet: a -->\n```python\nx = 1\n```\n<!-- snippet: b -->\n```\ny\n```\n"
                                   "<!-- snippet: b -->\n```\nz\n```\n")
    assert snippet("a", tmp_path / "R.md") == "x = 1"
    for name in ("b", "c"):
        with pytest.raises(LookupError, match=f"snippet: {name} -->, found"):
            snippet(name, tmp_path / "R.md")
