"""``hyperattn bench model``: prefill time of a 7B/8B-class model, exact vs HyperAttention.

Builds a transformers model with random weights and the dimensions of a real checkpoint
(a few decoder layers: time per layer is what matters) and times one prefill (batch 1,
bf16, logits of the last token only) with exact SDPA attention and with HyperAttention in
some layers (by default the last half, the paper's setting), at each sequence length.
Medians of ``triton.testing.do_bench`` (wall-clock medians off CUDA); JSON and a plot.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from hyperattn.bench.timing import median_ms
from hyperattn.config import HyperAttentionConfig
from hyperattn.heads import EXACT, HeadPlan
from hyperattn.runinfo import environment

# Dimensions of public checkpoints (from their config.json files).
ARCHS = {
    "llama": ("LlamaConfig", "Llama-3-8B", dict(
        hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
        vocab_size=128256, rope_theta=500000.0)),
    "llama2": ("LlamaConfig", "Llama-2-7B", dict(
        hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
        vocab_size=32000, rope_theta=10000.0)),
    "qwen2": ("Qwen2Config", "Qwen2.5-7B", dict(
        hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4,
        vocab_size=152064, rope_theta=1000000.0)),
}


def model_config(arch: str, num_layers: int, max_len: int, **overrides):
    """A transformers config of ``arch``'s dimensions with ``num_layers`` decoder layers."""
    import transformers

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
    class_name, _, dims = ARCHS[arch]
    return getattr(transformers, class_name)(
        **{**dims, **overrides}, num_hidden_layers=num_layers, max_position_embeddings=max_len)


def layer_setting(setting: str, num_layers: int) -> list[int]:
    """Layer indices patched by ``exact``, ``half`` (the last half), ``all``, ``last:K``, ``first:K``,
    or a head mix (``heads:F``, ``plan:PATH``: every layer, see ``head_mix``)."""
    from hyperattn.integrations.transformers import select_layers

    if setting == "exact":
        return []
    if setting == "half":
        return select_layers(f"last:{num_layers // 2}", num_layers)
    if setting.startswith(("heads:", "plan:")):
        return list(range(num_layers))
    return select_layers(setting, num_layers)


def head_mix(setting: str, num_layers: int, num_heads: int, config: HyperAttentionConfig) -> HeadPlan | None:
    """The head plan of a head-mix setting, None for a layer setting. Every layer gets the same mix:

    - ``heads:F``: its first ``round(F * num_heads)`` query heads take ``config``, the rest exact;
    - ``plan:PATH``: a calibrated head plan's shares of heads per treatment (over all its heads),
      rounded cumulatively to ``num_heads`` heads in the order of the plan's configs, the rest exact
      (a plan of another model carried to this one by its mix)."""
    if setting.startswith("heads:"):
        try:
            share = float(setting.removeprefix("heads:"))
        except ValueError:
            share = -1.0
        if not 0 < share <= 1:
            raise ValueError(f"setting {setting!r}: heads:F needs a share F in (0, 1] of heads approximated, "
                             f"e.g. heads:0.95")
        configs, shares = {"hyper": config}, [share]
    elif setting.startswith("plan:"):
        path = setting.removeprefix("plan:")
        if not Path(path).is_file():
            raise ValueError(f"setting {setting!r}: no head plan file at {path!r} (write one with hyperattn calibrate)")
        plan = HeadPlan.load(path)
        counts = plan.head_counts()
        total = sum(counts.values())
        if total == 0:
            raise ValueError(f"setting {setting!r}: the head plan lists no layer")
        configs, shares = plan.configs, [counts[name] / total for name in plan.configs]
    else:
        return None
    names, cumulative = [], 0.0
    for name, share in zip(configs, shares):
        cumulative += share
        names += [name] * (min(round(cumulative * num_heads), num_heads) - len(names))
    names += [EXACT] * (num_heads - len(names))
    return HeadPlan(model=f"{setting} mix", seq_len=0, configs=dict(configs),
                    layers={layer: tuple(names) for layer in range(num_layers)})


