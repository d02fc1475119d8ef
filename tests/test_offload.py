"""A Q8 transformer under diffusers' memory options (q8lib.offload): model / sequential CPU offload, VAE tiling.

diffusers' ``enable_*_cpu_offload`` need an accelerator unless given ``device="cpu"``, which they turn into
``"cpu:0"``; accelerate 1.15 then swaps parameters for plain tensors when it loads them and fails on the next
offload (a bf16 pipeline fails the same way: not q8lib). So the CPU tests attach the same hooks diffusers
attaches, with accelerate's own functions, on ``"cpu"``; the GPU tests (marked ``gpu``) call the pipeline methods.
"""
import contextlib
import json
import sys
from pathlib import Path

import pytest
import torch

import q8lib
from helpers import rel_err
from q8lib import reference as ref
from q8lib.backends import Backend, register_backend
from q8lib.fused import install_fused_blocks, is_fused
from q8lib.models import dummy_inputs
from q8lib.modules import Q8Linear
from q8lib.offload import offloaded_modules
from q8lib.tiny import make_tiny_transformer
from snippets import readme_snippet

accelerate = pytest.importorskip("accelerate")
ROOT = Path(__file__).resolve().parents[1]


class _DirectReads(Backend):
    """The reference math, reading ``norm_q``/``norm_k`` weights directly as the triton backend's attention
    producers do, and recording how many Q8 weights of the model are materialised at each GEMM."""

    name = "test_direct_reads"
    priority = -1
    model = None
    most_materialised = 0

    def matmul(self, x_q, x_scale, w_q, w_scale, bias=None, activation=None, out_dtype=torch.bfloat16):
        if self.model is not None:
            n = sum(not m.weight.is_meta for m in self.model.modules() if isinstance(m, Q8Linear))
            type(self).most_materialised = max(self.most_materialised, n)
        return super().matmul(x_q, x_scale, w_q, w_scale, bias, activation, out_dtype)

    def attention_core(self, attn, query, key, value, image_rotary_emb=None, key_lengths=None, mode="fp8",
                       key_rotary_emb=None):
        q = ref.rms_norm_ref(query, attn.norm_q.weight, attn.norm_q.eps)
        k = ref.rms_norm_ref(key, attn.norm_k.weight, attn.norm_k.eps)
        if image_rotary_emb is not None:
            q = ref.apply_rotary_emb(q, image_rotary_emb)
            k = ref.apply_rotary_emb(k, image_rotary_emb if key_rotary_emb is None else key_rotary_emb)
        q, k, v = (t.unflatten(2, (attn.heads, -1)).transpose(1, 2) for t in (q, k, value))
        return self.attention(q, k, v, key_lengths, None, mode).transpose(1, 2).flatten(2, 3)


register_backend(_DirectReads())


def _sequential_offload(model):
    """What ``pipe.enable_sequential_cpu_offload()`` does to one component, on ``"cpu"``."""
    return accelerate.cpu_offload(model, torch.device("cpu"), offload_buffers=len(model._parameters) > 0)


def _q8_tiny(seed, fused):
    model = make_tiny_transformer(seed=seed % 1000)
    q8lib.quantize_(model, q8lib.Q8Config(weight_dtype="int8"), backend="test_direct_reads", progress=False)
    if fused:
        assert install_fused_blocks(model, backend="test_direct_reads") == len(model.transformer_blocks)
    return model


