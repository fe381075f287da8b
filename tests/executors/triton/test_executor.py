"""The fused executor against the reference executor on the same plan (Triton's interpreter on CPU)."""

import dataclasses
import math

import pytest
import torch

pytest.importorskip("triton")

from hyperattn import HyperAttentionConfig, hyper_attention  # noqa: E402
from hyperattn.executors import reference_attention  # noqa: E402
from hyperattn.executors.triton import selected, tiles  # noqa: E402
from hyperattn.executors.triton.executor import attention_backward, attention_forward  # noqa: E402
from hyperattn.executors.triton.op import triton_attention  # noqa: E402
from hyperattn.plan import launch, plan_hyper_attention  # noqa: E402
from hyperattn.plan.launch import parts_of  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.float16  # Triton 3.6's interpreter computes bf16 dots wrongly; the GPU check covers bf16

CASES = {
    # name: (Hq, Hkv, Nq, Nk, D, Dv, block, samples, min_seq_len, causal)
    "causal-gqa": (4, 2, 96, 96, 32, 32, 16, 20, 16, True),
    "causal-odd-prefill": (2, 1, 50, 77, 16, 24, 8, 10, 8, True),
    "causal-mqa-odd": (3, 1, 77, 77, 16, 16, 16, 5, 8, True),
    "causal-prefill-no-head": (2, 1, 64, 90, 16, 16, 8, 10, 8, True),  # the prefix part owns its keys
    "causal-prefill-short-prefix": (2, 2, 64, 70, 16, 16, 8, 6, 8, True),  # exact prefix part
    "noncausal-longer-q": (2, 2, 70, 45, 16, 16, 8, 10, 8, False),
    "noncausal-gqa-odd": (4, 2, 37, 83, 32, 16, 16, 12, 8, False),
    "exact-causal": (2, 1, 40, 40, 16, 16, 8, 10, 64, True),
    "d64": (2, 1, 48, 48, 64, 64, 16, 16, 16, True),
    "d128": (2, 1, 40, 40, 128, 128, 16, 16, 16, False),
    "d256": (1, 1, 36, 36, 256, 256, 16, 16, 16, True),
    "no-samples": (2, 1, 64, 64, 16, 16, 16, 0, 16, True),  # sample_size=0: key blocks only
}


