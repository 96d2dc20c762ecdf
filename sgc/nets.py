"""Class-conditional noise-prediction networks eps_hat(x, t, y).

Both networks predict the noise eps of x_t = alpha(t) x_0 + sigma(t) eps; the score is
recovered as s(x, t, y) = -eps_hat / sigma(t) (see ``sgc.likelihood.score_fn``).
The time t in [0, 1] and the class label y in {0..num_classes-1} enter through one
embedding (sinusoidal time features + a learned class embedding) that modulates every block
(FiLM: scale and shift). Normalisation is per sample (GroupNorm / LayerNorm), never BatchNorm,
so that the images of a batch do not interact: a likelihood must not depend on its batch.

* ``ScoreUNet``: the image model, 1 or 3 channels, any side from 8 to 384.
* ``ScoreMLP``: a residual MLP on the flattened image, for tiny images on a CPU (8x8 digits).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

__all__ = ["ScoreUNet", "ScoreMLP", "build_model", "count_parameters", "check_labels", "compiled",
           "compile_module", "COMPILE_MODES"]


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal features of 1000 t, shape (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class Conditioning(nn.Module):
    """Time + class embedding: (t (N,), y (N,)) -> (N, dim)."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.dim = dim
        self.time = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.label = nn.Embedding(num_classes, dim)
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t, y):
        return self.out(self.time(timestep_features(t, self.dim)) + self.label(y))


