"""HyperAttention inside tiny random-weight transformers models (CPU)."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from hyperattn import HyperAttentionConfig  # noqa: E402
from hyperattn.integrations import transformers as integration  # noqa: E402

COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=1024)


def tiny_model(arch):
    if arch == "llama":
        config = transformers.LlamaConfig(**COMMON)
    elif arch == "qwen2":
        config = transformers.Qwen2Config(**COMMON)
    elif arch == "qwen3":
        config = transformers.Qwen3Config(**COMMON, head_dim=16)
    elif arch == "mistral":
        config = transformers.MistralConfig(**COMMON, sliding_window=None)
    elif arch == "gemma3":
        config = transformers.Gemma3TextConfig(**COMMON, head_dim=16, sliding_window=32,
                                               layer_types=["sliding_attention", "full_attention"] * 2)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    return model.eval()


ARCHS = ["llama", "qwen2", "qwen3", "mistral", "gemma3"]
APPROX = HyperAttentionConfig(block_size=16, sample_size=16, exact_up_to=0, min_seq_len=32)


def tokens(length, batch=1, seed=0):
    return torch.randint(1, 128, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ARCHS)
def test_exact_when_min_seq_len_covers_the_input(arch):
    model = tiny_model(arch)
    ids = tokens(100)
    with torch.no_grad():
        want = model(ids).logits
        integration.patch_model(model, "all", HyperAttentionConfig(exact_up_to=0, min_seq_len=256))
        got = model(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_patched_layers_run_hyper_attention_and_others_stay_exact(arch, monkeypatch):
    model = tiny_model(arch)
    calls = []
    original = integration.hyper_attention

    def spy(q, *args, **kwargs):
        calls.append(q.shape)
        return original(q, *args, **kwargs)

    monkeypatch.setattr(integration, "hyper_attention", spy)
    ids = tokens(150)
    with torch.no_grad():
        want = model(ids).logits
        patched = integration.patch_model(model, "last:2", APPROX, seed=0)
        got = model(ids).logits
    expected = [2, 3] if arch != "gemma3" else [3]  # gemma3's layer 2 is a sliding-window layer
    assert patched == expected
    assert len(calls) == len(expected)
    assert torch.isfinite(got).all()
    assert not torch.allclose(got, want, atol=1e-4)
    rel = ((got - want).norm() / want.norm()).item()
    assert rel < 0.5


def test_layer_selection():
    assert integration.select_layers("last:3", 10) == [7, 8, 9]
    assert integration.select_layers("first:2", 10) == [0, 1]
    assert integration.select_layers([0, -1], 10) == [0, 9]
    for bad in ("last:11", "middle", [10], [True]):
        with pytest.raises(ValueError):
            integration.select_layers(bad, 10)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_generate_runs_and_decoding_is_exact(arch):
    model = tiny_model(arch)
    ids = tokens(80)
    integration.patch_model(model, "all", APPROX, seed=0)
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape == (1, 85)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_matches_per_sequence_runs(arch, side):
    model = tiny_model(arch)
    integration.patch_model(model, "all", APPROX, seed=3)
    lengths = [120, 90]
    seqs = [tokens(n, seed=i)[0] for i, n in enumerate(lengths)]
    width = max(lengths)
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    for row, seq in enumerate(seqs):
        span = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[row, span], mask[row, span] = seq, 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate() numbers padded sequences
    with torch.no_grad():
        batched = model(ids, attention_mask=mask, position_ids=positions).logits
        for row, seq in enumerate(seqs):
            span = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
            alone = model(seq[None]).logits[0]
            torch.testing.assert_close(batched[row, span], alone, rtol=1e-4, atol=1e-4)


def test_unsupported_mask_is_a_clear_error():
    model = tiny_model("gemma3")
    integration.patch_model(model, "all", APPROX, seed=0, include_sliding=True)
    with torch.no_grad(), pytest.raises(ValueError, match="sliding window"):
        model(tokens(100))  # the window (32) cuts a 100-token sequence


def test_bad_arguments():
    model = tiny_model("llama")
    with pytest.raises(TypeError, match="HyperAttentionConfig"):
        integration.patch_model(model, "all", config={"block_size": 8})
    with pytest.raises(ValueError, match="layers"):
        integration.patch_model(model, "some")
    for seed in (1.5, "0", True, -1):
        with pytest.raises(TypeError, match="seed"):
            integration.patch_model(model, "all", seed=seed)


def test_static_cache_slots_and_mask_shapes():
    """A mask with unused trailing key slots (a static cache) runs over the filled slots only."""
    from hyperattn.integrations.transformers import _sequences

    num_queries, past, slots = 6, 4, 16
    mask = torch.zeros(1, 1, num_queries, slots, dtype=torch.bool)
    for i in range(num_queries):
        mask[0, 0, i, : past + i + 1] = True
    (queries, keys), = _sequences(mask, num_queries, slots)
    assert queries.tolist() == list(range(6)) and keys.tolist() == list(range(10))
    window = mask.clone()
    window[0, 0, 5, 0] = False  # a sliding window cuts the first key for the last query
    with pytest.raises(ValueError, match="sliding window"):
        _sequences(window, num_queries, slots)


def test_bucket_blocks_keep_a_patched_model_causal():
    """Tokens after position p change no logit up to p with query_blocks='bucket' (float64, up to
    the last bits of the reference's batched products); under the paper's rank rule they do."""
    model = tiny_model("llama").double()
    ids = tokens(150)
    p = 90
    later = ids.clone()
    later[:, p + 1:] = tokens(150 - p - 1, seed=1)
    leaks = {}
    for rule in ("bucket", "rank"):
        config = HyperAttentionConfig(block_size=8, sample_size=8, exact_up_to=0, min_seq_len=16, exact_sinks=4,
                                      exact_tail=0, query_blocks=rule)
        integration.patch_model(model, "all", config, seed=0)
        with torch.no_grad():
            leaks[rule] = (model(ids).logits[:, :p + 1] - model(later).logits[:, :p + 1]).abs().max().item()
    assert leaks["bucket"] < 1e-10
    assert leaks["rank"] > 1e-6


def test_selected_blocks_keep_a_patched_model_causal():
    """Tokens after position p change no logit up to p with selected blocks and heavy keys (float64),
    and the approximation was active (the logits differ from exact attention's)."""
    model = tiny_model("llama").double()
    ids = tokens(150)
    p = 90
    later = ids.clone()
    later[:, p + 1:] = tokens(150 - p - 1, seed=1)
    with torch.no_grad():
        exact = model(ids).logits
    config = HyperAttentionConfig(sample_size=0, exact_up_to=0, min_seq_len=16, exact_sinks=4, exact_tail=0,
                                  heavy_keys=4, probe_queries=8, selected_blocks=2, selected_block_size=4)
    integration.patch_model(model, "all", config, seed=0)
    with torch.no_grad():
        logits = model(ids).logits
        assert (logits[:, :p + 1] - model(later).logits[:, :p + 1]).abs().max().item() < 1e-10
    assert (logits - exact).abs().max().item() > 1e-6


def test_head_plan_patches_heads_and_leaves_the_rest_exact(monkeypatch):
    """A plan approximating two heads of layer 1 and none elsewhere: that layer runs one call of
    attention_by_head with the plan's treatments; every other layer and head runs exact."""
    from hyperattn.heads import HeadPlan

    model = tiny_model("llama")
    ids = tokens(150)
    calls = []
    original = integration.attention_by_head

    def spy(q, k, v, treatments, **kwargs):
        calls.append(tuple(treatments))
        return original(q, k, v, treatments, **kwargs)

    monkeypatch.setattr(integration, "attention_by_head", spy)
    plan = HeadPlan(model="tiny llama", seq_len=150, configs={"approx": APPROX},
                    layers={1: ("exact", "approx", "approx", "exact"), 3: ("exact",) * 4})
    with torch.no_grad():
        want = model(ids).logits
        assert integration.patch_model(model, plan=plan, seed=0) == [1]  # layer 3 has no approximated head
        got = model(ids).logits
    assert calls == [(None, APPROX, APPROX, None)]
    assert torch.isfinite(got).all() and not torch.allclose(got, want, atol=1e-4)
    exact_plan = HeadPlan(model="tiny llama", seq_len=150, configs={}, layers={1: ("exact",) * 4})
    with torch.no_grad():
        assert integration.patch_model(model, plan=exact_plan) == []
        torch.testing.assert_close(model(ids).logits, want)


def test_head_plans_for_another_model_are_refused():
    from hyperattn.heads import HeadPlan

    model = tiny_model("llama")
    wrong_heads = HeadPlan(model="x", seq_len=64, configs={"a": APPROX}, layers={0: ("a", "a")})
    with pytest.raises(ValueError, match="2 heads; the model's layer has 4 query heads"):
        integration.patch_model(model, plan=wrong_heads)
    missing_layer = HeadPlan(model="x", seq_len=64, configs={"a": APPROX}, layers={7: ("a",) * 4})
    with pytest.raises(ValueError, match="lists layer 7; the model has 4"):
        integration.patch_model(model, plan=missing_layer)
    with pytest.raises(ValueError, match="either plan or layers/config"):
        integration.patch_model(model, "last:2", plan=wrong_heads)
    with pytest.raises(TypeError, match="HeadPlan"):
        integration.patch_model(model, plan={"layers": {}})


def _context_parallel_worker(rank, ranks, init_method):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=ranks)
    try:
        ids = tokens(128, batch=2)
        n = ids.shape[1] // ranks
        weight = torch.randn(2, 128, 128, generator=torch.Generator().manual_seed(3))
        whole = tiny_model("llama").train()
        integration.patch_model(whole, "last:2", APPROX, seed=0)
        logits = whole(ids, use_cache=False).logits
        (logits * weight).sum().backward()
        model = tiny_model("llama").train()
        integration.patch_model(model, "last:2", APPROX, seed=0, group=dist.group.WORLD)
        positions = torch.arange(rank * n, (rank + 1) * n)[None].expand(2, -1)
        part = model(ids[:, rank * n:(rank + 1) * n], position_ids=positions, use_cache=False).logits
        torch.testing.assert_close(part, logits[:, rank * n:(rank + 1) * n], rtol=1e-4, atol=1e-4)
        (part * weight[:, rank * n:(rank + 1) * n]).sum().backward()
        for (name, p), q in zip(model.named_parameters(), whole.parameters()):
            dist.all_reduce(p.grad)  # each rank holds its positions' share of every weight's gradient
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-4, msg=name)
        with torch.no_grad():
            first = model(ids[:, rank * n:(rank + 1) * n], position_ids=positions, use_cache=True)
            with pytest.raises(ValueError, match="without a KV cache"):  # a rank's cache holds its positions only
                model(ids[:, :1], position_ids=positions[:, :1] + n, past_key_values=first.past_key_values)
    finally:
        dist.destroy_process_group()


def test_context_parallel_model_matches_the_whole_sequence():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_context_parallel_worker, args=(2, f"tcp://127.0.0.1:{port}"), nprocs=2)


def test_context_parallel_refuses_head_plans():
    from hyperattn.heads import HeadPlan

    model = tiny_model("llama")
    plan = HeadPlan(model="tiny", seq_len=64, configs={"a": APPROX}, layers={0: ("a",) * 4})
    with pytest.raises(ValueError, match="context-parallel"):
        integration.patch_model(model, plan=plan, group=object())