# name: (Hq, Hkv, Nq, Nk, D, Dv, block, samples, min_seq_len, exact_sinks), all causal
SINK_CASES = {
    "sinks": (2, 1, 96, 96, 16, 16, 8, 10, 8, 3),  # no head, no prefix
    "sinks-odd-head": (2, 1, 77, 77, 16, 16, 8, 10, 8, 4),  # sinks cover the head rows' keys
    "sinks-prefill-hyper-prefix": (2, 1, 64, 90, 16, 16, 8, 10, 8, 5),  # prefix of 26 keys, hashed
    "sinks-prefill-exact-prefix": (2, 2, 64, 70, 16, 16, 8, 6, 8, 9),  # prefix of 6 keys < sinks, exact
    "sinks-above-cap": (2, 1, 96, 96, 16, 16, 8, 10, 8, 100),  # capped at the 6 keys of the first leaf
}
CASES.update({name: (*shape[:9], True) for name, shape in SINK_CASES.items()})
# Exact tails and non-causal sinks, with chunks of 16 keys (tail) and 16 queries (sinks):
# name: (shape as in CASES, exact_sinks, exact_tail)
OPTION_CASES = {
    "tail-causal": ((2, 1, 50, 77, 16, 24, 8, 10, 8, True), 0, 6),  # 4 chunks of keys, 13 more in the causal corner
    "tail-noncausal-sinks": ((4, 2, 37, 83, 32, 16, 16, 12, 8, False), 3, 5),  # 5 chunks and 3 more keys
    "tail-noncausal-no-rest": ((2, 2, 40, 80, 16, 16, 8, 10, 8, False), 0, 4),  # 5 chunks, nothing after
    "noncausal-sinks": ((2, 1, 70, 45, 16, 16, 8, 10, 8, False), 5, 0),  # 4 query chunks sharing keys, 6 more
    "tail-causal-sinks-gqa": ((4, 2, 96, 96, 32, 32, 16, 20, 16, True), 7, 20),
    "noncausal-sinks-fill-blocks": ((2, 1, 48, 40, 16, 16, 8, 10, 8, False), 20, 0),  # sinks fill 2.5 key blocks
}
CASES.update({name: shape for name, (shape, _, _) in OPTION_CASES.items()})
# The rank rule, heavy keys (they sort between the other keys and the sinks, lead the samples), mass
# sampling, the bucket rule (the default: tiles of consecutive sorted queries, each row attending to its
# own block) and the exact window:
# name: (shape as in CASES, config fields)
CONFIG_CASES = {
    # the paper's rank rule: tiles of the queries of one key block
    "rank-causal-gqa": ((4, 2, 96, 96, 32, 32, 16, 20, 16, True), dict(query_blocks="rank")),
    "rank-noncausal-gqa-odd": ((4, 2, 37, 83, 32, 16, 16, 12, 8, False), dict(query_blocks="rank")),
    "rank-multi-tile-blocks": ((2, 1, 160, 160, 16, 16, 40, 36, 16, True),  # 16-key tiles: 16+16+8 a block
                               dict(query_blocks="rank")),
    "rank-many-queries-per-block": ((2, 1, 150, 40, 16, 16, 16, 10, 8, False),  # 60 queries a key block
                                    dict(query_blocks="rank")),
    "heavy-causal-sinks-mass": ((2, 1, 96, 96, 16, 16, 8, 10, 8, True),
                                dict(query_blocks="rank", exact_sinks=3, heavy_keys=5, probe_queries=4,
                                     sampling="mass")),
    "heavy-causal-gqa-prefill": ((4, 2, 64, 90, 32, 32, 8, 6, 8, True),
                                 dict(query_blocks="rank", heavy_keys=7, probe_queries=3)),
    "heavy-noncausal-no-samples": ((2, 1, 70, 45, 16, 16, 8, 0, 8, False),
                                   dict(query_blocks="rank", exact_sinks=2, heavy_keys=20, sampling="mass")),
    "bucket-causal-gqa": ((4, 2, 96, 96, 32, 32, 16, 20, 16, True), dict(query_blocks="bucket")),
    "bucket-causal-prefill-heavy": ((2, 1, 64, 90, 16, 16, 8, 10, 8, True),
                                    dict(query_blocks="bucket", exact_sinks=3, heavy_keys=5, probe_queries=4,
                                         sampling="mass")),
    "bucket-noncausal-many-queries": ((2, 1, 150, 40, 16, 16, 16, 10, 8, False),
                                      dict(query_blocks="bucket", exact_sinks=2, heavy_keys=3)),
    # the centroid rule: keys in order, each query's block by its score against the blocks' mean keys
    "centroid-causal-gqa-heavy": ((4, 2, 96, 96, 32, 32, 16, 0, 16, True),
                                  dict(query_blocks="centroid", exact_sinks=3, heavy_keys=5, probe_queries=4)),
    "centroid-prefill-window-mass": ((2, 1, 64, 90, 16, 16, 8, 10, 8, True),
                                     dict(query_blocks="centroid", exact_window=5, heavy_keys=3, probe_queries=4,
                                          sampling="mass")),
    "centroid-noncausal-many-queries": ((2, 1, 150, 40, 16, 16, 16, 10, 8, False),
                                        dict(query_blocks="centroid", exact_sinks=2, heavy_keys=3)),
    # the exact window: approximated parts skip each query's window keys, exact parts attend to them
    "window-causal": ((2, 1, 96, 96, 16, 16, 8, 10, 8, True), dict(exact_window=5)),
    "window-wide-sinks-prefill": ((2, 1, 64, 90, 16, 16, 8, 10, 8, True), dict(exact_window=13, exact_sinks=3)),
    "window-exact-prefix-bucket-heavy": ((2, 2, 64, 70, 16, 16, 8, 6, 8, True),
                                         dict(exact_window=7, query_blocks="bucket", heavy_keys=3, probe_queries=4,
                                              sampling="mass")),
    "window-head-gqa-sinks": ((4, 2, 77, 77, 16, 16, 8, 10, 8, True), dict(exact_window=11, exact_sinks=4)),
    # selected blocks (no samples): each query's own runs of keys, heavy keys and sinks skipped
    "selected-causal-gqa-heavy": ((4, 2, 96, 96, 32, 32, 16, 0, 16, True),
                                  dict(selected_blocks=3, selected_block_size=4, heavy_keys=5, probe_queries=4,
                                       exact_sinks=3)),
    "selected-noncausal-sinks-heavy": ((2, 1, 70, 45, 16, 16, 8, 0, 8, False),
                                       dict(selected_blocks=2, selected_block_size=8, exact_sinks=2, heavy_keys=3)),
    "selected-window-prefill": ((2, 1, 64, 90, 16, 16, 8, 0, 8, True),
                                dict(selected_blocks=4, selected_block_size=2, exact_window=5, exact_sinks=2)),
    "selected-noncausal-odd-block": ((2, 2, 40, 37, 16, 24, 8, 0, 8, False),  # one part, blocks of 5 keys
                                     dict(selected_blocks=3, selected_block_size=5)),
    # tiles of 16 queries sharing their blocks with their later rows
    "selected-shared-causal-gqa": ((4, 2, 96, 96, 32, 32, 16, 0, 16, True),
                                   dict(selected_blocks=2, selected_block_size=4, heavy_keys=5, probe_queries=4,
                                        exact_sinks=3, selection_tile=16)),
    "selected-shared-window-prefill": ((2, 1, 64, 90, 16, 16, 8, 0, 8, True),
                                       dict(selected_blocks=2, selected_block_size=2, exact_window=5, exact_sinks=2,
                                            selection_tile=16)),
    "selected-shared-noncausal-odd": ((2, 2, 40, 37, 16, 24, 8, 0, 8, False),
                                      dict(selected_blocks=3, selected_block_size=5, selection_tile=32)),
}
CASES.update({name: shape for name, (shape, _) in CONFIG_CASES.items()})
BATCH = {"tail-causal-sinks-gqa": 2, "noncausal-sinks": 2}  # batch 1 elsewhere
OPTIONS = {name: (sinks, 0) for name, (*_, sinks) in SINK_CASES.items()}
OPTIONS.update({name: (sinks, tail) for name, (_, sinks, tail) in OPTION_CASES.items()})


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Chunks the interpreter can afford, so that the tests reach several of them."""
    monkeypatch.setattr(launch, "KEY_CHUNK_LEN", 16)
    monkeypatch.setattr(launch, "QUERY_CHUNK_LEN", 16)
    monkeypatch.setattr(tiles, "REGISTER_QUERY_ROWS", 32)  # query-row chunks of at most two 16-row tiles


def make_case(name, seed=0, dtype=DTYPE):
    """q, k, v, plan, causal and the exact tail of case ``name``."""
    hq, hkv, nq, nk, d, dv, block, samples, min_len, causal = CASES[name]
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(BATCH.get(name, 1), h, n, w, generator=gen).to(DEVICE, dtype)
               for h, n, w in ((hq, nq, d), (hkv, nk, d), (hkv, nk, dv)))
    sinks, tail = OPTIONS.get(name, (0, 0))
    cfg = HyperAttentionConfig(block_size=block, sample_size=samples, exact_up_to=0, min_seq_len=min_len,
                               **{"exact_sinks": sinks, **CONFIG_CASES.get(name, (None, {}))[1]})
    plan = None if nq <= min_len else plan_hyper_attention(q, k, v, causal, cfg, torch.Generator().manual_seed(seed))
    return q, k, v, plan, causal, tail


def rel_error(x, ref):
    return ((x.double() - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("name", list(CASES))
def test_forward_matches_reference(name):
    check_forward(name)


def check_forward(name):
    q, k, v, plan, causal, tail = make_case(name)
    scale = q.shape[-1] ** -0.5
    out, lse = attention_forward(q, k, v, parts_of(plan, q.shape[2], k.shape[2], causal), scale, tail, causal,
                                 poison=True)
    assert out.dtype == q.dtype and lse.dtype == torch.float32
    assert torch.isfinite(out).all() and torch.isfinite(lse).all(), "unwritten rows"
    want_out, want_lse = reference_attention(*(x.double() for x in (q, k, v)), plan, scale, causal, tail)
    same_dtype_out, _ = reference_attention(q, k, v, plan, scale, causal, tail)  # the reference's own fp16 rounding
    same_dtype_error = rel_error(same_dtype_out.to(q.dtype), want_out)
    assert rel_error(out, want_out) <= 2 * same_dtype_error + 1e-4, "out"
    assert (lse.double() - want_lse).abs().max() < 1e-3, "lse"


SELECTED_CASES = [name for name in CONFIG_CASES if name.startswith("selected") and "shared" not in name]


@pytest.mark.parametrize("tile_rows", [16, 32])
@pytest.mark.parametrize("name", SELECTED_CASES)
def test_selected_tile_kernels_match_reference(name, tile_rows, monkeypatch):
    """The selected blocks' tensor-core kernels (tiles of 16 and 32 rows; the default kernels are per row)."""
    monkeypatch.setattr(selected, "SELECTED_TILE_ROWS", tile_rows)
    check_forward(name)
    check_backward(name)