def check_labels(y, num_classes: int, name: str = "class labels") -> None:
    """Raise ValueError unless every label is an integer in [0, num_classes - 1].

    Called once on the data by the entry points (training, likelihoods, bounds, sampling),
    not in ``forward``: reading the range back is a host synchronisation, which a forward
    pass inside a CUDA graph must not do (and which would cost one per network call).
    """
    y = torch.as_tensor(y)
    if y.is_floating_point() or y.is_complex():
        raise ValueError(f"{name} must be integers, got dtype {y.dtype}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"{name} must be in [0, {num_classes - 1}]; got range [{int(y.min())}, {int(y.max())}]")


def _check_inputs(model, x, t, y):
    """t and y as (N,) tensors on x's device (scalars are expanded); shapes checked, values not
    (see ``check_labels``)."""
    n = x.shape[0]
    t = torch.as_tensor(t, device=x.device, dtype=torch.float32)
    t = t.expand(n) if t.dim() == 0 else t
    y = torch.as_tensor(y, device=x.device, dtype=torch.long)
    y = y.expand(n) if y.dim() == 0 else y
    if t.shape != (n,) or y.shape != (n,):
        raise ValueError(f"t and y must be scalars or shape ({n},); got {tuple(t.shape)} and {tuple(y.shape)}")
    return t, y


def _groups(channels: int, max_groups: int = 32) -> int:
    return math.gcd(channels, max_groups)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(_groups(cin), cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(emb, 2 * cout)
        self.norm2, self.conv2 = nn.GroupNorm(_groups(cout), cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class ScoreUNet(nn.Module):
    """Class-conditional UNet predicting the noise. x: (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self,
                 num_classes: int,                 # number of classes y can take
                 in_channels: int = 1,             # 1 (grey) or 3 (RGB / replicated grey)
                 image_size: int = 32,             # side of the square input, 8 to 384
                 channels: int = 32,               # width of the first level
                 channel_mults: tuple = (1, 2, 2), # width multiplier per resolution level
                 blocks_per_level: int = 1,        # residual blocks per level (down path)
                 emb_dim: int = 128,               # size of the time + class embedding
                 dropout: float = 0.0,             # dropout inside residual blocks
                 checkpointing: bool = False,      # recompute ResBlocks in backward (less memory, ~30% slower)
                 ):
        super().__init__()
        if not 8 <= image_size <= 384:
            raise ValueError(f"image_size must be between 8 and 384, got {image_size}")
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        self.config = dict(arch="unet", num_classes=num_classes, in_channels=in_channels,
                           image_size=image_size, channels=channels, channel_mults=list(channel_mults),
                           blocks_per_level=blocks_per_level, emb_dim=emb_dim, dropout=dropout,
                           checkpointing=bool(checkpointing))
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        self.checkpointing = bool(checkpointing)
        self.multiple = 2 ** (len(channel_mults) - 1)
        self.cond = Conditioning(num_classes, emb_dim)
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1)
        widths = [channels * m for m in channel_mults]
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips, c = [channels], channels
        for i, w in enumerate(widths):
            level = nn.ModuleList()
            for _ in range(blocks_per_level):
                level.append(ResBlock(c, w, emb_dim, dropout))
                c = w
                skips.append(c)
            self.down.append(level)
            last = i == len(widths) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(c, c, 3, stride=2, padding=1))
            if not last:
                skips.append(c)
        self.mid = nn.ModuleList([ResBlock(c, c, emb_dim, dropout), ResBlock(c, c, emb_dim, dropout)])
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            level = nn.ModuleList()
            for _ in range(blocks_per_level + 1):
                level.append(ResBlock(c + skips.pop(), w, emb_dim, dropout))
                c = w
            self.up.append(level)
            self.upsample.append(nn.Conv2d(c, c, 3, padding=1) if i > 0 else nn.Identity())
        self.head = nn.Sequential(nn.GroupNorm(_groups(c), c), nn.SiLU(), nn.Conv2d(c, in_channels, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def _block(self, block, h, emb):
        # gradient checkpointing only while training with gradients (not for likelihood VJPs)
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(block, h, emb, use_reentrant=False)
        return block(h, emb)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t, y = _check_inputs(self, x, t, y)
        emb = self.cond(t, y)
        h0, w0 = x.shape[-2:]
        ph, pw = (-h0) % self.multiple, (-w0) % self.multiple
        h = F.pad(x, (0, pw, 0, ph)) if ph or pw else x
        h = self.stem(h)
        hs = [h]
        for level, down in zip(self.down, self.downsample):
            for block in level:
                h = self._block(block, h, emb)
                hs.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                hs.append(h)
        for block in self.mid:
            h = self._block(block, h, emb)
        for level, up in zip(self.up, self.upsample):
            for block in level:
                h = self._block(block, torch.cat([h, hs.pop()], dim=1), emb)
            if not isinstance(up, nn.Identity):
                h = up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.head(h)[..., :h0, :w0]


class ScoreMLP(nn.Module):
    """Residual MLP on the flattened image, FiLM-conditioned. x: (N, C, H, W) -> same shape."""

    def __init__(self,
                 num_classes: int,               # number of classes y can take
                 in_channels: int = 1,           # image channels
                 image_size: int = 8,            # side of the square input
                 hidden: int = 512,              # width of the residual stream
                 blocks: int = 3,                # number of residual blocks
                 expansion: int = 2,             # inner width of a block = expansion * hidden
                 emb_dim: int = 128,             # size of the time + class embedding
                 dropout: float = 0.0,           # dropout inside residual blocks
                 ):
        super().__init__()
        self.config = dict(arch="mlp", num_classes=num_classes, in_channels=in_channels,
                           image_size=image_size, hidden=hidden, blocks=blocks, expansion=expansion, emb_dim=emb_dim,
                           dropout=dropout)
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        d = in_channels * image_size * image_size
        self.cond = Conditioning(num_classes, emb_dim)
        self.inp = nn.Linear(d, hidden)
        self.norms = nn.ModuleList([nn.LayerNorm(hidden) for _ in range(blocks)])
        self.films = nn.ModuleList([nn.Linear(emb_dim, 2 * hidden) for _ in range(blocks)])
        inner = expansion * hidden
        self.ffs = nn.ModuleList([nn.Sequential(nn.SiLU(), nn.Linear(hidden, inner), nn.SiLU(),
                                                nn.Dropout(dropout), nn.Linear(inner, hidden))
                                  for _ in range(blocks)])
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, d))
        for ff in self.ffs:
            nn.init.zeros_(ff[-1].weight)
            nn.init.zeros_(ff[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t, y = _check_inputs(self, x, t, y)
        emb = self.cond(t, y)
        h = self.inp(x.flatten(1))
        for norm, film, ff in zip(self.norms, self.films, self.ffs):
            scale, shift = film(emb).chunk(2, dim=1)
            h = h + ff(norm(h) * (1 + scale) + shift)
        return self.out(h).view_as(x)


def build_model(config: dict) -> nn.Module:
    """Rebuild a network from its ``model.config`` (as stored next to a checkpoint)."""
    config = dict(config)
    arch = config.pop("arch", None)
    classes = {"unet": ScoreUNet, "mlp": ScoreMLP}
    if arch not in classes:
        raise ValueError(f"model config has arch={arch!r}; expected one of {sorted(classes)}")
    if "channel_mults" in config:
        config["channel_mults"] = tuple(config["channel_mults"])
    try:
        return classes[arch](**config)
    except TypeError as err:
        raise ValueError(f"model config does not fit {classes[arch].__name__}: {err}") from None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- torch.compile
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune")
# (id(model), mode) -> _Compiled; each entry holds its model, so an id is never reused while cached
_COMPILED: dict[tuple[int, str], "_Compiled"] = {}


class _Compiled:
    """Callable wrapper of ``torch.compile(model, mode)`` (solves, and training's "compile" engines).

    "reduce-overhead" and "max-autotune" replay CUDA graphs on CUDA: each call then starts a
    new graph step and returns a copy of the output, because the next replay overwrites the
    graph's output memory while a solver still holds earlier stages (dopri5 keeps seven).
    On the CPU every mode is plain Inductor code generation (needs a C++ compiler).
    """

    def __init__(self, model: nn.Module, mode: str):
        self.model, self.mode = model, mode
        self.fn = torch.compile(model, mode=mode)
        self.graphs = mode in ("reduce-overhead", "max-autotune")

    def __call__(self, x, t, y):
        if self.graphs and x.is_cuda:
            torch.compiler.cudagraph_mark_step_begin()
            return self.fn(x, t, y).clone()
        return self.fn(x, t, y)


def compiled(model: nn.Module, mode: str | None):
    """``model`` itself (mode None) or its compiled forward, built once per model and mode.

    Compilation takes seconds to minutes the first time a shape is seen, so it pays off on
    long solves (many images, fixed-step grids, many Monte-Carlo draws). The cache keeps a
    compiled model for the life of the process.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {COMPILE_MODES}, got {mode!r}")
    if mode is None:
        return model
    key = (id(model), mode)
    if key not in _COMPILED:
        _COMPILED[key] = _Compiled(model, mode)
    return _COMPILED[key]


def compile_module(module: nn.Module, mode: str):
    """A fresh, uncached compiled wrapper of ``module`` (e.g. a DDP-wrapped network being
    trained): unlike ``compiled`` it is not kept alive for the life of the process."""
    if mode not in COMPILE_MODES or mode is None:
        raise ValueError(f"mode must be one of {COMPILE_MODES[1:]}, got {mode!r}")
    return _Compiled(module, mode)
