"""The networks' shared pieces: sinusoidal timestep embedding, parameter count."""

import torch
from torch import nn

from diffusion.nn import count_parameters, timestep_embedding


def test_timestep_embedding_is_cos_then_sin_and_pads_odd_dims():
    e = timestep_embedding(torch.tensor([0.0, 5.0]), 9)
    assert e.shape == (2, 9)
    assert torch.equal(e[0], torch.tensor([1.0] * 4 + [0.0] * 5))  # t = 0: cos 1, sin 0, pad 0
    assert e[1, 0] == torch.cos(torch.tensor(5.0)) and e[1, 4] == torch.sin(torch.tensor(5.0)) and e[1, 8] == 0


def test_count_parameters_all_or_trainable_only():
    m = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 3))  # 25 + 18
    m[0].requires_grad_(False)
    assert count_parameters(m) == 43
    assert count_parameters(m, trainable_only=True) == 18
