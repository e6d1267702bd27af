"""The conditional latent UNet: shapes, zero init, config round trip, conditioning paths, masking, overfitting."""

import json
import os
import re
import typing

import pytest
import torch

from diffusion.nn import count_parameters
from diffusion.unet import PRESETS, UNET_DEFAULTS, PresetName, UNet, create
from mithridate.core import checkpoints

TINY = PRESETS["tiny"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """One torch thread for the module (`one_torch_thread`)."""
    yield


def _inputs(b: int = 3, side: int = 8, length: int = 6, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(b, 4, side, side, generator=g), "t": torch.rand(b, generator=g) * 999,
            "pooled": torch.randn(b, TINY["cond_dim"], generator=g),
            "tokens": torch.randn(b, length, TINY["token_dim"], generator=g)}


def _perturbed(model: UNet, seed: int = 0, scale: float = 0.05) -> UNet:
    """Add noise to every parameter so the zero-initialised layers pass signal (a "trained" model)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def _train(model: UNet, batch: dict, target: torch.Tensor, steps: int, lr: float = 3e-3) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(**batch), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("side, channels", [(8, (16, 32)), (16, (16, 32)), (16, (16, 32, 32))])
def test_output_shape(side, channels):
    levels = tuple(range(1, len(channels)))
    model = UNet(**{**TINY, "channels": channels, "attention_levels": levels, "cross_attention_levels": levels})
    out = model(**_inputs(side=side))
    assert out.shape == (3, 4, side, side) and out.dtype == torch.float32


def test_fresh_model_predicts_zero_and_perturbed_does_not():
    model = UNet(**TINY)
    assert model(**_inputs()).abs().max().item() < 1e-6
    assert _perturbed(model)(**_inputs()).abs().max().item() > 1e-3


def test_config_round_trip_rebuilds_identical_model():
    model = _perturbed(UNet(**TINY)).eval()
    config = json.loads(json.dumps(model.config))
    assert set(config) == set(TINY)
    clone = UNet(**config)
    clone.load_state_dict(model.state_dict())
    batch = _inputs()
    assert torch.equal(model(**batch), clone(**batch))


def test_defaults_come_from_the_constructor_and_keep_their_values():
    assert UNET_DEFAULTS == {"in_channels": 4, "channels": (64, 128), "layers_per_level": 2, "attention_levels": (1,),
                             "cross_attention_levels": (1,), "mid_attention": True, "cond_dim": 256,
                             "token_dim": 128, "heads": 4, "groups": 32, "dropout": 0.0, "time_dim": None}
    assert PRESETS["cpu"] == UNET_DEFAULTS and UNet(**PRESETS["cpu"]).config == UNet().config
    assert all(set(p) == set(UNET_DEFAULTS) for p in PRESETS.values())


def test_create_builds_a_named_preset_with_overrides():
    torch.manual_seed(3)
    made = create("tiny", in_channels=3, cross_attention_levels=())
    torch.manual_seed(3)
    direct = UNet(**{**TINY, "in_channels": 3, "cross_attention_levels": ()})
    assert made.config == direct.config and made.config["in_channels"] == 3
    assert checkpoints.digest(made.state_dict()) == checkpoints.digest(direct.state_dict())
    assert typing.get_args(PresetName) == tuple(PRESETS)  # the configs' type is the registry's names


def test_create_names_an_unknown_preset_or_argument():
    allowed = re.escape(", ".join(PRESETS))
    with pytest.raises(ValueError, match=rf"^name='huge': not a UNet preset; allowed names are {allowed}$"):
        create("huge")
    with pytest.raises(ValueError, match=r"^chanels=\(8,\): not a UNet argument; allowed are in_channels, channels"):
        create("tiny", chanels=(8,))
    with pytest.raises(ValueError, match=r"^heads=3: must divide"):
        create("tiny", heads=3)


def test_cpu_preset_parameter_count():
    assert 3_000_000 <= count_parameters(UNet(**PRESETS["cpu"]), trainable_only=True) <= 6_000_000
    assert 20_000_000 <= count_parameters(UNet(**PRESETS["gpu"]), trainable_only=True) <= 40_000_000


def test_scalar_and_int_timesteps():
    model = _perturbed(UNet(**TINY))
    batch = _inputs()
    a = model(**{**batch, "t": torch.full((3,), 250.0)})
    assert torch.allclose(a, model(**{**batch, "t": torch.tensor(250.0)}))
    assert torch.allclose(a, model(**{**batch, "t": torch.full((3,), 250)}))
    assert not torch.allclose(a, model(**{**batch, "t": torch.full((3,), 250.5)}))  # fractional t is embedded


def test_conditioning_receives_gradients_and_changes_output():
    torch.manual_seed(0)
    model = UNet(**TINY)
    batch = _inputs(b=4)
    _train(model, batch, torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(5)), steps=3)
    loss = model(**batch).pow(2).mean()
    model.zero_grad()
    loss.backward()
    cross = [m for m in model.modules() if getattr(m, "cross_attn", None) is not None]
    assert cross
    for p in (model.cond_proj.weight, cross[0].cross_attn.q.weight, cross[0].cross_attn.kv.weight):
        assert p.grad is not None and p.grad.abs().max().item() > 0
    with torch.no_grad():
        out = model(**batch)
        other = _inputs(b=4, seed=9)
        assert (model(**{**batch, "pooled": other["pooled"]}) - out).abs().max().item() > 1e-4
        assert (model(**{**batch, "tokens": other["tokens"]}) - out).abs().max().item() > 1e-4
        assert (model(**{**batch, "tokens": None}) - out).abs().max().item() > 1e-4


def test_masked_padding_is_ignored():
    model = _perturbed(UNet(**TINY), scale=0.1)
    batch = _inputs(length=6)
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3, [True] + [False] * 5])
    zeros, garbage = batch["tokens"].clone(), batch["tokens"].clone()
    zeros[~mask] = 0
    garbage[~mask] = 100 * torch.randn(int((~mask).sum()), TINY["token_dim"])
    a = model(**{**batch, "tokens": zeros, "token_mask": mask})
    b = model(**{**batch, "tokens": garbage, "token_mask": mask})
    assert torch.allclose(a, b, atol=1e-5)
    unmasked = model(**{**batch, "tokens": garbage})
    assert (unmasked[1:] - b[1:]).abs().max().item() > 1e-3  # the garbage does matter without the mask
    assert torch.allclose(unmasked[0], b[0], atol=1e-5)  # row 0 has no padding


def test_all_false_mask_is_finite_and_ignores_tokens():
    model = _perturbed(UNet(**TINY), scale=0.1)
    batch = _inputs()
    mask = torch.zeros(3, 6, dtype=torch.bool)
    a = model(**{**batch, "token_mask": mask})
    assert torch.isfinite(a).all()
    b = model(**{**batch, "tokens": torch.randn(3, 6, TINY["token_dim"]), "token_mask": mask})
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("change, field", [
    ({"channels": (16, 20)}, "groups"),
    ({"attention_levels": (2,)}, "attention_levels"),
    ({"cross_attention_levels": (-1,)}, "cross_attention_levels"),
    ({"heads": 3}, "heads"),
    ({"layers_per_level": 0}, "layers_per_level"),
    ({"channels": ()}, "channels"),
    ({"dropout": 1.5}, "dropout"),
    ({"time_dim": 0}, "time_dim"),
])
def test_bad_config_names_the_field(change, field):
    with pytest.raises(ValueError, match=rf"^{field}="):
        UNet(**{**TINY, **change})


def test_latent_side_must_fit_the_levels():
    with pytest.raises(ValueError, match="divisible by"):
        UNet(**TINY)(**_inputs(side=7))


def test_tiny_model_overfits_a_fixed_batch():
    torch.manual_seed(0)
    model = UNet(**TINY)
    batch = _inputs(b=8)
    target = torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    losses = _train(model, batch, target, steps=50, lr=5e-3)
    assert losses[-1] < 0.5 * losses[0], losses[::10]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("RUN_SLOW") != "1", reason="torch.compile takes minutes on 2 cores; RUN_SLOW=1")
def test_compiled_matches_eager():
    model = _perturbed(UNet(**TINY))
    batch = _inputs()
    batch["token_mask"] = torch.tensor([[True] * 6, [True] * 2 + [False] * 4, [False] * 6])
    out = torch.compile(model)(**batch)
    out.sum().backward()
    assert torch.allclose(out, model(**batch), atol=1e-4)
