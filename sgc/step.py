"""One training step of denoising score matching: its random draws and its update, eager or graphed.

A step (``TrainStep``): gradients set to None, forward under bf16 autocast (CUDA), the DSM loss
(``dsm_loss``), backward, gradient clipping, AdamW, the EMA of the weights (``ema_update``), and
the loss added to a running sum on the device. Nothing in a step reads a value back to the
host: the training loop reads the loss sum, and checks it for NaN, every ``log_every`` steps.

The batch (``draw_batch``) is drawn on the training device from a seeded generator on that
device: image indices, dequantization noise, flips, diffusion times, Gaussian noise, in that
order. Every rank of a DDP run draws the same global batch and keeps its own rows.

Engines (``TrainConfig.compile``, resolved by ``resolve_engine``):

* ``"eager"``: the step as written, one kernel launch at a time (fused AdamW on CUDA).
* ``"graph"``: the whole step except the draws captured as ONE CUDA graph over static input
  buffers and replayed every step (``sgc.graphs.capture``). The optimizer is a capturable fused
  AdamW whose learning rate is a device tensor, the EMA weight is one too; both are refilled
  before each replay. The draws stay eager, outside the graph, so the generator's state is
  exactly what a checkpoint saves (a dozen small launches, no host synchronisation). The
  capture's warm-up steps change the weights: the state (weights, EMA, optimizer moments, loss
  sum) is copied before and restored in place after, so a graphed run equals an eager one.
  One CUDA device only; without CUDA the same static-buffer step runs uncaptured (this is what
  the CPU tests check), and a failed capture falls back to that with a message.
* ``"default"``, ``"reduce-overhead"``, ``"max-autotune"``: the network through torch.compile
  in that mode (on CUDA the last two replay CUDA graphs of forward and backward); optimizer and
  EMA eager.
* ``"auto"`` (the default): ``"graph"`` on one CUDA device, ``"eager"`` otherwise (CPU, DDP).
"""
from __future__ import annotations

import sys

import torch

from . import graphs
from .likelihood import dequantize

__all__ = ["ENGINES", "resolve_engine", "place_data", "draw_batch", "dsm_loss", "ema_update", "TrainStep"]

ENGINES = ("auto", "eager", "graph", "default", "reduce-overhead", "max-autotune")


def _say(msg: str) -> None:
    print(f"sgc: {msg}", file=sys.stderr, flush=True)


def resolve_engine(name: str, device: torch.device, world: int) -> str:
    """The engine that runs: ``name`` with "auto" decided for ``device`` and ``world`` processes."""
    if name not in ENGINES:
        raise ValueError(f"compile must be one of {ENGINES}, got {name!r}")
    if name == "auto":
        return "graph" if device.type == "cuda" and world == 1 else "eager"
    if name == "graph" and world > 1:
        raise ValueError("compile='graph' captures the step of one process; under torchrun (DDP) use "
                         "compile=eager (or a torch.compile mode such as compile=default)")
    return name


def place_data(images: torch.Tensor, labels: torch.Tensor, device: torch.device):
    """(images, labels) where the draws index them: on ``device`` when the images take at most a
    quarter of its free memory (always on the CPU), else left on the host, where each step's
    rows are gathered after one small device-to-host copy of the indices."""
    if device.type != "cuda":
        return images.to(device), labels.to(device)
    free, _ = torch.cuda.mem_get_info(device)
    if images.numel() * images.element_size() <= free // 4:
        return images.to(device), labels.to(device)
    _say(f"training images ({images.numel() * images.element_size() / 2**30:.1f} GiB) stay on the host: "
         f"each step gathers its batch there")
    return images, labels


