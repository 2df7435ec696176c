"""LoRA and DoRA layers against PEFT's layers: outputs and gradients on random inputs."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft_support import Block, randomize_adapters
from torch import nn

import ft_peft
from ft_peft import LoRALinear, _dora

TOL = {"atol": 1e-5, "rtol": 1e-5}


def _pair(use_dora: bool, use_rslora: bool, dropout: float, ft_rslora: bool | None = None):
    """The same Block wrapped by PEFT and by ft, with identical (non-zero) adapter weights."""
    torch.manual_seed(0)
    base = Block()
    ft_model = copy.deepcopy(base)
    ft_peft.apply_lora(
        ft_model,
        ["proj", "out"],
        rank=5,
        alpha=7.0,
        dropout=dropout,
        use_dora=use_dora,
        use_rslora=use_rslora if ft_rslora is None else ft_rslora,
    )
    randomize_adapters(ft_model)
    config = LoraConfig(
        target_modules=["proj", "out"],
        r=5,
        lora_alpha=7,
        lora_dropout=dropout,
        use_dora=use_dora,
        use_rslora=use_rslora,
    )
    peft_model = get_peft_model(copy.deepcopy(base), config)
    with torch.no_grad():
        for name in ("proj", "out"):
            ours = ft_model.get_submodule(name)
            theirs = peft_model.base_model.model.get_submodule(name)
            theirs.lora_A["default"].weight.copy_(ours.lora_A.weight)
            theirs.lora_B["default"].weight.copy_(ours.lora_B.weight)
            if use_dora:
                theirs.lora_magnitude_vector["default"].weight.copy_(ours.lora_magnitude_vector)
    return ft_model, peft_model


def _run(model: nn.Module, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)  # the same dropout masks in both implementations
    y = model(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(11))
    (y * g).sum().backward()
    grads = {"x": x.grad}
    for name, p in model.named_parameters():
        if p.grad is not None:
            key = name.replace("base_model.model.", "").replace(".default", "")
            grads[key.replace("lora_magnitude_vector.weight", "lora_magnitude_vector")] = p.grad
    return y.detach(), grads


def _compare(ft_model: nn.Module, peft_model: nn.Module, train: bool) -> tuple[bool, bool]:
    ft_model.train(train)
    peft_model.train(train)
    x = torch.randn(3, 4, 37, generator=torch.Generator().manual_seed(5))
    y_ft, g_ft = _run(ft_model, x, seed=7)
    y_pf, g_pf = _run(peft_model, x, seed=7)
    assert set(g_ft) == set(g_pf), (sorted(g_ft), sorted(g_pf))
    outputs_equal = torch.allclose(y_ft, y_pf, **TOL)
    grads_equal = all(torch.allclose(g_ft[k], g_pf[k], **TOL) for k in g_ft)
    return outputs_equal, grads_equal


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
@pytest.mark.parametrize("use_rslora", [False, True], ids=["alpha_r", "rslora"])
@pytest.mark.parametrize(
    ("dropout", "train"), [(0.0, True), (0.3, True), (0.3, False)], ids=["nodrop", "drop", "eval"]
)
def test_outputs_and_gradients_equal_peft(
    use_dora: bool, use_rslora: bool, dropout: float, train: bool
) -> None:
    ft_model, peft_model = _pair(use_dora, use_rslora, dropout)
    assert _compare(ft_model, peft_model, train) == (True, True)


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_wrong_scaling_is_caught(use_dora: bool) -> None:
    # alpha / sqrt(r) where PEFT uses alpha / r: the comparison must fail.
    ft_model, peft_model = _pair(use_dora, use_rslora=False, dropout=0.0, ft_rslora=True)
    outputs_equal, _ = _compare(ft_model, peft_model, train=True)
    assert not outputs_equal


def test_dora_norm_not_detached_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # DoRA with gradients flowing through the weight norm: same outputs, different gradients.
    def attached_norm(weight: torch.Tensor, delta: torch.Tensor, scaling: float) -> torch.Tensor:
        return torch.linalg.norm(weight + scaling * delta, dim=1)

    monkeypatch.setattr(_dora, "weight_norm", attached_norm)
    ft_model, peft_model = _pair(use_dora=True, use_rslora=False, dropout=0.0)
    assert _compare(ft_model, peft_model, train=True) == (True, False)


def test_init_leaves_output_unchanged_and_shares_weight() -> None:
    torch.manual_seed(0)
    model = Block()
    x = torch.randn(5, 37)
    before = model(x)
    original = model.proj
    names = ft_peft.apply_lora(model, ["proj"], rank=3, use_dora=True)
    assert names == ["proj"]
    layer = model.proj
    assert isinstance(layer, LoRALinear)
    assert isinstance(layer, ft_peft.AdapterModule)  # the capability recipes rely on
    assert layer.weight is original.weight  # shared, not copied
    assert not layer.weight.requires_grad
    assert layer.lora_B.weight.abs().sum() == 0
    assert layer.lora_A.weight.abs().sum() > 0
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-6)
    # A Kaiming-uniform with a = sqrt(5): bound 1 / sqrt(d_in), like nn.Linear's own init.
    assert layer.lora_A.weight.abs().max() <= 1 / 37**0.5


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_merge_then_forward_equals_unmerged(use_dora: bool) -> None:
    torch.manual_seed(0)
    model = Block()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    ft_peft.apply_lora(model, ["proj", "out"], rank=4, alpha=8, use_dora=use_dora)
    randomize_adapters(model)
    x = torch.randn(6, 37)
    unmerged = model(x)
    for _, layer in ft_peft.lora_modules(model):
        layer.merge()
    torch.testing.assert_close(model(x), unmerged, **TOL)
    for _, layer in ft_peft.lora_modules(model):
        layer.unmerge()
    torch.testing.assert_close(model.proj.weight, original["proj.weight"], atol=1e-6, rtol=0)
    torch.testing.assert_close(model(x), unmerged, **TOL)
    # merge_adapters leaves plain linear layers and no adapter code.
    ft_peft.merge_adapters(model)
    assert type(model.proj) is nn.Linear
    assert type(model.out) is nn.Linear
    assert not any("lora" in k for k in model.state_dict())
    torch.testing.assert_close(model(x), unmerged, **TOL)


def test_merge_without_dora_rescale_is_caught() -> None:
    # Folding only W + sBA for a DoRA layer (forgetting the magnitude) must not match.
    torch.manual_seed(0)
    model = Block()
    ft_peft.apply_lora(model, ["proj"], rank=4, use_dora=True)
    randomize_adapters(model)
    x = torch.randn(6, 37)
    expected = model(x)
    layer = model.proj
    wrong = layer.weight + layer.scaling * layer.lora_B.weight @ layer.lora_A.weight
    hidden = torch.nn.functional.linear(x, wrong, layer.bias)
    assert not torch.allclose(model.out(torch.tanh(hidden)), expected, **TOL)


def test_disable_adapters_gives_base_model_and_restores() -> None:
    torch.manual_seed(0)
    base = Block()
    model = copy.deepcopy(base)
    ft_peft.apply_lora(model, ["proj", "out"], rank=4)
    randomize_adapters(model)
    x = torch.randn(6, 37)
    adapted = model(x)
    assert not torch.allclose(adapted, base(x), **TOL)
    model.proj.merge()  # a merged layer is unmerged for the duration and merged back
    with ft_peft.disable_adapters(model):
        torch.testing.assert_close(model(x), base(x), **TOL)
    assert model.proj.merged
    torch.testing.assert_close(model(x), adapted, **TOL)


def test_state_dict_keys_and_trainability() -> None:
    torch.manual_seed(0)
    model = Block()
    base_keys = set(model.state_dict())
    base_sd = {k: v.clone() for k, v in model.state_dict().items()}
    ft_peft.apply_lora(model, ["proj", "out"], rank=4, use_dora=True)
    keys = set(model.state_dict())
    assert base_keys <= keys
    assert keys - base_keys == {
        f"{m}.{s}"
        for m in ("proj", "out")
        for s in ("lora_A.weight", "lora_B.weight", "lora_magnitude_vector")
    }
    model.load_state_dict(base_sd, strict=False)  # a plain checkpoint loads with no renaming
    n = ft_peft.set_trainable(model)
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trainable == keys - base_keys
    assert n == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert set(ft_peft.adapter_state_dict(model)) == keys - base_keys
    model(torch.randn(2, 37)).sum().backward()
    assert all((p.grad is not None) == p.requires_grad for p in model.parameters())
