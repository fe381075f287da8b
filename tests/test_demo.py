"""The demo's summary table (the full demo runs a pretrained model: `make demo`)."""

import pytest

from hyperattn.demo import format_demo


@pytest.mark.parametrize("config,label", [
    (dict(exact_sinks=0, query_blocks="bucket"), "HyperAttention last:15 "),
    (dict(exact_sinks=16, query_blocks="bucket"), "HyperAttention last:15 + 16 sinks "),
    (dict(exact_sinks=0, query_blocks="rank"), "HyperAttention last:15 (rank rule)"),
])
def test_summary_names_the_setting_and_the_change(config, label):
    result = dict(
        model="smollm2", text="paul-graham", seq_len=8192, card="cpu", layers="last:15",
        config=config, seconds=12.0,
        perplexity=dict(summary=[dict(num_patched=0, mean_ppl=20.0, mean_seconds=1.0),
                                 dict(num_patched=15, mean_ppl=25.0, mean_seconds=1.5)]),
        needle=dict(rows=[dict(layers="last:0", correct=True, seconds=2.0),
                          dict(layers="last:15", correct=False, seconds=3.0)]),
    )
    table = format_demo(result)
    assert label in table
    assert "+25.0%" in table and "1/1" in table and "0/1" in table
