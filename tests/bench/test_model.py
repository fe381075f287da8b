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


def test_head_mixes_give_every_layer_the_same_share_of_heads(tmp_path):
    from hyperattn.bench.model import head_mix
    from hyperattn.heads import HeadPlan

    hyper = HyperAttentionConfig(block_size=16, sample_size=16, exact_up_to=0, min_seq_len=32)
    assert head_mix("half", 4, 8, hyper) is None
    mix = head_mix("heads:0.75", 2, 8, hyper)
    assert mix.layers == {0: ("hyper",) * 6 + ("exact",) * 2, 1: ("hyper",) * 6 + ("exact",) * 2}
    # a calibrated plan of another model: 2 layers x 3 heads, shares 3/6 cheap, 2/6 dear, 1/6 exact
    cheap, dear = hyper, HyperAttentionConfig(block_size=32, exact_up_to=0, min_seq_len=32)
    HeadPlan(model="m", seq_len=64, configs={"cheap": cheap, "dear": dear},
             layers={0: ("cheap", "dear", "exact"), 1: ("cheap", "cheap", "dear")}).save(tmp_path / "p.json")
    mix = head_mix(f"plan:{tmp_path / 'p.json'}", 3, 12, hyper)
    assert mix.layers[2] == ("cheap",) * 6 + ("dear",) * 4 + ("exact",) * 2 and mix.configs["dear"] == dear
    for bad, message in [("heads:0", "share F"), ("heads:x", "share F"), ("plan:/nowhere.json", "no head plan")]:
        with pytest.raises(ValueError, match=message):
            head_mix(bad, 2, 8, hyper)
    with pytest.raises(ValueError, match="share F"):
        benchmark_model("llama", 4, [64], ["exact", "heads:1.5"], hyper, torch.device("cpu"))


def test_a_head_mix_runs_its_approximated_heads_through_hyper_attention(monkeypatch):
    import hyperattn.heads as heads

    calls = []
    real = heads.hyper_attention
    monkeypatch.setattr(heads, "hyper_attention", lambda q, *a, **kw: calls.append(q.shape[1]) or real(q, *a, **kw))
    config = model_config("llama", 2, 128, **TINY)
    hyper = HyperAttentionConfig(block_size=16, sample_size=16, exact_up_to=0, min_seq_len=32)
    rows = run_benchmark(config, [96], ["heads:0.5"], hyper, torch.device("cpu"), torch.float32)
    assert rows[0]["heads_per_layer"] == {"exact": 2, "hyper": 2} and rows[0]["patched_layers"] == [0, 1]
    assert calls and set(calls) == {2}  # each layer: its first 2 of 4 query heads, one call
