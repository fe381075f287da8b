"""The custom op: the plan across its boundary, opcheck, torch.compile."""

import dataclasses

import pytest
import torch

pytest.importorskip("triton")

from hyperattn.executors.triton.op import attention_fwd_op, triton_attention  # noqa: E402
from hyperattn.plan import flatten_plan, unflatten_plan  # noqa: E402
from hyperattn.plan.launch import parts_of  # noqa: E402
from tests.executors.triton.test_executor import make_case  # noqa: E402


@pytest.mark.parametrize("name", ["noncausal-sinks", "tail-causal-sinks-gqa", "causal-prefill-no-head",
                                  "causal-prefill-short-prefix", "exact-causal", "bucket-causal-prefill-heavy",
                                  "bucket-noncausal-many-queries", "selected-causal-gqa-heavy",
                                  "selected-noncausal-odd-block", "selected-shared-causal-gqa",
                                  "selected-shared-noncausal-odd"])
def test_plans_survive_the_custom_op_boundary(name):
    """What the op receives (``flatten_plan``) gives back the same launch list."""
    q, k, v, plan, causal, _ = make_case(name)
    back = unflatten_plan(*flatten_plan(plan))
    assert type(back) is type(plan)
    for part, other in zip(parts_of(plan, q.shape[2], k.shape[2], causal),
                           parts_of(back, q.shape[2], k.shape[2], causal), strict=True):
        assert all(getattr(part, f.name) == getattr(other, f.name)
                   for f in dataclasses.fields(part) if f.name != "plan")
        if part.plan is not None:
            assert ((other.plan.block_size, other.plan.sinks, other.plan.heavy)
                    == (part.plan.block_size, part.plan.sinks, part.plan.heavy))
            assert all(torch.equal(getattr(part.plan, f), getattr(other.plan, f))
                       for f in ("q_perm", "k_perm", "sample_idx", "sample_block", "sample_log_weight"))
            assert (other.plan.q_block is None) == (part.plan.q_block is None)
            assert part.plan.q_block is None or torch.equal(part.plan.q_block, other.plan.q_block)
            assert other.plan.selected_block_size == part.plan.selected_block_size
            assert other.plan.selection_tile == part.plan.selection_tile
            assert (other.plan.selected is None) == (part.plan.selected is None)
            assert part.plan.selected is None or torch.equal(part.plan.selected, other.plan.selected)


def test_custom_op_passes_opcheck():
    q, k, v, plan, causal, _ = make_case("noncausal-gqa-odd")
    plan_tensors, plan_ints = flatten_plan(plan)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    torch.library.opcheck(attention_fwd_op, (q, k, v, plan_tensors, plan_ints, 0.25, causal, 5),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_torch_compile_runs_around_the_op():
    q, k, v, plan, causal, _ = make_case("causal-gqa")

    class Model(torch.nn.Module):
        def forward(self, q, k, v):
            out, lse = triton_attention(q * 1.0, k, v, plan, 0.2, causal)
            return out.float().sum() + lse.sum()

    compiled = torch.compile(Model(), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), Model()(q, k, v))
