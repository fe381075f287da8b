import pytest

from hyperattn import HyperAttentionConfig
from hyperattn.eval.needle import NEEDLE, build_prompt, evaluate_needle, format_grid
from tests.eval.conftest import TEXT


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_prompt_has_the_length_and_the_needle_at_its_depth(char_tokenizer, depth):
    haystack = char_tokenizer(TEXT).input_ids
    prompt = build_prompt(char_tokenizer, haystack, 600, depth, 12345)
    assert len(prompt) == 600
    text = char_tokenizer.decode(prompt)
    position = text.index(NEEDLE.format(number=12345))
    assert abs(position / len(text) - depth * 0.8) < 0.15  # the question takes the last ~20%
    with pytest.raises(ValueError, match="haystack"):
        build_prompt(char_tokenizer, haystack[:100], 600, depth, 1)


def test_grid_covers_every_setting_length_and_depth(tiny_llama, char_tokenizer):
    cfg = HyperAttentionConfig(block_size=16, sample_size=16, exact_up_to=0, min_seq_len=64)
    result = evaluate_needle(tiny_llama, char_tokenizer, TEXT, [300, 400], [0.0, 1.0], ["last:0", "all"], cfg)
    assert len(result["rows"]) == 8
    assert all(isinstance(r["correct"], bool) and r["answer"] is not None for r in result["rows"])
    assert "exact attention" in format_grid(result)
