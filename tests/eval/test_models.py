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
