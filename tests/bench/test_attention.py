from dataclasses import asdict

import pytest
import torch

from hyperattn.bench.attention import attention_inputs, format_table
from hyperattn.config import HyperAttentionConfig


def _result(config: dict) -> dict:
    rows = [dict(seq_len=n, head_dim=64, causal=True, mode="fwd", impl=impl, ms=1.0, peak_gib=0.5)
            for n in (4096, 16384, 32768) for impl in ("cudnn", "ours")]
    return dict(card="test card", batch=1, heads=32, dtype="bfloat16", config=config, results=rows)


def _exact_rows(table: str) -> list[int]:
    return [int(line.split()[0]) for line in table.splitlines() if line.endswith("  exact")]


def test_rows_where_our_call_ran_exact_attention_are_marked():
    assert _exact_rows(format_table(_result(asdict(HyperAttentionConfig())))) == [4096, 16384]


def test_results_from_before_exact_up_to_use_the_papers_rule():
    old = asdict(HyperAttentionConfig())
    del old["exact_up_to"]
    assert _exact_rows(format_table(_result(old))) == [4096]


def test_grouped_inputs_and_their_repeated_form():
    torch.manual_seed(0)
    q, k, v = attention_inputs(1, 8, 2, 5, 4, torch.float32, "cpu", requires_grad=True)
    assert (q.shape, k.shape, v.shape) == ((1, 8, 5, 4), (1, 2, 5, 4), (1, 2, 5, 4))
    torch.manual_seed(0)
    q2, k2, v2 = attention_inputs(1, 8, 2, 5, 4, torch.float32, "cpu", requires_grad=True, repeat_kv=True)
    assert torch.equal(q2, q) and k2.shape == v2.shape == (1, 8, 5, 4)
    for grouped, repeated in ((k, k2), (v, v2)):  # query head h reads kv head h // 4, as in SDPA's enable_gqa
        assert all(torch.equal(repeated[:, h], grouped[:, h // 4]) for h in range(8))
    assert all(x.is_leaf and x.requires_grad for x in (q2, k2, v2))
    with pytest.raises(ValueError, match=r"kv_heads must divide heads \(8\), got 3"):
        attention_inputs(1, 8, 3, 5, 4, torch.float32, "cpu")


def test_table_names_grouped_heads():
    result = dict(_result(asdict(HyperAttentionConfig())), kv_heads=8)
    assert format_table(result).splitlines()[0].endswith("32 query heads on 8 kv heads (SDPA: kv repeated), "
                                                          "bfloat16; median ms")
    assert "32 heads, bfloat16" in format_table(_result(asdict(HyperAttentionConfig())))
