"""Q8 attention under diffusers' context parallelism (Ulysses all-to-all over heads).

``model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=N))`` splits the video and
text sequences over N ranks (the LTX transformer's ``_cp_plan``) and sets ``_parallel_config`` on
every attention processor that has that attribute. :class:`~q8lib.attention.Q8AttnProcessor` then
routes its attention op through :func:`context_parallel_attention`, which reuses diffusers' own
Ulysses template: all-to-all so each rank holds the whole sequence for ``H/N`` heads, run the q8lib
attention op (FP8 or SDPA) with per-sample key lengths, all-to-all back.

The text mask becomes per-sample key lengths summed over ranks (no mask travels); stock diffusers
0.42.1 fails on LTX's masked cross-attention under Ulysses because its prepared mask carries a
head dim that no longer matches the local heads after the all-to-all. Ring attention needs the attention's
log-sum-exp, which the FP8 kernel does not return: it raises a clear error.
"""
from __future__ import annotations

from .errors import SettingsError

__all__ = ["context_parallel_attention"]


def context_parallel_attention(query, key, value, key_lengths, parallel_config, attention_fn):
    """Ulysses context-parallel attention around a local attention op.

    Args:
        query, key, value: this rank's shards ``[B, H, S_local, D]`` (all H heads).
        key_lengths: ``[B]`` int32 kept-key counts of this rank's key shard, or ``None``. A right-padded
            mask split into contiguous shards keeps a prefix of every shard, so the global length is
            the sum over ranks (one all-reduce of ``B`` integers).
        parallel_config: the ``ParallelConfig`` diffusers set on the processor.
        attention_fn: ``(q, k, v, key_lengths) -> out`` on ``[B, H/N, S, D]`` tensors.
    Returns:
        ``[B, H, S_local, D]``.
    """
    import torch.distributed as dist
    from diffusers.models.attention_dispatch import _templated_context_parallel_attention

    cp = parallel_config.context_parallel_config
    if cp.ring_degree > 1:
        raise NotImplementedError(
            "q8lib attention supports Ulysses context parallelism (ulysses_degree > 1, ring_degree 1); ring "
            "attention merges partial results by log-sum-exp, which the FP8 kernel does not return."
        )
    heads = query.shape[1]
    if heads % cp.ulysses_degree:
        raise SettingsError(f"{heads} attention heads cannot be split over ulysses_degree={cp.ulysses_degree}")
    if key_lengths is not None:
        key_lengths = key_lengths.clone()
        dist.all_reduce(key_lengths, group=cp._ulysses_mesh.get_group())

    def forward_op(ctx, q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa, return_lse,
                   _save_ctx=True, _parallel_config=None):
        if return_lse:
            raise NotImplementedError("q8lib attention does not return the log-sum-exp")
        return attention_fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), key_lengths).transpose(1, 2)

    # diffusers' templates work on [B, S, H, D]
    out = _templated_context_parallel_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), None,
        forward_op=forward_op, backward_op=None, _parallel_config=parallel_config,
    )
    return out.transpose(1, 2)