def draw_batch(images, labels, cfg, sampler, gen: torch.Generator, part: slice):
    """One step's random draws for the GLOBAL batch from ``gen``, cut to this rank's ``part``.

    images (N, C, H, W) in [0, 1], labels (N,) (see ``place_data``); ``cfg`` a TrainConfig;
    ``sampler`` a TimeSampler. Everything is drawn on ``gen.device``. Returns (x0 in model space
    [-1, 1], y, t, noise) on that device for the rows of ``part``.
    """
    dev = gen.device
    b = cfg.batch_size
    shape = (b, *images.shape[1:])
    idx = torch.randint(0, images.shape[0], (b,), generator=gen, device=dev)
    u = torch.rand(shape, generator=gen, device=dev) if cfg.dequantize else None
    hflip = torch.rand(b, generator=gen, device=dev) < 0.5 if cfg.hflip else None
    vflip = torch.rand(b, generator=gen, device=dev) < 0.5 if cfg.vflip else None
    t, _ = sampler.sample(b, generator=gen)
    noise = torch.randn(shape, generator=gen, device=dev)
    idx = idx[part]
    x = images[idx.to(images.device)].to(dev, non_blocking=True)
    y = labels[idx.to(labels.device)].to(dev, non_blocking=True)
    if u is not None:
        x = dequantize(x, cfg.levels, u[part])
    if hflip is not None:
        x = torch.where(hflip[part][:, None, None, None], x.flip(-1), x)
    if vflip is not None:
        x = torch.where(vflip[part][:, None, None, None], x.flip(-2), x)
    return 2 * x - 1, y, t[part], noise[part]


def dsm_loss(net, sde, x0, y, t, noise, amp: bool = False) -> torch.Tensor:
    """Mean squared noise-prediction error per dimension (the DSM loss up to a constant), float32.

    x0 (B, C, H, W) model space, y (B,) labels, t (B,) times, noise like x0; ``amp``: the network
    under bf16 autocast (its cast cache off, as CUDA graph capture requires).
    """
    with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=amp, cache_enabled=False):
        eps_hat = net(sde.perturb(x0, t, noise), t, y)
    return (eps_hat.float() - noise).pow(2).mean()


@torch.no_grad()
def ema_update(ema_params, params, weight: torch.Tensor, buffers=()) -> None:
    """ema += weight * (param - ema) for all parameters in three foreach kernels; ``weight`` a 0-d
    tensor on their device (= 1 - decay), so a captured graph reads each step's value. (This is a
    lerp; torch._foreach_lerp_ takes its weight as a Python scalar, which a graph would freeze, or
    as one tensor per parameter.)

    Not torch.optim.swa_utils.AveragedModel + get_ema_multi_avg_fn: its update reads its counter
    back to the host (``n_averaged == 0``, not capturable), its decay is a fixed Python float
    (sgc warms it up as min(decay, (1 + step) / (10 + step))) and its state_dict prefixes every
    key with "module.", so EMA checkpoints would no longer load as a plain model.
    """
    diff = torch._foreach_sub(params, ema_params)
    torch._foreach_mul_(diff, weight)
    torch._foreach_add_(ema_params, diff)
    for be, bm in buffers:
        be.copy_(bm)


