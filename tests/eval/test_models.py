import pytest

from hyperattn.eval.models import check_gguf_loader


@pytest.mark.parametrize("model_type", ["gemma3", "gemma3_text"])
def test_gemma3_gguf_under_a_broken_transformers_is_refused(model_type):
    with pytest.raises(RuntimeError, match=r"transformers>=5\.18\.0"):
        check_gguf_loader(model_type, "5.17.0")
    check_gguf_loader(model_type, "5.18.0")
    check_gguf_loader(model_type, "5.24.0")


def test_other_models_are_not_checked():
    check_gguf_loader("llama", "4.56.0")


def test_paper_and_eval_configs():
    """PAPER_CONFIG is the published algorithm (no exact parts, every long input approximated);
    EVAL_CONFIG is the library's default with every long input approximated."""
    from dataclasses import asdict

    from hyperattn import HyperAttentionConfig
    from hyperattn.eval.models import EVAL_CONFIG, PAPER_CONFIG

    paper = asdict(PAPER_CONFIG)
    assert (paper["block_size"], paper["sample_size"], paper["lsh_num_projs"], paper["min_seq_len"]) == (
        256, 256, 7, 4096)
    assert (paper["exact_sinks"], paper["exact_tail"], paper["exact_window"], paper["exact_up_to"]) == (0, 0, 0, 0)
    assert asdict(EVAL_CONFIG) == {**asdict(HyperAttentionConfig()), "exact_up_to": 0}
