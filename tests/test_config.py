import pytest

from hyperattn import HyperAttentionConfig
from hyperattn.config import check_scale


def test_defaults_are_the_papers_but_strictly_causal_and_short_inputs_run_exactly():
    cfg = HyperAttentionConfig()
    assert (cfg.block_size, cfg.sample_size, cfg.lsh_num_projs, cfg.min_seq_len, cfg.sampling) == (
        256, 256, 7, 4096, "uniform")
    assert cfg.exact_up_to == 16384
    assert cfg.query_blocks == "bucket"


@pytest.mark.parametrize("nq,nk,causal,exact", [
    (16384, 16384, True, True), (16385, 16385, True, False),
    (11585, 11585, False, True), (11586, 11586, False, False),  # n^2 <= 16384 * 16385 / 2
    (4096, 10**7, False, True),  # at most min_seq_len queries: always exact
    (8192, 24576, True, False), (6000, 16384, True, True),  # bottom-right causal prefill: n_q (n_k - n_q / 2) pairs
])
def test_runs_exact_counts_query_key_pairs(nq, nk, causal, exact):
    assert HyperAttentionConfig().runs_exact(nq, nk, causal) is exact


def test_exact_up_to_zero_is_the_papers_rule():
    cfg = HyperAttentionConfig(exact_up_to=0)
    assert cfg.runs_exact(4096, 4096, True) and not cfg.runs_exact(4097, 4097, True)


@pytest.mark.parametrize(
    "field,value,error",
    [
        ("block_size", 0, ValueError),
        ("block_size", -3, ValueError),
        ("block_size", 2.0, TypeError),
        ("block_size", True, TypeError),
        ("sample_size", -1, ValueError),
        ("sample_size", "8", TypeError),
        ("lsh_num_projs", 0, ValueError),
        ("lsh_num_projs", 17, ValueError),
        ("min_seq_len", 0, ValueError),
        ("min_seq_len", None, TypeError),
        ("sampling", "random", ValueError),
        ("sampling", 1, ValueError),
        ("impl", "cuda", ValueError),
        ("exact_sinks", -1, ValueError),
        ("exact_window", 1.5, TypeError),
        ("exact_tail", -3, ValueError),
        ("exact_tail", True, TypeError),
        ("exact_up_to", -1, ValueError),
        ("exact_up_to", 2.5, TypeError),
        ("query_blocks", "nearest", ValueError),
        ("selected_blocks", -1, ValueError),
        ("selected_block_size", 0, ValueError),
        ("selected_block_size", 4.0, TypeError),
        ("selection_coarse_size", -1, ValueError),
        ("selection_coarse_size", 12, ValueError),  # not a multiple of selected_block_size 8
        ("selection_coarse_size", 8, ValueError),  # not above it
        ("selection_tile", 8, ValueError),  # below the fused kernels' 16-row tile
        ("selection_tile", 24, ValueError),  # not a power of two
        ("selection_tile", 16.0, TypeError),
    ],
)
def test_bad_values_name_the_field(field, value, error):
    with pytest.raises(error, match=field):
        HyperAttentionConfig(**{field: value})


def test_edges_accepted():
    HyperAttentionConfig(block_size=1, sample_size=0, lsh_num_projs=1, exact_up_to=0, min_seq_len=1)
    HyperAttentionConfig(lsh_num_projs=16, sampling="value_norm")


@pytest.mark.parametrize("scale,error", [(0.0, ValueError), (-1.0, ValueError), (float("nan"), ValueError),
                                         (float("inf"), ValueError), ("0.1", TypeError), (True, TypeError)])
def test_bad_scale(scale, error):
    with pytest.raises(error, match="scale"):
        check_scale(scale, 64)


def test_default_scale():
    assert check_scale(None, 64) == 0.125
    assert check_scale(2, 64) == 2.0