def run_benchmark(config, seq_lens, settings, hyper_config: HyperAttentionConfig, device: torch.device,
                  dtype=torch.bfloat16, seed: int = 0) -> list[dict]:
    """Prefill ms of a random-weight model of ``config`` for each (setting, length)."""
    from transformers import AutoModelForCausalLM

    from hyperattn.integrations.transformers import patch_model

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa").eval()
    num_layers = config.num_hidden_layers
    results = []
    cases = [(s, n) for s in settings for n in seq_lens]
    for setting, seq_len in tqdm(cases, desc="bench model", file=sys.stderr):
        layers = layer_setting(setting, num_layers)
        mix = head_mix(setting, num_layers, config.num_attention_heads, hyper_config)
        if mix is not None:
            patch_model(model, plan=mix, seed=seed)
        elif layers:
            patch_model(model, layers, config=hyper_config, seed=seed)
        else:
            model.set_attn_implementation("sdpa")
        ids = torch.randint(config.vocab_size, (1, seq_len), device=device,
                            generator=torch.Generator(device).manual_seed(seed))

        def prefill():
            with torch.no_grad():
                return model(input_ids=ids, use_cache=False, logits_to_keep=1).logits

        row = dict(setting=setting, patched_layers=layers, seq_len=seq_len)
        if mix is not None:
            row["heads_per_layer"] = {name: n // num_layers for name, n in mix.head_counts().items()}
        try:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            row["ms"] = median_ms(prefill, device)
            if device.type == "cuda":
                row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        except torch.OutOfMemoryError:
            row.update(ms=None, error="out of memory")
            torch.cuda.empty_cache()
        results.append(row)
    return results


def benchmark_model(arch: str, num_layers: int, seq_lens: list[int], settings: list[str],
                    hyper_config: HyperAttentionConfig, device: torch.device, seed: int = 0,
                    command: str = "") -> dict:
    """``run_benchmark`` on ``arch`` with ``num_layers`` layers (bf16 on CUDA, fp32 elsewhere),
    with what was measured where, by ``command``."""
    heads = ARCHS[arch][2]["num_attention_heads"] if arch in ARCHS else 1
    for setting in settings:  # bad settings fail before the model is built
        layer_setting(setting, num_layers)
        head_mix(setting, num_layers, heads, hyper_config)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = run_benchmark(model_config(arch, num_layers, max(seq_lens)), seq_lens, settings, hyper_config, device,
                         dtype, seed)
    return dict(benchmark="model", arch=arch, model=ARCHS[arch][1], num_layers=num_layers,
                dtype=str(dtype).removeprefix("torch."), config=asdict(hyper_config), seed=seed,
                **environment(device, command), results=rows)


def speedups(results: list[dict]) -> dict[tuple[str, int], float]:
    """(setting, length) -> exact ms / setting ms."""
    exact = {r["seq_len"]: r["ms"] for r in results if r["setting"] == "exact" and r["ms"]}
    return {(r["setting"], r["seq_len"]): exact[r["seq_len"]] / r["ms"]
            for r in results if r["ms"] and r["seq_len"] in exact}


def format_table(result: dict) -> str:
    rows = result["results"]
    ratio = speedups(rows)
    lines = [f"{result['model']} dimensions, {result['num_layers']} layers, batch 1, {result['dtype']}, "
             f"{result['card']}; prefill median ms",
             f"{'setting':>10} {'patched':>12} {'seq_len':>8} {'ms':>10} {'vs exact':>9} {'GiB':>7}"]
    for r in rows:
        ms = f"{r['ms']:10.1f}" if r["ms"] else f"{r.get('error', '-'):>10}"
        speed = ratio.get((r["setting"], r["seq_len"]))
        peak = r.get("peak_gib")
        heads = r.get("heads_per_layer")
        patched = (f"{sum(n for name, n in heads.items() if name != EXACT):>3} of {sum(heads.values())} heads"
                   if heads else f"{len(r['patched_layers']):>5} of {result['num_layers']:<3}")
        lines.append(f"{r['setting']:>10} {patched:>12} {r['seq_len']:>8} "
                     f"{ms} {f'{speed:.2f}x' if speed else '-':>9} {f'{peak:.1f}' if peak else '-':>7}")
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    """Prefill time against length, one line per setting (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for setting in dict.fromkeys(r["setting"] for r in result["results"]):
        points = sorted((r["seq_len"], r["ms"]) for r in result["results"] if r["setting"] == setting and r["ms"])
        if points:
            ax.plot(*zip(*points), "o-" if setting != "exact" else "s--",
                    label="exact (SDPA)" if setting == "exact" else f"HyperAttention: {setting}")
    ax.set(xscale="log", yscale="log", xlabel="sequence length", ylabel="prefill median ms",
           title=f"{result['model']} dims, {result['num_layers']} layers, {result['card']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)

