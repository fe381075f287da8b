"""The demo's summary table (the full demo runs a pretrained model: `make demo`)."""

import pytest

from hyperattn.demo import format_demo


@pytest.mark.parametrize("sinks,label", [(0, "HyperAttention last:15 "), (16, "HyperAttention last:15 + 16 sinks")])
def test_summary_names_the_setting_and_the_change(sinks, label):
    result = dict(
        model="smollm2", text="paul-graham", seq_len=8192, card="cpu", layers="last:15",
        config=dict(exact_sinks=sinks), seconds=12.0,
        perplexity=dict(summary=[dict(num_patched=0, mean_ppl=20.0, mean_seconds=1.0),
                                 dict(num_patched=15, mean_ppl=25.0, mean_seconds=1.5)]),
        needle=dict(rows=[dict(layers="last:0", correct=True, seconds=2.0),
                          dict(layers="last:15", correct=False, seconds=3.0)]),
    )
    table = format_demo(result)
    assert label in table
    assert "+25.0%" in table and "1/1" in table and "0/1" in table