@pytest.mark.parametrize("name", ["causal-gqa", "causal-odd-prefill", "causal-prefill-no-head",
                                  "causal-prefill-short-prefix", "noncausal-gqa-odd", "exact-causal", "d64",
                                  "no-samples",
                                  *SINK_CASES, *OPTION_CASES, *CONFIG_CASES])
def test_backward_matches_reference(name):
    check_backward(name)


def check_backward(name, sample_log_weight=None):
    q, k, v, plan, causal, tail = make_case(name, seed=1)
    if sample_log_weight is not None:
        plan = dataclasses.replace(plan, sample_log_weight=torch.full_like(plan.sample_log_weight, sample_log_weight))
    scale = q.shape[-1] ** -0.5
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    out, lse = triton_attention(q, k, v, plan, scale, causal, tail)
    gen = torch.Generator().manual_seed(2)
    dout = torch.randn(out.shape, generator=gen).to(DEVICE)
    dlse = torch.randn(lse.shape, generator=gen).to(DEVICE)
    grads = torch.autograd.grad((out.float() * dout).sum() + (lse * dlse).sum(), (q, k, v))
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    want_out, want_lse = reference_attention(q64, k64, v64, plan, scale, causal, tail)
    want = torch.autograd.grad((want_out * dout.double()).sum() + (want_lse * dlse.double()).sum(), (q64, k64, v64))
    for label, got, ref in zip(("dq", "dk", "dv"), grads, want):
        assert got.dtype == q.dtype
        assert rel_error(got, ref) < 2e-3, label
    parts = parts_of(plan, q.shape[2], k.shape[2], causal)
    poisoned = attention_backward(dout.to(q.dtype), dlse, q.detach(), k.detach(), v.detach(), out.detach(),
                                  lse.detach(), parts, scale, tail, causal, poison=True)
    for label, got, ref in zip(("dq", "dk", "dv"), poisoned, grads):
        assert torch.isfinite(got).all(), f"unwritten {label} rows"
        assert rel_error(got, ref.double()) < 1e-3, label


