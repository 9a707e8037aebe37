"""The attention kernel switch: same function, processors restored, clear errors."""

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from cdc.attention import attention_kernel, resolve_attention
from cdc.bundle import make_world_unet


@pytest.fixture()
def unet():
    torch.manual_seed(0)
    return make_world_unet(16, 12, [32, 32], [False, True], 1, 8, 16)


def processor_types(unet) -> set[type]:
    return {type(p) for p in unet.attn_processors.values()}


def test_auto_is_unfused_on_cpu_and_fused_on_cuda():
    assert resolve_attention("auto", "cpu") == "unfused"
    assert resolve_attention("auto", "cuda") == "sdpa"
    assert resolve_attention("sdpa", "cpu") == "sdpa"
    with pytest.raises(ValueError, match="attention must be one of"):
        resolve_attention("flash", "cpu")


def test_unfused_kernel_computes_the_same_and_gradients_match(unet):
    x, t, ctx = torch.randn(2, 12, 16, 16), torch.tensor([10, 900]), torch.randn(2, 5, 16)
    fused = unet(x, t, ctx).sample
    fused.square().mean().backward()
    grads = [p.grad.clone() for p in unet.parameters()]
    unet.zero_grad()
    with attention_kernel(unet, "unfused"):
        assert processor_types(unet) == {AttnProcessor}
        unfused = unet(x, t, ctx).sample
        unfused.square().mean().backward()
    torch.testing.assert_close(unfused, fused, rtol=1e-4, atol=1e-5)
    for p, g in zip(unet.parameters(), grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-3, atol=1e-6)


def test_processors_are_restored_even_after_an_error(unet):
    before = processor_types(unet)
    assert before == {AttnProcessor2_0}
    with pytest.raises(RuntimeError, match="boom"), attention_kernel(unet, "unfused"):
        raise RuntimeError("boom")
    assert processor_types(unet) == before
    with attention_kernel(unet, "sdpa"):
        assert processor_types(unet) == before
    with pytest.raises(ValueError, match="'sdpa' or 'unfused'"), attention_kernel(unet, "auto"):
        pass
