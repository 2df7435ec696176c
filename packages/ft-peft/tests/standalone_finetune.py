"""Fine-tune a plain MLP with ft-peft alone (run inside an environment holding only ft-peft and torch)."""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile

import torch
from torch import nn

import ft_peft

absent = ["ft_models", "ft_dist", "ft_data", "ft_recipes", "transformers", "peft", "bitsandbytes"]
present = [name for name in absent if importlib.util.find_spec(name) is not None]


def mlp() -> nn.Module:
    torch.manual_seed(0)  # the "pretrained" base: the same weights every time
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


model = mlp()
base = {k: v.clone() for k, v in model.state_dict().items()}
replaced = ft_peft.apply_lora(model, ["0", "2", "4"], rank=4, alpha=8)
ft_peft.set_trainable(model)
adapters_before = {k: v.clone() for k, v in ft_peft.adapter_state_dict(model).items()}
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
gen = torch.Generator().manual_seed(1)
x = torch.randn(256, 8, generator=gen)
y = torch.sin(x[:, :4] * 2) + x[:, 4:8] * x[:, 1:5]  # a task the random base does not solve
losses = []
for _ in range(100):
    loss = nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    losses.append(loss.item())

state = model.state_dict()
base_unchanged = all(torch.equal(state[k], v) for k, v in base.items())
adapters_changed = all(
    not torch.equal(v, adapters_before[k]) for k, v in ft_peft.adapter_state_dict(model).items()
)
with tempfile.TemporaryDirectory() as tmp:
    ft_peft.save_adapter(model, tmp, base_model_name_or_path="local/mlp", task_type=None)
    reloaded = mlp()
    ft_peft.load_adapter(reloaded, tmp)
    with torch.no_grad():
        round_trip = bool(torch.allclose(reloaded(x), model(x), atol=1e-6))

json.dump(
    {
        "present": present,
        "replaced": replaced,
        "losses": losses,
        "base_unchanged": base_unchanged,
        "adapters_changed": adapters_changed,
        "round_trip": round_trip,
        "modules": sorted(m for m in sys.modules if m.startswith("ft_")),
    },
    sys.stdout,
)
