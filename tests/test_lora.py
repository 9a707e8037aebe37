"""LoRA groups, the frozen-base switch, gradient routing, and diffusers-format save/load."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from safetensors import safe_open

from cdc import lora as L
from cdc.errors import CdcError, LoraError
from cdc.lora_io import CONFIG_NAME, WEIGHT_NAME, load_lora, read_lora_config, save_lora
from cdc.methods.hooks import route_grads


def _inputs(unet, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    c = unet.config
    x = torch.randn(batch, c.in_channels, c.sample_size, c.sample_size, generator=g)
    ctx = torch.randn(batch, 5, c.cross_attention_dim, generator=g)
    return x, torch.tensor([10, 500][:batch] * (batch // 2 or 1))[:batch], ctx


def _out(unet, inputs):
    x, t, ctx = inputs
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=ctx).sample


def _trained(unet, group="xattn-kv", rank=4, alpha=None, seed=0):
    """A LoRA UNet whose adapter is not the identity (B filled with random values)."""
    L.add_lora(unet, group, rank, alpha, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in L.lora_parameters(unet):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return unet


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def world_unet(tiny_world_bundle):
    return copy.deepcopy(tiny_world_bundle.unet)


def test_groups_pick_the_right_modules(world_unet):
    kv = L.target_modules(world_unet, "xattn-kv")
    xattn = L.target_modules(world_unet, "xattn")
    attn = L.target_modules(world_unet, "attn")
    full = L.target_modules(world_unet, "full")
    assert kv and all(n.endswith(("attn2.to_k", "attn2.to_v")) for n in kv)
    assert set(kv) < set(xattn) < set(attn) < set(full)
    assert any(".attn1." in n for n in attn) and not any(".attn1." in n for n in xattn)
    assert any(isinstance(world_unet.get_submodule(n), torch.nn.Conv2d) for n in full)
    with pytest.raises(ValueError, match="unknown LoRA group"):
        L.target_modules(world_unet, "kv")


def test_add_lora_freezes_base_and_starts_as_identity(world_unet):
    inputs = _inputs(world_unet)
    base = _out(world_unet, inputs)
    L.add_lora(world_unet, "xattn", 2, None, 3)
    trainable = [n for n, p in world_unet.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    assert torch.equal(_out(world_unet, inputs), base)
    with pytest.raises(ValueError, match="already carries LoRA"):
        L.add_lora(world_unet, "xattn", 2, None, 0)


def test_same_seed_same_init(world_unet):
    a, b = copy.deepcopy(world_unet), world_unet
    L.add_lora(a, "xattn-kv", 4, None, 7)
    L.add_lora(b, "xattn-kv", 4, None, 7)
    assert all(torch.equal(p, q) for p, q in zip(L.lora_parameters(a), L.lora_parameters(b)))


def test_base_model_switch(world_unet):
    inputs = _inputs(world_unet)
    base = _out(world_unet, inputs)
    _trained(world_unet)
    assert not torch.allclose(_out(world_unet, inputs), base)
    with L.base_model(world_unet):
        assert torch.allclose(_out(world_unet, inputs), base)
    assert all(p.requires_grad for p in L.lora_parameters(world_unet))
    assert not torch.allclose(_out(world_unet, inputs), base)


def test_route_grads_equals_two_separate_backward_passes(world_unet):
    _trained(world_unet, group="attn")
    params = L.lora_parameters(world_unet)
    x, _, ctx = _inputs(world_unet, batch=4)
    t = torch.tensor([5, 300, 700, 999])

    def loss_a(out):
        return out.pow(2).mean()

    def loss_b(out):
        return (out - 1).abs().mean()

    out = world_unet(x, t, encoder_hidden_states=ctx).sample
    ref_a = torch.autograd.grad(loss_a(out[:2]), params, retain_graph=True)
    ref_b = torch.autograd.grad(loss_b(out[2:]), params)
    with route_grads(world_unet, params, n_first=2) as shadows:
        routed = world_unet(x, t, encoder_hidden_states=ctx).sample
    grads = torch.autograd.grad(loss_a(routed[:2]) + loss_b(routed[2:]), params + shadows)
    for r, g in zip(ref_a + ref_b, grads):
        assert torch.allclose(r, g, atol=1e-6, rtol=1e-4)
    # The routing changes where gradients go, never the output; after the block the leaves are as before.
    assert torch.allclose(routed, out, atol=1e-5)  # row blocks: round-off only
    assert not any("forward" in vars(m) for m in world_unet.modules())
    assert torch.equal(world_unet(x, t, encoder_hidden_states=ctx).sample, out)


def test_save_load_round_trip_keeps_alpha(world_unet, tmp_path):
    inputs = _inputs(world_unet)
    fresh = copy.deepcopy(world_unet)
    _trained(world_unet, rank=4, alpha=8.0)
    want = _out(world_unet, inputs)
    save_lora(world_unet, tmp_path / "lora", {"method": "doco", "params": {"lr": 1e-4}})
    assert sorted(p.name for p in (tmp_path / "lora").iterdir()) == [CONFIG_NAME, WEIGHT_NAME]
    meta = read_lora_config(tmp_path / "lora")
    assert meta["method"] == "doco" and meta["lora"]["alpha"] == 8.0
    # Same weights, same bytes: the adapter metadata must not carry peft's set order (it varies by process).
    with safe_open(str(tmp_path / "lora" / WEIGHT_NAME), "pt") as f:
        targets = json.loads(f.metadata()["lora_adapter_metadata"])["unet.target_modules"]
    assert targets == sorted(targets) and len(targets) > 1
    load_lora(fresh, tmp_path / "lora")
    assert torch.allclose(_out(fresh, inputs), want, atol=1e-5)
    # ... and with plain diffusers, no cdc involved.
    plain = copy.deepcopy(L.remove_lora(fresh))
    plain.load_lora_adapter(str(tmp_path / "lora"), weight_name="pytorch_lora_weights.safetensors", prefix="unet")
    assert torch.allclose(_out(plain, inputs), want, atol=1e-5)


@pytest.mark.parametrize("group", ["xattn", "full"])
def test_sd_lora_loads_into_a_plain_diffusers_pipeline(group, tiny_sd_bundle, tiny_sd_folder, tmp_path):
    unet = copy.deepcopy(tiny_sd_bundle.unet)
    _trained(unet, group=group)
    inputs = _inputs(unet)
    save_lora(unet, tmp_path / "sd-lora", {"method": "esd"})
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd_folder), local_files_only=True)
    assert not torch.allclose(_out(pipe.unet, inputs), _out(unet, inputs))
    pipe.load_lora_weights(str(tmp_path / "sd-lora"))
    assert torch.allclose(_out(pipe.unet, inputs), _out(unet, inputs), atol=1e-5)


def test_lora_from_another_model_is_rejected(tiny_sd_bundle, world_unet, tmp_path):
    sd_unet = _trained(copy.deepcopy(tiny_sd_bundle.unet))
    save_lora(sd_unet, tmp_path / "sd", {"method": "doco"})
    with pytest.raises(LoraError, match="another model"):
        load_lora(world_unet, tmp_path / "sd")
    # Same module names, different shapes: a world UNet with another context width.
    other = UNet2DConditionModel.from_config({**world_unet.config, "cross_attention_dim": 32})
    save_lora(_trained(world_unet), tmp_path / "world", {"method": "doco"})
    with pytest.raises(LoraError, match="another model"):
        load_lora(other, tmp_path / "world")
    assert issubclass(LoraError, CdcError)
    # Without cdc_config.json the folder is a plain diffusers LoRA: the shape check still refuses it.
    (tmp_path / "world" / CONFIG_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="cdc_config.json"):
        read_lora_config(tmp_path / "world")
    with pytest.raises(LoraError, match="another model"):
        load_lora(other, tmp_path / "world")
    assert "default" not in (getattr(other, "peft_config", None) or {})


def test_lora_for_other_base_weights_is_refused_unless_allowed(world_unet, tmp_path):
    inputs = _inputs(world_unet)
    retrained = copy.deepcopy(world_unet)  # same architecture, other weights (another training run)
    with torch.no_grad():
        for p in retrained.parameters():
            p.add_(0.01)
    save_lora(_trained(world_unet), tmp_path / "lora", {"method": "doco"})
    with pytest.raises(LoraError, match="allow_other_base"):
        load_lora(retrained, tmp_path / "lora")
    assert "default" not in (getattr(retrained, "peft_config", None) or {})
    base = _out(retrained, inputs)
    with pytest.warns(UserWarning, match="other base weights"):
        load_lora(retrained, tmp_path / "lora", allow_other_base=True)
    assert "default" in retrained.peft_config
    assert not torch.allclose(_out(retrained, inputs), base)


def test_lora_with_non_finite_weights_is_refused(world_unet, tmp_path):
    fresh = copy.deepcopy(world_unet)
    _trained(world_unet)
    with torch.no_grad():
        L.lora_parameters(world_unet)[0].view(-1)[0] = float("nan")
    save_lora(world_unet, tmp_path / "lora", {"method": "doco"})
    with pytest.raises(LoraError, match="non-finite"):
        load_lora(fresh, tmp_path / "lora")
    assert "default" not in (getattr(fresh, "peft_config", None) or {})
    assert all(p.isfinite().all() for p in fresh.parameters())


def test_interrupted_save_leaves_nothing(world_unet, tmp_path, monkeypatch):
    _trained(world_unet)

    def boom(*args, **kwargs):
        raise RuntimeError("disk gone")

    monkeypatch.setattr(StableDiffusionPipeline, "save_lora_weights", boom)
    with pytest.raises(RuntimeError, match="disk gone"):
        save_lora(world_unet, tmp_path / "lora", {})
    assert list(tmp_path.iterdir()) == []