def test_backward_survives_sample_weights_past_fp16():
    """A sample weight fp16 cannot hold (value_norm sampling gives them to keys with small values)
    reaches no gradient through the query rows past a tile's end (37 queries, 16-row tiles)."""
    check_backward("noncausal-gqa-odd", sample_log_weight=math.log(1e5))


@pytest.mark.parametrize("name", ["causal-gqa", "causal-mqa-odd", "sinks", "tail-causal-sinks-gqa"])
def test_backward_without_lse_gradient_matches_reference(name):
    """The training path: only the output carries a gradient (dlse None, delta = rowsum(dO * O))."""
    q, k, v, plan, causal, tail = make_case(name, seed=3)
    scale = q.shape[-1] ** -0.5
    parts = parts_of(plan, q.shape[2], k.shape[2], causal)
    out, lse = attention_forward(q, k, v, parts, scale, tail, causal)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(4)).to(DEVICE, q.dtype)
    grads = attention_backward(dout, None, q, k, v, out, lse, parts, scale, tail, causal, poison=True)
    q64, k64, v64 = (x.double().requires_grad_() for x in (q, k, v))
    want_out, _ = reference_attention(q64, k64, v64, plan, scale, causal, tail)
    want = torch.autograd.grad((want_out * dout.double()).sum(), (q64, k64, v64))
    for label, got, ref in zip(("dq", "dk", "dv"), grads, want):
        assert torch.isfinite(got).all(), f"unwritten {label} rows"
        assert rel_error(got, ref) < 2e-3, label


