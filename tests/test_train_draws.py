"""The training step's random draws and schedule: flips that really flip (and along the right axis),
dequantization inside the pixel's bin, the warm-up + cosine learning rate the optimiser really
uses, and amp (bf16 autocast) only where it is documented to act."""
import math

import numpy as np
import pytest
import torch

from sgc.nets import ScoreMLP
from sgc.sde import VPSDE, TimeSampler
from sgc.step import draw_batch as _draw
from sgc.train import TrainConfig, _lr_at, train_score_model

IMAGE = torch.arange(12, dtype=torch.float32).reshape(1, 1, 3, 4) / 11   # no symmetry along either axis


def _batch(**flags):
    cfg = TrainConfig(batch_size=200, dequantize=False, **flags)
    x0, y, t, noise = _draw(IMAGE, torch.tensor([1]), cfg, TimeSampler(VPSDE()), torch.Generator().manual_seed(0),
                            slice(None))
    assert x0.shape == (200, 1, 3, 4) and y.tolist() == [1] * 200 and t.shape == (200,) and noise.shape == x0.shape
    x = (x0 + 1) / 2
    kinds = []
    for row in x:
        match = [name for name, img in (("none", IMAGE[0]), ("h", IMAGE[0].flip(-1)), ("v", IMAGE[0].flip(-2)),
                                        ("hv", IMAGE[0].flip(-1).flip(-2))) if torch.allclose(row, img, atol=1e-6)]
        assert len(match) == 1, row
        kinds.append(match[0])
    return {k: kinds.count(k) for k in ("none", "h", "v", "hv")}


def test_no_flips_unless_asked():
    assert _batch() == {"none": 200, "h": 0, "v": 0, "hv": 0}


def test_hflip_flips_about_half_the_batch_left_right():
    counts = _batch(hflip=True)
    assert counts["v"] == counts["hv"] == 0 and 60 < counts["h"] < 140, counts


def test_vflip_flips_about_half_the_batch_upside_down():
    counts = _batch(vflip=True)
    assert counts["h"] == counts["hv"] == 0 and 60 < counts["v"] < 140, counts


def test_both_flips_are_independent():
    counts = _batch(hflip=True, vflip=True)
    assert all(20 < c < 90 for c in counts.values()), counts


def test_dequantized_pixels_stay_in_their_bin_and_ranks_slice_one_batch():
    levels = 12
    cfg = TrainConfig(batch_size=8, levels=levels)
    sampler = TimeSampler(VPSDE())
    x0, *_ = _draw(IMAGE, torch.tensor([0]), cfg, sampler, torch.Generator().manual_seed(1), slice(None))
    x = (x0 + 1) / 2
    k = torch.round(IMAGE * (levels - 1))
    assert ((x >= k / levels) & (x < (k + 1) / levels)).all()          # (k + u) / levels, u in [0, 1)
    assert (x * levels - k).std() > 0.2                                  # u is really random
    halves = [_draw(IMAGE, torch.tensor([0]), cfg, sampler, torch.Generator().manual_seed(1), part)
              for part in (slice(0, 4), slice(4, 8))]
    whole = _draw(IMAGE, torch.tensor([0]), cfg, sampler, torch.Generator().manual_seed(1), slice(None))
    for i in (0, 2, 3):
        assert torch.equal(torch.cat([halves[0][i], halves[1][i]]), whole[i])


def test_warmup_and_cosine_schedule_by_hand():
    cfg = TrainConfig(steps=10, warmup=2, lr=1.0, lr_schedule="cosine")
    want = [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * (s - 2) / 8)) for s in range(2, 11)]
    assert [_lr_at(s, cfg) for s in range(11)] == pytest.approx(want)
    assert _lr_at(6, cfg) == pytest.approx(0.5) and _lr_at(10, cfg) == pytest.approx(0.0, abs=1e-12)
    assert _lr_at(12, cfg) == pytest.approx(0.0, abs=1e-12)               # clamped after the end
    const = TrainConfig(steps=10, warmup=4, lr=2.0)
    assert [_lr_at(s, const) for s in range(6)] == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0, 2.0])
    assert _lr_at(0, TrainConfig(warmup=0, lr=3.0)) == 3.0
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="linear")


def _tiny():
    torch.manual_seed(0)
    return ScoreMLP(num_classes=2, image_size=4, hidden=16, blocks=1, emb_dim=8)


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(32, 1, 4, 4, generator=g).numpy(), np.arange(32) % 2


def test_the_optimiser_steps_with_the_scheduled_learning_rate(monkeypatch):
    used = []

    class Recording(torch.optim.AdamW):
        def step(self, *args, **kwargs):
            used.append(self.param_groups[0]["lr"])
            return super().step(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    cfg = dict(steps=6, batch_size=8, warmup=2, lr=0.01, lr_schedule="cosine", log_every=1)
    images, labels = _data()
    _, _, history = train_score_model(_tiny(), VPSDE(), images, labels, cfg, progress=False)
    want = [_lr_at(s, TrainConfig(**cfg)) for s in range(6)]
    assert used == pytest.approx(want) and [h["lr"] for h in history] == pytest.approx(want)
    assert want[1] == pytest.approx(0.01) and want[-1] < 0.002


def _forward_dtypes(model):
    seen = []
    layer = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    layer.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    return seen


def test_amp_is_off_on_the_cpu():
    # amp: "bf16 autocast when training on CUDA" -- on the CPU it must change nothing at all
    images, labels = _data()
    cfg = dict(steps=3, batch_size=8, warmup=1)
    runs = []
    for amp in (True, False):
        model = _tiny()
        seen = _forward_dtypes(model)
        runs.append(train_score_model(model, VPSDE(), images, labels, {**cfg, "amp": amp}, device="cpu",
                                      progress=False)[0])
        assert set(seen) == {torch.float32}
    for a, b in zip(runs[0].state_dict().values(), runs[1].state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="amp acts on CUDA only; no GPU here")
def test_amp_trains_in_bf16_on_cuda():
    images, labels = _data()
    cfg = dict(steps=3, batch_size=8, warmup=1)
    for amp, want in ((True, torch.bfloat16), (False, torch.float32)):
        model = _tiny()
        seen = _forward_dtypes(model)
        _, ema, hist = train_score_model(model, VPSDE(), images, labels, {**cfg, "amp": amp}, device="cuda",
                                         progress=False)
        assert set(seen) == {want} and np.isfinite(hist[-1]["loss"])
        assert all(p.dtype == torch.float32 for p in ema.parameters())   # weights stay float32
