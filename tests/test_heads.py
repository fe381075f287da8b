"""Per-head treatments: attention_by_head and the head plan file."""

import json

import pytest
import torch

from hyperattn import HyperAttentionConfig, exact_attention, hyper_attention
from hyperattn.heads import HeadPlan, attention_by_head
from tests.conftest import random_qkv

A = HyperAttentionConfig(block_size=8, sample_size=8, min_seq_len=16, exact_up_to=0, exact_sinks=4, exact_tail=0)
B = HyperAttentionConfig(block_size=8, sample_size=0, heavy_keys=8, query_blocks="bucket", min_seq_len=16,
                         exact_up_to=0)


def test_each_treatment_runs_once_over_its_heads():
    """Heads 0-5 read kv heads 0, 0, 0, 1, 1, 1. A takes local heads {1} of both groups (one call
    over both kv heads); B takes heads 0 and 5 (different local heads: one call per kv head);
    the rest are exact."""
    q, k, v = random_qkv(hq=6, hkv=2, nq=70, nk=90, d=8, seed=1)
    treatments = [B, A, None, None, A, B]
    out = attention_by_head(q, k, v, treatments, causal=True, seed=3)
    torch.testing.assert_close(out[:, [1, 4]], hyper_attention(q[:, [1, 4]], k, v, causal=True, config=A, seed=3),
                               rtol=0, atol=0)
    torch.testing.assert_close(out[:, [0]], hyper_attention(q[:, [0]], k[:, :1], v[:, :1], causal=True, config=B,
                                                            seed=3), rtol=0, atol=0)
    torch.testing.assert_close(out[:, [5]], hyper_attention(q[:, [5]], k[:, 1:], v[:, 1:], causal=True, config=B,
                                                            seed=3), rtol=0, atol=0)
    exact = exact_attention(q, k, v, causal=True)
    torch.testing.assert_close(out[:, [2, 3]], exact[:, [2, 3]])
    assert (out[:, [0, 1, 4, 5]] - exact[:, [0, 1, 4, 5]]).abs().max() > 1e-3  # the approximation ran


def test_calls_cover_runs_of_kv_heads_whose_query_heads_agree():
    from hyperattn.heads import _head_calls

    # 8 query heads over 4 kv heads (groups of 2): A takes kv heads 0, 1 and 3 whole and one head of kv 2
    treatments = [A, A, A, A, A, None, A, A]
    assert _head_calls(treatments, 4) == [(A, [0, 1, 2, 3], slice(0, 2)), (A, [6, 7], slice(3, 4)),
                                          (A, [4], slice(2, 3)), (None, [5], slice(2, 3))]
    assert _head_calls([B, None] * 4, 4) == [(B, [0, 2, 4, 6], slice(0, 4)), (None, [1, 3, 5, 7], slice(0, 4))]


def test_one_treatment_for_every_head_is_one_call():
    q, k, v = random_qkv(hq=4, hkv=2, nq=64, d=8, seed=2)
    torch.testing.assert_close(attention_by_head(q, k, v, [A] * 4, causal=True, seed=0),
                               hyper_attention(q, k, v, causal=True, config=A, seed=0), rtol=0, atol=0)
    torch.testing.assert_close(attention_by_head(q, k, v, [None] * 4, causal=False),
                               exact_attention(q, k, v, causal=False), rtol=0, atol=0)


def test_gradients_reach_every_head():
    q, k, v = random_qkv(hq=2, hkv=1, nq=20, d=2, seed=3, requires_grad=True)
    small = HyperAttentionConfig(block_size=4, sample_size=4, min_seq_len=4, exact_up_to=0, exact_sinks=0,
                                 exact_tail=0)
    assert torch.autograd.gradcheck(
        lambda q, k, v: attention_by_head(q, k, v, [small, None], causal=True, seed=1), (q, k, v))


def test_future_tokens_change_no_earlier_output():
    q, k, v = random_qkv(hq=4, hkv=2, nq=80, d=8, seed=4)
    treatments = [B, None, B, B]
    out = attention_by_head(q, k, v, treatments, causal=True, seed=0)
    q2, k2, v2 = (x.clone() for x in (q, k, v))
    for x in (q2, k2, v2):
        x[:, :, 50:] += torch.randn(x[:, :, 50:].shape, generator=torch.Generator().manual_seed(5), dtype=x.dtype)
    out2 = attention_by_head(q2, k2, v2, treatments, causal=True, seed=0)
    assert torch.equal(out[:, :, :50], out2[:, :, :50])


@pytest.mark.parametrize("treatments,error,message", [
    ([A, None], ValueError, "one per query head"),
    ("exact", TypeError, "sequence"),
    ([A, None, "exact", None], TypeError, "treatments[2]"),
])
def test_bad_treatments_are_named(treatments, error, message):
    q, k, v = random_qkv(hq=4, hkv=2, nq=20, d=8)
    with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
        attention_by_head(q, k, v, treatments)


def plan_of(**changes):
    fields = dict(model="tiny", seq_len=64, configs={"a": A, "b": B},
                  layers={0: ("exact", "a", "a", "exact"), 2: ("b", "b", "exact", "exact")},
                  measured={"metric": "ppl", "budget": 0.01})
    return HeadPlan(**{**fields, **changes})


def test_attention_cost_weights_each_head_by_its_treatment():
    plan = HeadPlan(model="m", seq_len=64, configs={"a": A, "b": B}, layers={0: ("a", "a", "exact", "b"),
                                                                           2: ("a", "a", "a", "a")})
    assert plan.attention_cost({"a": 0.1, "b": 0.2}) == pytest.approx((6 * 0.1 + 1 + 0.2) / 8)
    with pytest.raises(ValueError, match="no time given for treatments \\['b'\\]"):
        plan.attention_cost({"a": 0.1})


def test_head_plan_round_trips_through_json(tmp_path):
    plan = plan_of()
    path = tmp_path / "plan.json"
    plan.save(path)
    assert HeadPlan.load(path) == plan
    data = json.loads(path.read_text())
    assert data["format"] == "hyperattn-head-plan" and data["version"] == 1 and data["layers"]["2"][0] == "b"
    assert plan.treatments(0) == (None, A, A, None) and plan.treatments(1) is None
    assert plan.head_counts() == {"exact": 4, "a": 2, "b": 2}


@pytest.mark.parametrize("changes,message", [
    (dict(configs={"exact": A}), "reserved"),
    (dict(layers={0: ("a", "c")}), r"names treatments \['c'\]"),
    (dict(layers={-1: ("a",)}), "layer indices"),
])
def test_bad_head_plans_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        plan_of(**changes)


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.update(version=2), "version 2 is not supported"),
    (lambda d: d.update(format="other"), "not a head plan"),
    (lambda d: d["configs"]["a"].update(new_field=1), r"fields \['new_field'\]"),
])
def test_unreadable_plan_files_say_why(edit, message):
    data = plan_of().to_dict()
    edit(data)
    with pytest.raises(ValueError, match=message):
        HeadPlan.from_dict(data)