def test_forward_is_repeatable_and_ignores_poison():
    """Grouped kv heads (4 query heads a kv head), no prefix: the first leaf's rows get no
    level part, so the accumulator's unwritten rows must not leak into the output."""
    q, k, v, _, _, _ = make_case("causal-gqa")
    q = q.repeat(1, 2, 1, 1)  # 8 query heads on 2 kv heads
    cfg = HyperAttentionConfig(block_size=16, sample_size=20, exact_up_to=0, min_seq_len=16)
    plan = plan_hyper_attention(q, k, v, True, cfg, torch.Generator().manual_seed(7))
    parts = parts_of(plan, q.shape[2], k.shape[2], True)
    first, first_lse = attention_forward(q, k, v, parts, 0.2, poison=True)
    second, second_lse = attention_forward(q, k, v, parts, 0.2)
    assert torch.equal(first, second) and torch.equal(first_lse, second_lse)


@pytest.mark.parametrize("tiles", ["32,16,4,1", "16,32,4,1"])
@pytest.mark.parametrize("name", ["causal-odd-prefill", "exact-causal"])
def test_unequal_query_and_key_tiles_match_reference(name, tiles, monkeypatch):
    """Causal kernels split their loops into masked and unmasked tiles at tile boundaries."""
    monkeypatch.setenv("HYPERATTN_TRITON_CONFIG", tiles)
    check_forward(name)
    check_backward(name)


@pytest.mark.parametrize("causal", [False, True])
def test_api_triton_path_matches_reference_path(causal):
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(1, 4, 90, 32, generator=gen).to(DEVICE, DTYPE)
    k, v = (torch.randn(1, 2, 90, 32, generator=gen).to(DEVICE, DTYPE) for _ in range(2))
    cfg = dict(block_size=16, sample_size=8, exact_up_to=0, min_seq_len=16)
    fused = hyper_attention(q, k, v, causal=causal, seed=5, return_lse=True,
                            config=HyperAttentionConfig(**cfg, impl="triton"))
    ref = hyper_attention(q, k, v, causal=causal, seed=5, return_lse=True,
                          config=HyperAttentionConfig(**cfg, impl="reference"))
    assert rel_error(fused[0], ref[0].double()) < 2e-3
    assert (fused[1] - ref[1]).abs().max() < 1e-3


def test_triton_impl_rejects_float32():
    q = torch.randn(1, 1, 40, 16)
    with pytest.raises(TypeError, match="impl='triton'"):
        hyper_attention(q, q, q, config=HyperAttentionConfig(exact_up_to=0, min_seq_len=8, impl="triton"))


def test_exact_tail_through_the_kernels_matches_the_reference():
    q, k, v, _, _, _ = make_case("causal-odd-prefill")
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    cfg = dict(block_size=8, sample_size=10, exact_up_to=0, min_seq_len=8, exact_tail=6)
    out, lse = hyper_attention(q, k, v, causal=True, config=HyperAttentionConfig(impl="triton", **cfg), seed=4,
                               return_lse=True)
    want, want_lse = hyper_attention(*(x.detach().double() for x in (q, k, v)), causal=True,
                                     config=HyperAttentionConfig(impl="reference", **cfg), seed=4, return_lse=True)
    assert rel_error(out, want) < 2e-3 and (lse.double() - want_lse).abs().max() < 1e-3
    out.float().sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))


@pytest.mark.parametrize("rule", ["bucket", "centroid"])
def test_bucket_rule_through_the_kernels_is_strictly_causal(rule):
    """Under the bucket and centroid rules, the fused kernels' output rows up to t are bit-identical when every
    q, k and v row after t changes (same seed): a row's result depends on its own block and the
    shared samples, not on which other rows share its tile."""
    gen = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(1, h, 96, 16, generator=gen).to(DEVICE, DTYPE) for h in (2, 1, 1))
    cfg = HyperAttentionConfig(block_size=8, sample_size=6, lsh_num_projs=3, exact_up_to=0, min_seq_len=16,
                               exact_sinks=2, heavy_keys=3, probe_queries=4, sampling="mass", query_blocks=rule,
                               impl="triton")
    out = hyper_attention(q, k, v, causal=True, config=cfg, seed=3)
    for t in (40, 71):
        q2, k2, v2 = (torch.cat((x[:, :, :t + 1], torch.randn(x[:, :, t + 1:].shape, generator=gen).to(DEVICE, DTYPE)),
                                2) for x in (q, k, v))
        out2 = hyper_attention(q2, k2, v2, causal=True, config=cfg, seed=3)
        assert torch.equal(out2[:, :, :t + 1], out[:, :, :t + 1])
        assert not torch.equal(out2[:, :, t + 1:], out[:, :, t + 1:])