@pytest.mark.parametrize("fused", [False, True], ids=["processor", "fused_blocks"])
def test_sequential_offload_runs_one_block_at_a_time(seed, fused, monkeypatch):
    """Under sequential offload the 8-bit weights live on the meta device; the fused forward and the attention
    processor load what they read (all of one block / norm_q, norm_k) and give it back after."""
    model = _q8_tiny(seed, fused)
    inputs = dummy_inputs(dict(model.config), 2, 2, 4, 4, 8, seed=seed)
    with torch.no_grad():
        want = model(**inputs).sample
    _sequential_offload(model)
    assert all(m.weight.is_meta for m in model.modules() if isinstance(m, Q8Linear))
    assert "" in offloaded_modules(model) and "transformer_blocks.0.attn1.to_q" in offloaded_modules(model)
    _DirectReads.model, _DirectReads.most_materialised = model, 0
    try:
        with torch.no_grad():
            got = model(**inputs).sample
    finally:
        _DirectReads.model = None
    assert torch.equal(got, want)
    assert all(m.weight.is_meta for m in model.modules() if isinstance(m, Q8Linear))  # nothing kept
    linears_per_block = sum(isinstance(m, Q8Linear) for m in model.transformer_blocks[0].modules())
    assert _DirectReads.most_materialised == (linears_per_block if fused else 1), _DirectReads.most_materialised
    # without q8lib's loading, the direct reads meet meta tensors
    monkeypatch.setattr("q8lib.fused.onloaded", lambda mods: contextlib.nullcontext())
    monkeypatch.setattr("q8lib.attention.onloaded", lambda mods: contextlib.nullcontext())
    with pytest.raises(RuntimeError, match="meta"), torch.no_grad():
        model(**inputs)


def test_full_size_text_encoder_placeholder(monkeypatch):
    """``placeholder_text_encoder`` builds T5-XXL's layout (here shrunk) with one embedding table and finite
    outputs; ``load_pipeline`` adds it to the random-* models only."""
    from q8lib.app import load_pipeline
    from q8lib.app.loading import placeholder_text_encoder
    from q8lib.models import T5_XXL_CONFIG

    monkeypatch.setattr("q8lib.app.loading.T5_XXL_CONFIG", dict(T5_XXL_CONFIG, d_model=64, d_ff=128, num_layers=2,
                                                                 num_heads=4, d_kv=16))
    tokenizer, encoder = placeholder_text_encoder(dtype=torch.bfloat16)
    assert encoder.encoder.embed_tokens is encoder.shared and encoder.dtype == torch.bfloat16
    ids = tokenizer(["a red circle moving right"], padding="max_length", max_length=128, return_tensors="pt")
    with torch.no_grad():
        out = encoder(ids.input_ids, attention_mask=ids.attention_mask).last_hidden_state
    assert out.shape == (1, 128, 64) and torch.isfinite(out).all()
    with pytest.raises(q8lib.SettingsError, match="random-"):
        load_pipeline("tiny", full_size_text_encoder=True)


def test_model_offload_q8_pipeline(seed):
    """``enable_model_cpu_offload`` (its CpuOffload hooks) around a Q8 pipeline with fused blocks: the same
    video, again after the hooks offloaded everything at the end of the first call."""
    from q8lib.tiny import default_pipeline

    pipe = default_pipeline()
    q8lib.quantize_(pipe.transformer, q8lib.Q8Config(weight_dtype="int8"), progress=False)
    install_fused_blocks(pipe.transformer, backend="reference")
    kw = dict(prompt="a red circle moving right", num_frames=1, height=32, width=32, num_inference_steps=1,
              output_type="pt")
    with torch.no_grad():
        want = pipe(generator=torch.Generator().manual_seed(seed), **kw).frames
        pipe.enable_model_cpu_offload(device="cpu")  # CpuOffload only moves whole modules: "cpu:0" works
        assert pipe.transformer._hf_hook is not None and offloaded_modules(pipe.transformer) == [""]
        for _ in range(2):
            assert torch.equal(pipe(generator=torch.Generator().manual_seed(seed), **kw).frames, want)


@pytest.mark.parametrize("how", ["model", "sequential"])
def test_cuda_graphs_refuse_offloaded_models(seed, how):
    model = q8lib.quantize_(make_tiny_transformer(seed=seed % 1000), q8lib.Q8Config(weight_dtype="int8"),
                            progress=False)
    if how == "model":
        accelerate.cpu_offload_with_hook(model, torch.device("cpu"))
    else:
        _sequential_offload(model)
    with pytest.raises(q8lib.SettingsError, match="offload.*disable_cuda_graphs"):
        q8lib.enable_cuda_graphs(model)
    assert "_q8_cuda_graph" not in model.__dict__  # refused before anything changed