class TrainStep:
    """The optimizer, EMA and loss sum of a training run, and one step of it per call."""

    def __init__(self,
                 model,           # the network being trained (its parameters are optimised)
                 ema,             # a copy of it holding the EMA of the weights
                 sde,             # the forward SDE (sgc.sde)
                 cfg,             # TrainConfig: lr, weight_decay, grad_clip, amp
                 device,          # torch.device of model and batches
                 engine: str,     # a resolved engine: "eager", "graph" or a torch.compile mode
                 net=None,        # what the forward calls (DDP wrapper); default the model
                 ):
        self.model, self.ema, self.sde, self.cfg = model, ema, sde, cfg
        self.device, self.engine = torch.device(device), engine
        net = model if net is None else net
        if engine in ("default", "reduce-overhead", "max-autotune"):
            from .nets import compile_module
            net = compile_module(net, engine)
        self.net = net
        self.params = list(model.parameters())
        self.ema_params = list(ema.parameters())
        self.buffers = list(zip(ema.buffers(), model.buffers()))
        cuda = self.device.type == "cuda"
        if engine == "graph":  # learning rate read from device memory by every replay
            self.lr = torch.tensor(float(cfg.lr), dtype=torch.float32, device=self.device)
            self.opt = torch.optim.AdamW(self.params, lr=self.lr, weight_decay=cfg.weight_decay, fused=True,
                                         capturable=cuda)
        else:
            self.lr = None
            self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                         fused=True if cuda else None)
        self.ema_weight = torch.zeros((), device=self.device)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)  # since the last log row
        self.amp = bool(cfg.amp) and cuda
        self.static, self.graph = None, None

    def set_schedule(self, lr: float, ema_decay: float) -> None:
        """The learning rate of the next step and the EMA decay applied after it."""
        if self.lr is not None:
            self.lr.fill_(lr)
        else:
            for group in self.opt.param_groups:
                group["lr"] = lr
        self.ema_weight.fill_(1.0 - ema_decay)

    def _body(self, x0, y, t, noise) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss = dsm_loss(self.net, self.sde, x0, y, t, noise, self.amp)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.opt.step()
        ema_update(self.ema_params, self.params, self.ema_weight, self.buffers)
        self.loss_sum += loss.detach()

    def __call__(self, x0, y, t, noise) -> None:
        """One step on the batch (x0, y, t, noise) as returned by ``draw_batch``."""
        if self.engine != "graph":
            self._body(x0, y, t, noise)
            return
        if self.static is None:
            self.capture((x0, y, t, noise))
        for s, v in zip(self.static, (x0, y, t, noise)):
            s.copy_(v)
        if self.graph is None:
            self._body(*self.static)
        else:
            self.graph.replay()

    @property
    def graphed(self) -> bool:
        """True when steps replay a captured CUDA graph."""
        return self.graph is not None

    def capture(self, batch, warmup: int = 3) -> None:
        """Build the static buffers from ``batch`` and capture the step (CUDA), leaving the state
        as it was before (the warm-up steps are undone)."""
        self.static = tuple(v.detach().clone() for v in batch)
        saved = self._snapshot()
        try:
            self.graph, _ = graphs.capture(lambda: self._body(*self.static), self.device, warmup)
        except Exception as err:  # noqa: BLE001 - any capture failure: train uncaptured, say why
            self.graph = None
            _say(f"CUDA graph capture of the training step failed ({type(err).__name__}: "
                 f"{str(err).splitlines()[0] if str(err) else ''}); training without the graph")
        finally:
            self._restore(saved)

    @torch.no_grad()
    def _snapshot(self) -> dict:
        opt = {p: {k: v.clone() for k, v in st.items() if torch.is_tensor(v)} for p, st in self.opt.state.items()}
        return {"model": [v.clone() for v in self.model.state_dict().values()],
                "ema": [v.clone() for v in self.ema.state_dict().values()],
                "opt": opt, "loss_sum": self.loss_sum.clone(), "cpu_rng": torch.get_rng_state()}

    @torch.no_grad()
    def _restore(self, saved: dict) -> None:
        for module, values in ((self.model, saved["model"]), (self.ema, saved["ema"])):
            for v, s in zip(module.state_dict().values(), values):
                v.copy_(s)
        for p, st in self.opt.state.items():  # state created by the warm-up is AdamW's zero state
            before = saved["opt"].get(p)
            for k, v in st.items():
                if torch.is_tensor(v) and before is not None:
                    v.copy_(before[k])
                elif torch.is_tensor(v):
                    v.zero_()
        self.loss_sum.copy_(saved["loss_sum"])
        torch.set_rng_state(saved["cpu_rng"])  # dropout on the CPU

    def optimizer_state(self) -> dict:
        """The optimizer's state_dict with plain-float learning rates (a checkpoint any engine reads)."""
        sd = self.opt.state_dict()
        for group in sd["param_groups"]:
            if torch.is_tensor(group["lr"]):
                group["lr"] = float(group["lr"])
        return sd

    def load_optimizer_state(self, saved: dict) -> None:
        """Load a checkpoint's optimizer state, whatever engine wrote it: the saved moments and
        hyper-parameters, this engine's implementation flags and learning-rate object."""
        own = ("lr", "foreach", "fused", "capturable", "differentiable")
        groups = [{**s, **{k: c[k] for k in own if k in c}} for s, c in zip(saved["param_groups"], self.opt.param_groups)]
        self.opt.load_state_dict({"state": saved["state"], "param_groups": groups})
        if self.lr is not None:  # load_state_dict deep-copies the groups: point them at our tensor again
            for group in self.opt.param_groups:
                group["lr"] = self.lr
