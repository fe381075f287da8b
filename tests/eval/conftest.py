import pytest
import torch

transformers = pytest.importorskip("transformers")


class CharTokenizer:
    """A stand-in tokenizer: one token per character (code point mod 128)."""

    eos_token_id = 0

    class _Encoding:
        def __init__(self, ids, return_tensors):
            self.input_ids = torch.tensor([ids]) if return_tensors == "pt" else ids

    def __call__(self, text, add_special_tokens=False, return_tensors=None):
        return self._Encoding([1 + ord(c) % 127 for c in text], return_tensors)

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(int(i) - 1) for i in ids if int(i) > 0)


@pytest.fixture
def tiny_llama():
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()


@pytest.fixture
def char_tokenizer():
    return CharTokenizer()


TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
        "foolishness, it was the epoch of belief, it was the epoch of incredulity. ") * 20