def test_offload_settings_are_checked_before_loading(monkeypatch):
    from q8lib.app import compare
    from q8lib.app.settings import check_offload
    from q8lib.errors import MissingPackageError

    cuda = torch.device("cuda")  # the checks only read the device's type
    check_offload("none", torch.device("cpu"))
    check_offload("sequential", cuda)
    with pytest.raises(q8lib.SettingsError, match="needs --device cuda"):
        check_offload("model", torch.device("cpu"))
    with pytest.raises(q8lib.SettingsError, match="none, model, sequential"):
        check_offload("disk", cuda)
    with pytest.raises(q8lib.SettingsError, match="--compile with --offload sequential"):
        check_offload("sequential", cuda, compile=True)
    with pytest.raises(q8lib.SettingsError, match="compare quantizes the transformer in place"):
        compare("a red circle", offload="sequential", device="cpu", no_video=True)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "accelerate" else object())
    with pytest.raises(MissingPackageError, match=r"q8lib\[offload\]"):
        check_offload("model", cuda)


def test_readme_memory_options_snippet(tmp_path, monkeypatch):
    """The README's snippet, on the tiny default instead of the 2B hub model and at its size: on a CPU
    ``device`` is "cpu", so model offload and tiling run there (tiles of 16x16 pixels, so that its 32x32 frames
    are decoded in tiles)."""
    from q8lib.tiny.components import SHAPES_DIR

    pytest.importorskip("imageio_ffmpeg", reason="the snippet writes an mp4 (the GPU machine here lacks imageio-ffmpeg)")
    code = readme_snippet("memory-options")
    for old, new in [('"Lightricks/LTX-Video"', repr(str(SHAPES_DIR))),
                     ("num_frames=81, height=480, width=704", "num_frames=9, height=32, width=32, num_inference_steps=2"),
                     ("pipe.vae.enable_tiling()", "pipe.vae.enable_tiling(tile_sample_min_height=16, tile_sample_min_width=16, "
                                                  "tile_sample_stride_height=8, tile_sample_stride_width=8)")]:
        assert old in code, old
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md:memory-options", "exec"), namespace)
    pipe, video = namespace["pipe"], namespace["video"]
    assert pipe.vae.use_tiling and pipe.transformer._hf_hook is not None and q8lib.is_quantized(pipe.transformer)
    assert len(video) == 9 and video[0].size == (32, 32) and (tmp_path / "ltx_q8.mp4").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::q8lib.errors.Q8FallbackWarning")  # the tiny Q8 model on a CPU
