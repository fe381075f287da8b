"""HyperAttention inside Hugging Face transformers models (transformers >= 4.56 and 5.x).

    from hyperattn.integrations.transformers import patch_model
    patch_model(model, layers="last:15", config=HyperAttentionConfig(), seed=0)
    patch_model(model, plan=HeadPlan.load("plan.json"))   # a treatment per query head

``register()`` adds the attention implementation ``"hyper"`` to transformers'
``AttentionInterface`` and the matching mask function (the SDPA one) to
``AttentionMaskInterface``. ``patch_model`` switches a model to it and marks the chosen
attention modules; every other module, and every call a patched module cannot serve with
HyperAttention, runs PyTorch SDPA exactly as ``attn_implementation="sdpa"`` would:

- long prefill runs HyperAttention, causal and aligned bottom-right, so chunked prefill
  against a KV cache works;
- decoding and short prompts (``HyperAttentionConfig.runs_exact``: at most ``min_seq_len``
  queries, or no more work than causal attention over ``exact_up_to`` tokens) are exact;
- padded batches run HyperAttention once per sequence over its valid tokens, so padded
  keys never contribute;
- masks HyperAttention cannot honour (sliding windows that cut, packed sequences, custom
  masks), attention dropout, logit soft-capping and attention sinks raise ``ValueError``
  once a call would run HyperAttention; calls that run exactly never raise.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from hyperattn.api import hyper_attention
from hyperattn.config import HyperAttentionConfig
from hyperattn.heads import HeadPlan, attention_by_head

IMPLEMENTATION = "hyper"
_CONFIG_ATTR = "hyperattn_config"
_HEADS_ATTR = "hyperattn_heads"
_SEED_ATTR = "hyperattn_seed"
_GROUP_ATTR = "hyperattn_group"


def register(name: str = IMPLEMENTATION) -> str:
    """Register the attention function and its mask function under ``name``; returns ``name``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(name, hyper_attention_forward)
    AttentionMaskInterface.register(name, sdpa_mask)
    return name


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's self-attention modules in layer order (modules with a ``layer_idx`` that
    project queries)."""
    found = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "q_proj")]
    return sorted(found, key=lambda m: m.layer_idx)


def select_layers(layers: str | Sequence[int], num_layers: int) -> list[int]:
    """Layer indices from ``"all"``, ``"last:K"``, ``"first:K"`` or a list of indices (negative
    ones count from the end)."""
    if isinstance(layers, str):
        if layers == "all":
            return list(range(num_layers))
        match = re.fullmatch(r"(last|first):(\d+)", layers)
        if not match:
            raise ValueError(f"layers must be 'all', 'last:K', 'first:K' or a list of ints, got {layers!r}")
        count = int(match.group(2))
        if count > num_layers:
            raise ValueError(f"layers={layers!r} asks for {count} layers, the model has {num_layers}")
        return list(range(num_layers - count, num_layers)) if match.group(1) == "last" else list(range(count))
    indices = []
    for index in layers:
        if isinstance(index, bool) or not isinstance(index, int) or not -num_layers <= index < num_layers:
            raise ValueError(f"layer index {index!r} is out of range for a model of {num_layers} layers")
        indices.append(index % num_layers)
    return sorted(set(indices))


def patch_model(
    model: torch.nn.Module,
    layers: str | Sequence[int] = "all",
    config: HyperAttentionConfig | None = None,
    seed: int | None = 0,
    include_sliding: bool = False,
    plan: HeadPlan | None = None,
    group=None,
) -> list[int]:
    """Use HyperAttention in the chosen layers of a transformers model; returns their indices.

    Args:
        layers: ``"all"``, ``"last:K"``, ``"first:K"`` or layer indices.
        config: HyperAttention hyperparameters (default ``HyperAttentionConfig()``: the
            paper's plus 16 exact sinks, an exact tail of 64 queries and the strictly causal
            bucket rule, with prompts up to ``exact_up_to`` tokens run exactly).
        seed: layer i uses ``seed + i`` (None: fresh randomness every call).
        include_sliding: also patch sliding-window layers (Gemma-3's local layers,
            Mistral's); they then run HyperAttention only while the window covers the whole
            sequence and raise otherwise. By default they stay exact.
        plan: a ``HeadPlan`` (``hyperattn.heads``): each listed layer's query heads take the
            plan's treatment (exact or a named config), in one call of the layer
            (``attention_by_head``); ``layers`` and ``config`` must then be left out. Returns the
            layers with at least one approximated head.
        group: a ``torch.distributed`` process group (``torch.distributed.group.WORLD`` for all
            processes): the model runs context-parallel. Each rank then passes its contiguous shard
            of the sequence (rank r: positions ``[r * n, (r + 1) * n)``) with its ``position_ids``
            (decoding from a cache is not supported), and every attention layer, patched or exact, attends over the
            whole sequence through all-to-alls over heads (``hyperattn.distributed``); the kv heads
            must be a multiple of the group's size. Unpadded batches only; no sliding-window layers.
            None: one process holds the sequence.
    Calling it again re-patches: layers not chosen this time go back to exact attention.
    """
    if plan is not None:
        if not isinstance(plan, HeadPlan):
            raise TypeError(f"plan must be a hyperattn.heads.HeadPlan, got {type(plan).__name__}")
        if layers != "all" or config is not None:
            raise ValueError("patch_model: pass either plan or layers/config; the plan chooses both per head")
    if group is not None and plan is not None:
        raise ValueError("patch_model: head plans do not run context-parallel yet; pass layers and config with group")
    if config is None:
        config = HyperAttentionConfig()
    elif not isinstance(config, HyperAttentionConfig):
        raise TypeError(f"config must be a HyperAttentionConfig, got {type(config).__name__}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise TypeError(f"seed must be a non-negative int or None, got {seed!r}")
    modules = attention_modules(model)
    if not modules:
        raise ValueError(f"found no attention modules (with layer_idx and q_proj) in {type(model).__name__}")
    treatments = {} if plan is None else _plan_treatments(plan, modules)
    chosen = set(select_layers(layers, len(modules))) if plan is None else set(treatments)
    patched = []
    for index, module in enumerate(modules):
        for attr in (_CONFIG_ATTR, _HEADS_ATTR, _SEED_ATTR, _GROUP_ATTR):
            if hasattr(module, attr):
                delattr(module, attr)
        if group is not None:
            setattr(module, _GROUP_ATTR, group)
        sliding = getattr(module, "sliding_window", None) is not None
        if index in chosen and (include_sliding or not sliding):
            if plan is None:
                setattr(module, _CONFIG_ATTR, config)
            else:
                setattr(module, _HEADS_ATTR, treatments[index])
            setattr(module, _SEED_ATTR, None if seed is None else seed + index)
            patched.append(index)
    name = register()
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:  # transformers < 4.56 has no setter
        model.config._attn_implementation = name
    return patched


def _plan_treatments(plan: HeadPlan, modules: list[torch.nn.Module]) -> dict[int, tuple]:
    """{layer: treatment per query head} of the plan's layers with an approximated head, checked
    against the model: layers that exist, one treatment per query head."""
    treatments = {}
    for layer in sorted(plan.layers):
        if layer >= len(modules):
            raise ValueError(f"the head plan lists layer {layer}; the model has {len(modules)} attention layers")
        heads = plan.treatments(layer)
        module = modules[layer]
        num_heads = module.q_proj.out_features // module.head_dim if hasattr(module, "head_dim") else len(heads)
        if len(heads) != num_heads:
            raise ValueError(f"the head plan gives layer {layer} {len(heads)} heads; the model's layer has "
                             f"{num_heads} query heads (a plan for another model?)")
        if any(t is not None for t in heads):
            treatments[layer] = heads
    return treatments


def _sdpa(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _bottom_right_causal(num_queries: int, num_keys: int, device) -> torch.Tensor:
    return torch.ones(num_queries, num_keys, dtype=torch.bool, device=device).tril(num_keys - num_queries)


def _sequences(attention_mask: torch.Tensor, num_queries: int, num_keys: int):
    """Per batch row, (query rows, key columns) over which the mask is bottom-right causal;
    None when the whole mask is plain bottom-right causal (one batched call).

    Keys no query attends to (padding, unused static-cache slots) are dropped. A query row
    is kept when it attends to more keys than every row before it: the tokens of the
    sequence. Other rows (padding, right or left) get a zero output. Any mask that is not,
    row by row, a growing prefix of the kept keys (a sliding window, packed sequences, a
    custom mask) raises."""
    if attention_mask.dtype != torch.bool:
        attention_mask = attention_mask == 0  # additive float mask: 0 where attended
    if attention_mask.dim() != 4 or attention_mask.shape[1] != 1:
        raise ValueError(f"hyper attention supports masks shared by all heads, got shape {tuple(attention_mask.shape)}")
    mask = attention_mask[:, 0, :, :num_keys].expand(-1, num_queries, num_keys)
    if torch.equal(mask, _bottom_right_causal(num_queries, num_keys, mask.device).expand_as(mask)):
        return None
    sequences = []
    for row in mask:
        keys = row.any(dim=0).nonzero().squeeze(1)
        counts = row.sum(dim=1)
        prefixes = torch.arange(len(keys), device=row.device) < counts[:, None]
        earlier = torch.cat([counts.new_zeros(1), torch.cummax(counts, 0).values[:-1]])
        queries = (counts > earlier).nonzero().squeeze(1)
        expected = torch.arange(len(keys) - len(queries) + 1, len(keys) + 1, device=row.device)
        if not (torch.equal(row[:, keys], prefixes) and torch.equal(counts[queries], expected)):
            raise ValueError(
                "hyper attention supports causal masks with padding only; this mask cuts more "
                "(sliding window, packed sequences or a custom mask). Leave this layer exact."
            )
        sequences.append((queries, keys))
    return sequences


def hyper_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: query (B, Hq, Sq, D), key/value (B, Hkv, Sk, D) ->
    (out (B, Sq, Hq, Dv) contiguous, None). Unpatched modules and short calls (every
    approximated head's config would run exact) run SDPA; context-parallel models (``patch_model``'s
    ``group``) attend over the whole sequence."""
    if getattr(module, _GROUP_ATTR, None) is not None:
        return _context_parallel_forward(module, query, key, value, attention_mask, dropout, scaling, is_causal,
                                         **kwargs), None
    config = getattr(module, _CONFIG_ATTR, None)
    heads = getattr(module, _HEADS_ATTR, None)
    num_queries, num_keys = query.shape[2], key.shape[2]
    configs = [config] if heads is None else [t for t in heads if t is not None]
    if all(c is None or c.runs_exact(num_queries, num_keys, True) for c in configs):
        return _sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                     is_causal=is_causal, **kwargs)
    _check_supported(module, dropout, is_causal, kwargs)
    seed = getattr(module, _SEED_ATTR, None)

    def attend(q, k, v):
        if heads is None:
            return hyper_attention(q, k, v, causal=True, scale=scaling, config=config, seed=seed)
        return attention_by_head(q, k, v, heads, causal=True, scale=scaling, seed=seed)

    sequences = None if attention_mask is None else _sequences(attention_mask, num_queries, num_keys)
    if sequences is None:
        return attend(query, key, value).transpose(1, 2).contiguous(), None

    # Padded batch (or a partly filled static cache): one causal run per sequence over its
    # valid tokens; fully masked query rows give zeros.
    out = query.new_zeros(query.shape[0], query.shape[1], num_queries, value.shape[-1])
    for row, (queries, keys) in enumerate(sequences):
        if queries.numel() == 0:
            continue
        out[row, :, queries] = attend(query[row:row + 1, :, queries], key[row:row + 1, :, keys],
                                      value[row:row + 1, :, keys])[0]
    return out.transpose(1, 2).contiguous(), None


