"""The transformer benchmark (``python -m q8lib.bench``) on the CPU smoke configuration: its JSON says what it
measured and on which host (the host probe makes a slow or busy host visible next to launch-bound timings)."""
import json

import pytest
import torch

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


# --- full-size configurations (issue #17 item 4) and their CPU smoke run -------------------------------------------

def test_shapes_of_record_follow_the_pipelines():
    """LTX-2 at 121 frames 768x512: 16x16x24 latents (8x time, 32x space), 126 audio latents (5.04 s at 25/s),
    1024 text tokens (LTX2Pipeline's max_sequence_length); LTX-Video at 81 frames 480x704: 11x15x22."""
    from q8lib.bench.build import BENCH_MODELS, audio_latent_frames, latent_grid
    from q8lib.models import LTX2_CONFIG

    assert latent_grid(121, 512, 768, LTX2_CONFIG["vae_scale_factors"]) == (16, 16, 24)
    assert audio_latent_frames(121, LTX2_CONFIG) == 126
    assert latent_grid(*BENCH_MODELS["13b"].video) == (11, 15, 22)
    with pytest.raises(ValueError, match="1 \\+ 8k frames"):
        latent_grid(120, 512, 768)
    assert BENCH_MODELS["ltx2"].name == "LTX-2 (19B, Lightricks/LTX-2)" and BENCH_MODELS["ltx2"].text == 1024
    assert BENCH_MODELS["13b"].name == "LTX-Video 0.9.7 13B" and BENCH_MODELS["2b"].name == "LTX-Video 2B"
    assert BENCH_MODELS["ltx2"].fp32_skip and not BENCH_MODELS["13b"].fp32_skip


def test_linear_flops_from_a_meta_forward_match_the_inspection():
    from q8lib.bench.build import bench_inputs, linear_flops, meta_transformer
    from q8lib.inspection import inspect_transformer
    from q8lib.models import LTX_2B_CONFIG

    block, total = linear_flops(LTX_2B_CONFIG, bench_inputs(LTX_2B_CONFIG, 2, 11, 15, 22, 128, "meta", torch.float32))
    rep = inspect_transformer(meta_transformer(LTX_2B_CONFIG), num_tokens=3630, text_tokens=128, batch=2)
    assert block == sum(v for k, v in rep.flops.items() if "linear" in k)
    assert total == block + sum(v for k, v in rep.flops.items() if k in ("proj_in", "proj_out", "time_embed",
                                                                          "caption_projection"))


@pytest.mark.parametrize("which", ["tiny", "ltx2-tiny"])
def test_block_by_block_builds_equal_whole_model_ones(which):
    """The 8-bit variants quantize each block as it is built: the same tensors, bit for bit, as quantize_ on the
    whole bf16 build; a bf16 build is the float32 build rounded (one seed, every dtype)."""
    from q8lib import Q8Config, quantize_
    from q8lib.bench.build import BENCH_MODELS, build_transformer
    from q8lib.bench.variants import prepare_variant

    cfg = BENCH_MODELS[which].config
    whole = build_transformer(cfg, "cpu", torch.bfloat16)
    f32 = build_transformer(cfg, "cpu", torch.float32).state_dict()
    assert all(torch.equal(v, f32[k].to(torch.bfloat16)) for k, v in whole.state_dict().items())
    quantize_(whole, Q8Config(weight_dtype="int8"), attention="sdpa", progress=False)
    blockwise, _ = prepare_variant("q8lib_int8", cfg, "cpu")
    a, b = whole.state_dict(), blockwise.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert blockwise._q8_config == whole._q8_config


