"""``hyperattn bench model`` on a tiny random model (CPU): structure, patching, errors."""

import pytest
import torch

pytest.importorskip("transformers")

from hyperattn import HyperAttentionConfig  # noqa: E402
from hyperattn.bench.model import benchmark_model, layer_setting, model_config, run_benchmark, speedups  # noqa: E402

TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, vocab_size=101)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_model_times_every_setting_and_patched_layers_run_hyper_attention(arch, monkeypatch):
    import hyperattn.integrations.transformers as integration

    calls = []
    real = integration.hyper_attention
    monkeypatch.setattr(integration, "hyper_attention", lambda q, *a, **kw: calls.append(q.shape) or real(q, *a, **kw))
    config = model_config(arch, 4, 256, **TINY)
    hyper = HyperAttentionConfig(block_size=16, sample_size=16, exact_up_to=0, min_seq_len=32)
    rows = run_benchmark(config, [48, 80], ["exact", "half"], hyper, torch.device("cpu"), torch.float32)
    assert [(r["setting"], r["seq_len"]) for r in rows] == [("exact", 48), ("exact", 80), ("half", 48), ("half", 80)]
    assert all(r["ms"] > 0 for r in rows)
    assert rows[2]["patched_layers"] == [2, 3] and rows[0]["patched_layers"] == []
    # exact runs never call HyperAttention; each "half" prefill calls it in 2 layers (more when timed repeatedly)
    assert len(calls) >= 2 * 2 and all(shape[2] in (48, 80) for shape in calls)
    assert set(speedups(rows)) == {(s, n) for s in ("exact", "half") for n in (48, 80)}


def test_layer_settings():
    assert layer_setting("exact", 4) == [] and layer_setting("half", 5) == [3, 4]
    assert layer_setting("all", 3) == [0, 1, 2] and layer_setting("first:1", 3) == [0]
    with pytest.raises(ValueError, match="layers must be"):
        layer_setting("most", 4)
    with pytest.raises(ValueError, match="arch must be"):
        model_config("gpt5", 2, 128)


def test_bad_settings_fail_before_the_model_is_built():
    with pytest.raises(ValueError, match="layers must be"):
        benchmark_model("llama", 4, [64], ["exact", "most"], HyperAttentionConfig(), torch.device("cpu"))
