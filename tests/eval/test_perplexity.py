import math

import pytest
import torch

from hyperattn import HyperAttentionConfig
from hyperattn.eval.perplexity import evaluate_perplexity, format_summary, summarize, token_windows
from tests.eval.conftest import TEXT

APPROX = HyperAttentionConfig(block_size=16, sample_size=16, exact_up_to=0, min_seq_len=32)


def test_summary_quarters():
    nll = torch.tensor([0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0], dtype=torch.float64)
    s = summarize(nll)
    assert s["ppl"] == pytest.approx(math.exp(1.5))
    assert s["quarter_ppl"] == pytest.approx([1.0, math.e, math.e ** 2, math.e ** 3])


def test_windows_are_consecutive_and_too_short_text_is_an_error(char_tokenizer):
    windows = token_windows(char_tokenizer, "abcdefgh", 3, 2)
    assert windows.tolist() == [[98, 99, 100], [101, 102, 103]]
    with pytest.raises(ValueError, match="tokens"):
        token_windows(char_tokenizer, "abc", 3, 2)


def test_exact_setting_matches_the_models_own_loss(tiny_llama, char_tokenizer):
    result = evaluate_perplexity(tiny_llama, char_tokenizer, TEXT, 200, ["last:0", "last:2"], num_windows=2,
                                 seeds=[0, 1], config=APPROX)
    exact = [r for r in result["runs"] if r["layers"] == "last:0"]
    assert len(exact) == 2  # exact attention runs once per window, whatever the seeds
    ids = token_windows(char_tokenizer, TEXT, 200, 2)
    with torch.no_grad():
        loss = tiny_llama(ids[:1], labels=ids[:1]).loss
    assert exact[0]["ppl"] == pytest.approx(math.exp(loss.item()), rel=1e-5)
    patched = [r for r in result["runs"] if r["layers"] == "last:2"]
    assert len(patched) == 4 and all(r["ppl"] != exact[r["window"]]["ppl"] for r in patched)
    summary = {s["layers"]: s for s in result["summary"]}
    assert summary["last:2"]["min_ppl"] <= summary["last:2"]["mean_ppl"] <= summary["last:2"]["max_ppl"]
    assert "vs exact" in format_summary(result)


def test_a_head_plan_is_one_more_setting(tiny_llama, char_tokenizer, tmp_path):
    from hyperattn.heads import HeadPlan

    heads = tiny_llama.config.num_attention_heads
    plan = HeadPlan(model="tiny", seq_len=200, configs={"a": APPROX}, layers={1: ("a",) + ("exact",) * (heads - 1)})
    result = evaluate_perplexity(tiny_llama, char_tokenizer, TEXT, 200, ["last:0", "plan"], config=APPROX, plan=plan)
    summary = {s["layers"]: s for s in result["summary"]}
    assert summary["plan"]["num_patched"] == 1 and summary["plan"]["mean_ppl"] != summary["last:0"]["mean_ppl"]
    table = format_summary(result)
    assert "plan" in table.splitlines()[-1]
    from hyperattn.eval.perplexity import plot_perplexity

    plot_perplexity(result, str(tmp_path / "ppl.png"), "with a plan")
    assert (tmp_path / "ppl.png").stat().st_size > 0
    with pytest.raises(ValueError, match="go together"):
        evaluate_perplexity(tiny_llama, char_tokenizer, TEXT, 200, ["last:0", "plan"], config=APPROX)


def test_longer_than_the_context_is_an_error(tiny_llama, char_tokenizer):
    with pytest.raises(ValueError, match="context"):
        evaluate_perplexity(tiny_llama, char_tokenizer, TEXT, 2048, ["last:0"])


@pytest.mark.parametrize("arch", ["llama", "gemma3-softcap"])
def test_chunked_nll_matches_the_models_loss(arch, monkeypatch):
    import transformers

    from hyperattn.eval import perplexity

    common = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512)
    config = (transformers.LlamaConfig(**common) if arch == "llama"
              else transformers.Gemma3TextConfig(**common, head_dim=16, final_logit_softcapping=30.0))
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    monkeypatch.setattr(perplexity, "LOGIT_CHUNK", 64)  # several chunks
    ids = torch.randint(0, 128, (300,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        loss = model(ids[None], labels=ids[None]).loss.item()
    assert perplexity.window_nll(model, ids).mean().item() == pytest.approx(loss, rel=1e-5)