def test_ltx2_tiny_bench_names_the_model_and_records_what_it_skipped(tmp_path):
    """The LTX-2 path end to end on the CPU: shape and token counts, the fp32 reference skipped with its reason,
    video and audio errors vs bf16, and variants that cannot run here skipped with theirs (in the order asked)."""
    import importlib.util

    out = tmp_path / "ltx2.json"
    asked = ["bf16", "q8lib", "q8lib_int8attn", "q8lib_compile_graph", "torchao_fp8_compile"]
    assert main(["--config", "ltx2-tiny", "--layers", "1", "--variants", ",".join(asked), "--iters", "1",
                 "--warmup", "0", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    shape = doc["shape"]
    assert shape["model"].startswith("LTX-2 tiny") and shape["num_layers"] == 1
    assert (shape["video"], shape["latent"], shape["tokens"]) == ([17, 64, 96], [3, 2, 3], 18)
    assert (shape["audio_tokens"], shape["text_tokens"], shape["batch"]) == (18, 16, 2) and shape["params"] > 0
    assert "--fp32" in doc["references"]["fp32"]["skipped"] and doc["references"]["bf16"]["wall_s"] > 0
    res = doc["results"]
    assert list(res) == asked
    for name in ("bf16", "q8lib"):
        assert res[name]["fwd_ms"] > 0 and {"weights_mb", "build_peak_mb", "peak_mb"} <= set(res[name])
        assert "rel_err_vs_fp32" not in res[name]
    assert res["bf16"]["rel_err_vs_bf16"] == 0 and res["bf16"]["audio_rel_err_vs_bf16"] == 0
    assert 0 < res["q8lib"]["rel_err_vs_bf16"] < 0.03 and 0 < res["q8lib"]["audio_rel_err_vs_bf16"] < 0.03
    assert "INT8 attention" in res["q8lib_int8attn"]["skipped"]
    assert res["q8lib_compile_graph"]["skipped"] == "CUDA graphs need a GPU"
    if importlib.util.find_spec("torchao") is None:
        assert res["torchao_fp8_compile"]["skipped"] == "torchao is not installed"


def test_time_budget_ends_the_run_and_records_the_rest_as_skipped(tmp_path):
    out = tmp_path / "budget.json"
    assert main(["--config", "ltx2-tiny", "--layers", "1", "--variants", "bf16,q8lib", "--iters", "1", "--warmup", "0",
                 "--budget-s", "0.001", "--out", str(out)]) == 0
    res = json.loads(out.read_text())["results"]
    assert list(res) == ["bf16", "q8lib"] and all("time budget of 0.001 s" in r["skipped"] for r in res.values())


@pytest.mark.parametrize("extra, message", [
    (["--iters", "0"], "--iters must be >= 1"), (["--batch", "0"], "--batch must be >= 1"),
    (["--layers", "-1"], "--layers must be >= 1"), (["--warmup", "-1"], "--warmup must be >= 0"),
    (["--budget-s", "-5"], "--budget-s must be a positive"), (["--text", "0"], "--text must be >= 1"),
    (["--frames", "0"], "--frames must be >= 1"), (["--audio", "5"], "has no audio stream"),
    (["--fp32", "--no-fp32"], "contradict"), (["--video", "abc"], "FRAMES,HEIGHT,WIDTH as integers"),
    (["--video", "81,480"], "three integers"),
])
def test_bad_arguments_fail_before_anything_is_built(tmp_path, capsys, extra, message):
    out = tmp_path / "never.json"
    with pytest.raises(SystemExit) as e:
        main(["--config", "tiny", "--out", str(out), *extra])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_threshold_variant_sets_and_restores_the_fp8_tensor_rule(tmp_path, monkeypatch):
    """``q8lib_fp8tensorselfattn*`` runs with FP8 only for >= 2048 keys while it is built and timed, then the default
    rule is back; its option is the benchmark's, not q8lib's runtime (which would refuse it)."""
    from q8lib import reference as ref
    from q8lib.bench import variants as V

    default = ref.FP8_TENSOR_MIN_KEYS
    with V.variant_context("q8lib_fp8tensorselfattn_compile_graph"):
        assert ref.FP8_TENSOR_MIN_KEYS == 2048 and ref.FP8_TENSOR_MIN_QUERIES == 2048
    assert ref.FP8_TENSOR_MIN_KEYS == default
    with pytest.raises(RuntimeError):
        with V.variant_context("q8lib_fp8tensorselfattn"):
            raise RuntimeError("a failed variant")
    assert ref.FP8_TENSOR_MIN_KEYS == default
    config, runtime = V._q8_settings(V.VARIANTS["q8lib_fp8tensorselfattn"][1])
    assert runtime.attention == "fp8_tensor"
    with V.variant_context("q8lib_compile"):  # no thresholds of its own: nothing changes
        assert ref.FP8_TENSOR_MIN_KEYS == default
