"""The sparse MoE block, the router and the auxiliary losses against plain reference computations."""

import pytest
import torch
import torch.nn.functional as F

from modeling_unimoe import UniMoEForCausalLM, UniMoETextConfig
from modeling_unimoe.modeling_unimoe import UniMoESparseMoeBlock
from tests.helpers import text_only_config


def block_config(**kwargs):
    defaults = dict(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_experts=4, num_experts_per_tok=2)
    defaults.update(kwargs)
    return UniMoETextConfig(**defaults)


def reference_moe(block: UniMoESparseMoeBlock, x: torch.Tensor) -> torch.Tensor:
    """Token by token: softmax over all experts, top-k, renormalise, weighted sum of SwiGLU experts."""
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            token = x[b, t]
            probs = torch.softmax(token @ block.gate.weight.T, dim=-1)
            top = sorted(range(block.num_experts), key=lambda e: -probs[e].item())[: block.top_k]
            total = sum(probs[e] for e in top)
            for e in top:
                expert = block.experts[e]
                hidden = F.silu(token @ expert.gate_proj.weight.T) * (token @ expert.up_proj.weight.T)
                out[b, t] += probs[e] / total * (hidden @ expert.down_proj.weight.T)
    return out


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_block_matches_per_token_reference(top_k):
    torch.manual_seed(0)
    block = UniMoESparseMoeBlock(block_config(num_experts_per_tok=top_k))
    x = torch.randn(3, 7, 32)
    out = block(x)
    torch.testing.assert_close(out, reference_moe(block, x), atol=1e-5, rtol=0)
    router_logits, weights, experts = block.gate(x.reshape(-1, 32))
    torch.testing.assert_close(router_logits, x.reshape(-1, 32) @ block.gate.weight.T)
    assert weights.shape == experts.shape == (21, top_k)


def test_block_backward_matches_reference():
    torch.manual_seed(0)
    block = UniMoESparseMoeBlock(block_config())
    x = torch.randn(2, 5, 32, requires_grad=True)
    block(x).square().sum().backward()
    ours = [p.grad.clone() for p in block.parameters()] + [x.grad.clone()]
    block.zero_grad()
    x.grad = None
    reference_moe(block, x).square().sum().backward()
    reference = [p.grad for p in block.parameters()] + [x.grad]
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_expert_that_gets_no_token_is_skipped():
    torch.manual_seed(0)
    block = UniMoESparseMoeBlock(block_config(num_experts_per_tok=1))
    with torch.no_grad():
        block.gate.weight.zero_()
        block.gate.weight[2, 0] = 1.0  # every token with x[0] > 0 goes to expert 2, others to expert 0
    x = torch.randn(1, 6, 32).abs()
    out = block(x)
    torch.testing.assert_close(out, block.experts[2](x))


def test_identical_experts_make_the_router_irrelevant_and_distinct_experts_do_not():
    torch.manual_seed(0)
    config = text_only_config()
    model = UniMoEForCausalLM(config).eval()
    input_ids = torch.randint(0, 128, (2, 9))
    layers = model.model.language_model.layers
    with torch.no_grad():
        for layer in layers:
            for expert in layer.mlp.experts[1:]:
                expert.load_state_dict(layer.mlp.experts[0].state_dict())
        before = model(input_ids).logits
        for layer in layers:
            layer.mlp.gate.weight.normal_()
        after_identical = model(input_ids).logits
        torch.testing.assert_close(before, after_identical, atol=1e-5, rtol=0)

        for layer in layers:
            for expert in layer.mlp.experts:
                for p in expert.parameters():
                    p.normal_(std=0.1)
        distinct = model(input_ids).logits
        for layer in layers:
            layer.mlp.gate.weight.normal_()
        assert (model(input_ids).logits - distinct).abs().max() > 1e-3


def reference_gshard_loss(router_logits, num_experts):
    """E^2 * mean_e(me_e * ce_e), summed over layers; one [tokens, E] tensor per layer, padding already removed."""
    total = 0.0
    for logits in router_logits:
        probs = torch.softmax(logits.double(), dim=-1)
        me = probs.mean(0)
        ce = torch.stack([(probs.argmax(-1) == e).double().mean() for e in range(num_experts)])
        total += num_experts**2 * (me * ce).mean()
    return total


def test_aux_loss_is_the_gshard_formula_and_enters_the_loss():
    torch.manual_seed(0)
    config = text_only_config(router_aux_loss_coef=0.01, router_z_loss_coef=0.001)
    model = UniMoEForCausalLM(config).eval()
    input_ids = torch.randint(0, 128, (2, 11))
    out = model(input_ids, labels=input_ids, output_router_logits=True)
    assert len(out.router_logits) == 4 and out.router_logits[0].shape == (22, 4)
    expected = reference_gshard_loss(out.router_logits, 4)
    torch.testing.assert_close(out.aux_loss.double(), torch.as_tensor(expected), atol=1e-6, rtol=0)
    z = sum(torch.logsumexp(logits, -1).square().mean() for logits in out.router_logits)
    torch.testing.assert_close(out.z_loss, z, atol=1e-5, rtol=1e-6)
    lm_loss = model(input_ids, labels=input_ids, output_router_logits=False).loss
    torch.testing.assert_close(out.loss, lm_loss + 0.01 * out.aux_loss + 0.001 * out.z_loss)


def test_aux_loss_ignores_padding_left_or_right():
    torch.manual_seed(0)
    model = UniMoEForCausalLM(text_only_config()).eval()
    a, b = torch.randint(3, 128, (7,)), torch.randint(3, 128, (4,))
    pad = torch.zeros(3, dtype=torch.long)
    right = torch.stack([a, torch.cat([b, pad])])
    left = torch.stack([a, torch.cat([pad, b])])
    right_mask = (torch.arange(7) < torch.tensor([[7], [4]])).long()
    left_mask = right_mask.flip(-1)
    left_mask[0] = 1
    out_right = model(right, attention_mask=right_mask, output_router_logits=True)
    out_left = model(left, attention_mask=left_mask, output_router_logits=True)
    torch.testing.assert_close(out_right.aux_loss, out_left.aux_loss, atol=1e-6, rtol=0)
    torch.testing.assert_close(out_right.z_loss, out_left.z_loss, atol=1e-5, rtol=1e-6)
    # and both equal the loss over the real tokens only
    real = [logits.view(2, 7, 4)[right_mask.bool()] for logits in out_right.router_logits]
    expected = reference_gshard_loss(real, 4)
    torch.testing.assert_close(out_right.aux_loss.double(), torch.as_tensor(expected), atol=1e-6, rtol=0)


def test_capacity_factor_drops_overflow_and_renormalises():
    torch.manual_seed(0)
    block = UniMoESparseMoeBlock(block_config(num_experts_per_tok=2, capacity_factor=0.5))
    with torch.no_grad():  # every token prefers expert 0, then expert 1
        block.gate.weight.zero_()
        block.gate.weight[0, 0] = 2.0
        block.gate.weight[1, 0] = 1.0
    x = torch.randn(1, 8, 32)
    x[..., 0] = 1.0
    _, weights, selected = block.gate(x[0])
    # capacity = ceil(0.5 * 8 * 2 / 4) = 2: tokens 0-1 keep expert 0 and tokens 0-1 keep expert 1, the rest drop
    assert selected[:, 0].eq(0).all() and selected[:, 1].eq(1).all()
    kept = weights > 0
    assert kept[:2].all() and not kept[2:].any()
    torch.testing.assert_close(weights[:2].sum(-1), torch.ones(2))
    out = block(x)
    torch.testing.assert_close(out[0, 2:], torch.zeros(6, 32))