def test_memory_benchmark_smoke(tmp_path):
    """benchmarks/bench_memory_options.py on the tiny default (CPU: no memory figures, and no sequential offload,
    see the module docstring), and the README table it feeds."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_memory_options
    import readme_results

    out = tmp_path / "mem.json"
    rc = bench_memory_options.main(["--device", "cpu", "--model", "tiny", "--frames", "1", "--height", "32",
                                    "--width", "32", "--steps", "1", "--warmup", "0", "--repeats", "1",
                                    "--offload", "none,model", "--tiling", "on", "--text-encoder", "none",
                                    "--out", str(out)])
    assert rc == 0
    d = json.loads(out.read_text())
    assert d["kind"] == "q8lib memory options" and d["device"].startswith("cpu") and d["date"]
    assert {"torch", "diffusers", "accelerate"} <= set(d["versions"])
    assert d["shape"]["transformer_batch"] == 2 and d["settings"]["num_inference_steps"] == 1
    assert "SettingsError" in d["refusals"]["cuda_graphs_with_offload"]
    assert set(d["results"]) == {"q8_none_tiling", "q8_model_tiling", "bf16_none_tiling", "bf16_model_tiling"}
    for r in d["results"].values():
        assert "error" not in r and r["vae_tiling"] and r["step_ms"] > 0 and r["end_to_end_s"] > 0, r
        assert r["est_50_steps_s"] > r["end_to_end_s"] and len(r["runs"]) == 1
    table = "\n".join(readme_results.memory_options_table(d, "mem.json"))
    assert "| Q8 | model | on |" in table and "mem.json" in table


@pytest.mark.gpu
def test_gpu_offload_matches_the_resident_pipeline(seed):
    """On a GPU, through diffusers' own methods (T5 included): the Q8 pipeline with fused triton blocks gives
    the same video resident, with model offload and with sequential offload, and CUDA graphs are refused."""
    from q8lib.app import load_pipeline

    pipe = load_pipeline("tiny", precision="q8", device="cuda")
    assert all(is_fused(b) for b in pipe.transformer.transformer_blocks)
    kw = dict(prompt="a red circle moving right", num_frames=17, height=32, width=32, num_inference_steps=4,
              output_type="pt")

    def run():
        with torch.no_grad():
            return pipe(generator=torch.Generator().manual_seed(seed), **kw).frames.float().cpu()

    want = run()
    q8lib.enable_cuda_graphs(pipe.transformer)
    pipe.enable_model_cpu_offload()
    with pytest.raises(q8lib.SettingsError, match="offload"):  # a graph enabled before the offload: at its call
        run()
    assert q8lib.disable_cuda_graphs(pipe.transformer)  # unwraps the graph, keeps the offload hook
    assert rel_err(want, run()) < 1e-3
    assert rel_err(want, run()) < 1e-3
    pipe.enable_sequential_cpu_offload()
    assert pipe.transformer.transformer_blocks[0].attn1.to_q.weight.is_meta
    assert rel_err(want, run()) < 1e-3
    with pytest.raises(q8lib.SettingsError, match="offload"):
        q8lib.enable_cuda_graphs(pipe.transformer)


@pytest.mark.gpu
@pytest.mark.parametrize("offload", ["model", "sequential"])
def test_gpu_load_pipeline_offload(seed, offload):
    """``load_pipeline(offload=...)`` builds on the CPU and still installs the fused blocks for the GPU."""
    from q8lib.app import load_pipeline, run_pipeline, settings_for

    settings = settings_for("tiny", "a red circle moving right", num_inference_steps=2)
    ref_pipe = load_pipeline("tiny", device="cuda")
    want = run_pipeline(ref_pipe, settings, {}, progress=False)["frames"]
    del ref_pipe
    pipe = load_pipeline("tiny", device="cuda", offload=offload, vae_tiling=True)
    assert all(is_fused(b) for b in pipe.transformer.transformer_blocks)
    got = run_pipeline(pipe, settings, {}, progress=False)
    assert rel_err(want, got["frames"]) < 1e-3 and got["memory"]["peak_gib"] > 0


@pytest.mark.gpu
def test_gpu_readme_snippets(monkeypatch, tmp_path):
    """Both README snippets as written but on the tiny default (model offload + tiling, then sequential offload)."""
    from q8lib.tiny.components import SHAPES_DIR

    pytest.importorskip("imageio_ffmpeg", reason="the snippet writes an mp4 (the GPU machine here lacks imageio-ffmpeg)")
    code = readme_snippet("memory-options") + "\n" + readme_snippet("memory-options-sequential")
    code = code.replace('"Lightricks/LTX-Video"', repr(str(SHAPES_DIR)))
    code = code.replace("num_frames=81, height=480, width=704", "num_frames=17, height=32, width=32, num_inference_steps=2")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md:memory-options", "exec"), namespace)
    assert namespace["pipe"].transformer.transformer_blocks[0].attn1.to_q.weight.is_meta
    assert len(namespace["video"]) == 17


def test_sequential_offload_with_fused_ffns(seed):
    """The fused FFN forward (blocks without a fused forward: here attn2 kept in bf16) reads the two linears' 8-bit
    weights without calling them: under sequential offload it loads them for the call and gives them back."""
    from q8lib.fused import install_fused_ffns

    model = make_tiny_transformer(seed=seed % 1000)
    q8lib.quantize_(model, q8lib.Q8Config(weight_dtype="int8", keep_high_precision=("attn2",)),
                    backend="test_direct_reads", progress=False)
    assert install_fused_blocks(model, backend="test_direct_reads") == 0  # not fully Q8: diffusers' block forward
    assert install_fused_ffns(model, "test_direct_reads") == len(model.transformer_blocks)
    inputs = dummy_inputs(dict(model.config), 2, 2, 4, 4, 8, seed=seed)
    with torch.no_grad():
        want = model(**inputs).sample
    _sequential_offload(model)
    with torch.no_grad():
        got = model(**inputs).sample
    assert torch.equal(got, want)
    assert all(m.weight.is_meta for m in model.modules() if isinstance(m, Q8Linear))  # nothing kept