def _check_supported(module, dropout: float, is_causal: bool | None, kwargs: dict) -> None:
    """Raise for what a HyperAttention (or context-parallel) call of ``module`` cannot honour."""
    if dropout:
        raise ValueError(f"hyper attention has no attention dropout; got dropout={dropout} (use model.eval())")
    for name in ("softcap", "s_aux", "sinks"):
        if kwargs.get(name) is not None:
            raise ValueError(f"hyper attention does not support {name!r}; leave layer {module.layer_idx} exact")
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if not causal:
        raise ValueError(f"hyper attention is patched for causal language models; layer {module.layer_idx} "
                         "is not causal")


def _context_parallel_forward(module, query, key, value, attention_mask, dropout, scaling, is_causal,
                              **kwargs) -> torch.Tensor:
    """One layer of a context-parallel model: this rank's shard (B, H, n, D) attends over the whole
    sequence, HyperAttention where the layer is patched, exact elsewhere -> (B, n, Hq, Dv)."""
    from hyperattn.distributed import context_parallel_attention, context_parallel_exact_attention

    layer, group = module.layer_idx, getattr(module, _GROUP_ATTR)
    if query.shape[2] != key.shape[2]:
        raise ValueError(f"context-parallel layers attend over one pass of the whole sequence, without a KV cache "
                         f"(use_cache=False); layer {layer} got {query.shape[2]} queries and {key.shape[2]} keys")
    if getattr(module, "sliding_window", None) is not None:
        raise ValueError(f"layer {layer} has a sliding window, which context-parallel models do not support")
    _check_supported(module, dropout, is_causal, kwargs)
    if attention_mask is not None and _sequences(attention_mask, query.shape[2], key.shape[2]) is not None:
        raise ValueError("context-parallel models take unpadded batches: attention_mask may only be causal")
    config = getattr(module, _CONFIG_ATTR, None)
    if config is None:
        out = context_parallel_exact_attention(query, key, value, causal=True, scale=scaling, group=group)
    else:
        out = context_parallel_attention(query, key, value, causal=True, scale=scaling, config=config,
                                         seed=getattr(module, _SEED_ATTR, None), group=group)
    return out.transpose(1, 2).contiguous()
