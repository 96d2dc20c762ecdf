"""Log-likelihoods log p(x | y) with the probability-flow ODE (torchdiffeq).

For a trained noise-prediction network eps_hat(x, t, y) under a forward SDE, the
probability-flow ODE dz/dt = f(z, t) - 1/2 g(t)^2 s(z, t, y), with s = -eps_hat / sigma(t),
moves data (t = eps) to the prior (t = T) deterministically. By the instantaneous change
of variables, log p_eps(z) = log p_T(z_T) + integral_eps^T div(drift)(z_t, t) dt. We integrate
the state and the divergence integral together, on the model's device, in one solve for
all images x classes of a batch.

Units: images enter in [0, 1] (N, C, H, W) and the model sees z = 2x - 1. ``LikelihoodResult``
reports log-densities of x on [0, 1]^D in nats and bits/dim of the discrete data with
``levels`` intensity levels: bpd = -log p(x) / (D ln 2) + log2(levels) (an upper bound on the
discrete code length when x is uniformly dequantized, x = (k + u) / levels).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import torch
from torchdiffeq import odeint

from . import graphs
from .errors import DataError, SolverError
from .nets import COMPILE_MODES, check_labels, compiled
from .sde import SDE, _bcast

__all__ = ["LikelihoodResult", "SolverError", "ode_drift", "divergence", "evaluators", "log_likelihood",
           "class_log_likelihoods", "validate_images", "dequantize", "to_bits_per_dim"]

ADAPTIVE = {"dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun"}
FIXED = {"euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams"}
EXPONENTIAL = {"dpm1", "dpm2"}  # sgc.solvers.dpm_solve, orders 1 and 2
PRECISIONS = (None, "tf32", "bf16")
ENGINES = COMPILE_MODES + ("graph",)  # values of ``compile``: torch.compile modes, or "graph" (sgc.graphs)


@dataclass
class LikelihoodResult:
    logp: torch.Tensor   # log p(x | y) in nats, density of x on [0, 1]^D; (N,) or (N, K)
    bpd: torch.Tensor    # bits/dim of the discrete data, same shape as logp
    nfe: int             # function evaluations of the solve (each = 1 forward + n_probes VJPs)
    seconds: float       # wall-clock time of the solve
    prior_logp: torch.Tensor  # log p_T(z_T) in nats, model space, same shape as logp
    delta_logp: torch.Tensor  # integral of the divergence, same shape as logp


def validate_images(x: torch.Tensor, model=None, name: str = "images") -> None:
    """Raise DataError (a ValueError) naming the problem when x is not a batch of images in [0, 1]."""
    if not torch.is_tensor(x) or x.dim() != 4:
        raise DataError(f"{name} must be a 4-d tensor (N, C, H, W); got "
                        f"{tuple(x.shape) if hasattr(x, 'shape') else type(x).__name__}")
    if x.shape[0] == 0 or x[0].numel() == 0:
        raise DataError(f"{name} are empty (shape {tuple(x.shape)}): nothing to score. Check the split, "
                        f"the limit and the loader's filters")
    if model is not None:
        want = (model.in_channels, model.image_size, model.image_size)
        if tuple(x.shape[1:]) != want:
            raise ValueError(f"{name} have shape (C, H, W) = {tuple(x.shape[1:])} but the model was "
                             f"built for {want}; resize the data or load the matching checkpoint")
    bad = (~torch.isfinite(x)).flatten(1).any(1)
    if bad.any():
        idx = bad.nonzero().flatten().tolist()
        raise ValueError(f"{name} contain NaN or inf at indices {idx[:10]}{' ...' if len(idx) > 10 else ''}")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"{name} must have values in [0, 1]; got range [{lo:.4g}, {hi:.4g}] "
                         f"(divide 8-bit data by 255, or use the dataset loaders)")


def dequantize(x: torch.Tensor, levels: int, u: torch.Tensor) -> torch.Tensor:
    """Uniform dequantization: x = k / (levels - 1) in [0, 1] -> (k + u) / levels, with the
    noise u in [0, 1) of x's shape given by the caller (drawn where and how it needs)."""
    return (torch.round(x * (levels - 1)) + u.to(x.device, x.dtype)) / levels


def to_bits_per_dim(logp01: torch.Tensor, dims: int, levels: int) -> torch.Tensor:
    """bits/dim of discrete data with ``levels`` values from a density on [0, 1]^D in nats."""
    return -logp01 / (dims * math.log(2)) + math.log2(levels)


def ode_drift(model, sde: SDE, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Probability-flow drift f(z, t) - 1/2 g(t)^2 s(z, t, y) with s = -eps_hat / sigma(t)."""
    t_vec = t.expand(z.shape[0]) if t.dim() == 0 else t
    _, sigma = sde.marginal(t_vec)
    g2 = sde.diffusion(t_vec) ** 2
    eps = model(z, t_vec, y)
    return sde.drift(z, t_vec) + 0.5 * _bcast(g2 / sigma, z) * eps


def divergence(fn, z: torch.Tensor, probes: torch.Tensor | None):
    """(fn(z), div fn(z)) with one forward pass.

    probes None: exact divergence, one VJP per dimension (small images only).
    probes (P, N, ...): Hutchinson-Skilling estimate, mean over P probes of v^T (df/dz) v;
    several probes share the forward pass and go through one batched (vmapped) VJP.
    """
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        out = fn(z)
        if probes is None:
            flat = out.flatten(1)
            div = torch.zeros(z.shape[0], device=z.device, dtype=out.dtype)
            for d in range(flat.shape[1]):
                (g,) = torch.autograd.grad(flat[:, d].sum(), z, retain_graph=True)
                div = div + g.flatten(1)[:, d]
        elif len(probes) > 1 and _BATCHED_VJP[0]:
            try:
                (g,) = torch.autograd.grad(out, z, probes, is_grads_batched=True)
                div = (g * probes).flatten(2).sum(2).mean(0)
            except RuntimeError:  # an op without a batching rule: fall back to a loop
                _BATCHED_VJP[0] = False
                return divergence(fn, z, probes)
        else:
            div = 0.0
            for p, v in enumerate(probes):
                (g,) = torch.autograd.grad(out, z, v, retain_graph=p < len(probes) - 1)
                div = div + (g * v).flatten(1).sum(1)
            div = div / len(probes)
    return out.detach(), div.detach()


_BATCHED_VJP = [True]


class _precision:
    """Context: None (float32), "tf32" (TensorFloat-32 matmuls/convs on CUDA) or "bf16" (autocast)."""

    def __init__(self, device: torch.device, mode: str | None):
        if mode not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {mode!r}")
        self.device, self.mode = torch.device(device), mode

    def __enter__(self):
        self.saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        if self.mode == "tf32":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.mode == "bf16")
        self.autocast.__enter__()

    def __exit__(self, *exc):
        self.autocast.__exit__(*exc)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved


def _make_probes(kind: str, n_probes: int, shape, generator, device, dtype):
    if kind == "gaussian":
        v = torch.randn((n_probes, *shape), generator=generator)
    elif kind == "rademacher":
        v = torch.randint(0, 2, (n_probes, *shape), generator=generator).float() * 2 - 1
    else:
        raise ValueError(f"probe must be 'gaussian' or 'rademacher', got {kind!r}")
    return v.to(device=device, dtype=dtype)


def evaluators(model,                        # noise-prediction network eps_hat(x, t, y), in eval mode
               sde: SDE,                     # the forward SDE
               y: torch.Tensor,              # (N,) class labels on the model's device
               probes: torch.Tensor | None,  # (P, N, C, H, W) Hutchinson probes, or None (exact divergence)
               z0: torch.Tensor,             # (N, C, H, W) an example state: shape, dtype, memory format, device
               compile: str | None = None,   # None (eager), "graph" (CUDA graphs) or a torch.compile mode
               precision: str | None = None,  # None / "tf32" (fp32 storage) or "bf16" (autocast around the network)
               ):
    """The network evaluations of a solve, as callables of (z, t) with t a 0-d float32 tensor:

    drift_div(z, t) -> (probability-flow drift, its divergence estimate (N,))  [torchdiffeq solvers]
    eps_div(z, t)   -> (eps_hat float32, divergence of eps_hat (N,))           [dpm_solve]
    eps(z, t)       -> eps_hat float32                                         [dpm_solve, order 2]

    compile="graph": each is a ``sgc.graphs.GraphedFunction`` (one CUDA graph per model, SDE,
    shape and precision, cached across solves; y and the probes are inputs copied in per call, so
    the graph serves every batch of that shape). Otherwise the network goes through
    ``sgc.nets.compiled(model, compile)``. "tf32" itself is a global switch (see ``_precision``).
    """
    if compile not in ENGINES:
        raise ValueError(f"compile must be one of {ENGINES}, got {compile!r}")
    device = z0.device
    bf16 = precision == "bf16"
    graph = compile == "graph"
    net = model if graph else compiled(model, compile)

    def cast():  # inside a captured region autocast must not cache its casts
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16,
                              cache_enabled=False if graph else None)

    def drift_div(z, t, yy, *p):
        with cast():
            return divergence(lambda v: ode_drift(net, sde, v, t, yy), z, p[0] if p else None)

    def eps_div(z, t, yy, *p):
        with cast():
            return _float(divergence(lambda v: net(v, t.expand(v.shape[0]), yy), z, p[0] if p else None))

    def eps(z, t, yy):
        with cast():
            return net(z, t.expand(z.shape[0]), yy).float()

    extra = () if probes is None else (probes,)
    if not graph:
        return (lambda z, t: drift_div(z, t, y, *extra), lambda z, t: eps_div(z, t, y, *extra),
                lambda z, t: eps(z, t, y))
    t0 = torch.full((), 0.5, device=device, dtype=torch.float32)  # a time for the warm-up calls
    common = (graphs.model_key(model), json.dumps(sde.config(), sort_keys=True), precision, tuple(z0.shape),
              z0.stride(), z0.dtype, None if probes is None else tuple(probes.shape))

    def graphed(name, fn, inputs):  # captured at its first call (a solve uses one or two of the three)
        def call(z, t):
            g = graphs.cached((name,) + common, lambda: graphs.GraphedFunction(fn, inputs, device, name=name))
            return g(z, t, *inputs[2:])
        return call

    return (graphed("ODE function (drift + divergence)", drift_div, (z0, t0, y) + extra),
            graphed("network + divergence", eps_div, (z0, t0, y) + extra),
            graphed("network forward pass", eps, (z0, t0, y)))


def _float(pair):
    out, div = pair
    return out.float(), div


@torch.no_grad()
def log_likelihood(model, sde: SDE, x: torch.Tensor, y: torch.Tensor, *,
                   levels: int = 256,            # intensity levels of the source data (bits/dim)
                   dequantize_noise: torch.Tensor | None = None,  # u in [0,1) of x's shape, or None
                   method: str = "dopri5",       # torchdiffeq solver
                   rtol: float = 1e-5,           # relative tolerance (adaptive solvers)
                   atol: float = 1e-5,           # absolute tolerance (adaptive solvers)
                   steps: int = 100,             # number of steps (fixed-step solvers)
                   eps: float = 1e-5,            # start time of the ODE (t = 0 is singular)
                   divergence_mode: str = "hutchinson",  # "hutchinson" or "exact"
                   probe: str = "rademacher",    # Hutchinson probe distribution
                   n_probes: int = 1,            # Hutchinson probes per evaluation
                   probes: torch.Tensor | None = None,  # explicit probes (P, N, C, H, W)
                   generator: torch.Generator | None = None,
                   nfe_budget: int | None = None,  # fixed-step methods: steps = budget // evals per step
                   spacing: str = "logsnr",      # fixed-step grid: "logsnr" (uniform log-SNR) or "uniform" in t
                   precision: str | None = None,  # network arithmetic: None (fp32), "tf32", "bf16" autocast
                   compile: str | None = None,   # None (eager), "graph" (CUDA graphs of each evaluation, sgc.graphs)
                                                 # or a torch.compile mode ("reduce-overhead": CUDA graphs of the net)
                   channels_last: bool = False,  # NHWC layout for the UNet (converts the model's weights in place)
                   max_nfe: int | None = None,   # adaptive solvers: stop with SolverError after this many evaluations
                   ) -> LikelihoodResult:
    """log p(x_i | y_i) for a batch of images x (N, C, H, W) in [0, 1] and labels y (N,).

    Methods: adaptive torchdiffeq solvers (``ADAPTIVE``, rtol/atol), fixed-step torchdiffeq
    solvers (``FIXED``) and exponential integrators "dpm1"/"dpm2" (``sgc.solvers``), the last
    two on ``steps`` steps or ``nfe_budget`` network evaluations. ``compile="graph"`` replays
    every evaluation (forward + VJP) from a CUDA graph captured once per model and batch shape
    (on a CPU the same code runs uncaptured); a torch.compile mode compiles the network once per
    model and mode. nfe counts ODE-function evaluations (each 1 forward + 1 batched VJP); for
    "dpm2" it counts forward passes (half of them need no VJP).
    """
    validate_images(x, model)
    if not 0 < eps < sde.T:
        raise SolverError(f"the ODE start time eps={eps} is outside (0, T={sde.T}); t = 0 is singular. Use a small "
                          f"positive eps such as 1e-5")
    if compile not in ENGINES:
        raise ValueError(f"compile must be one of {ENGINES}, got {compile!r}")
    check_labels(y, model.num_classes)
    device = next(model.parameters()).device
    x = x.to(device=device, dtype=torch.float32)
    y = torch.as_tensor(y, device=device, dtype=torch.long).expand(x.shape[0]).contiguous()
    if dequantize_noise is not None:
        x = dequantize(x, levels, dequantize_noise)
    z0 = 2 * x - 1
    if channels_last:
        model.to(memory_format=torch.channels_last)
        z0 = z0.contiguous(memory_format=torch.channels_last)
    if divergence_mode == "exact":
        probes = None
    elif divergence_mode == "hutchinson":
        if probes is None:
            probes = _make_probes(probe, n_probes, z0.shape, generator, device, z0.dtype)
        probes = probes.to(device=device, dtype=z0.dtype)
    else:
        raise ValueError(f"divergence_mode must be 'exact' or 'hutchinson', got {divergence_mode!r}")
    if method not in ADAPTIVE | FIXED | EXPONENTIAL:
        raise ValueError(f"unknown ODE method {method!r}; adaptive: {sorted(ADAPTIVE)}, fixed: "
                         f"{sorted(FIXED)}, exponential: {sorted(EXPONENTIAL)}")
    if nfe_budget is not None and method not in ADAPTIVE:
        from .solvers import FIXED_EVALS
        steps = max(1, nfe_budget // FIXED_EVALS.get(method, 1))

    nfe = 0
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    ts = torch.tensor([eps, sde.T], device=device, dtype=torch.float32)
    if method in ADAPTIVE:
        kwargs = dict(rtol=rtol, atol=atol)
    else:
        from .solvers import time_grid
        grid = time_grid(sde, steps, eps, spacing).to(device=device, dtype=torch.float32)
        kwargs = dict(options={"grid_constructor": lambda *_: grid})
    state0 = (z0, torch.zeros(z0.shape[0], device=device))
    try:
        with _precision(device, precision):
            drift_div, eps_div, eps_fwd = evaluators(model, sde, y, probes, z0, compile, precision)

            def func(t, state):
                nonlocal nfe
                nfe += 1
                if max_nfe is not None and nfe > max_nfe:
                    raise SolverError(f"the {method} solve needed more than max_nfe={max_nfe} evaluations "
                                      f"(rtol={rtol}, atol={atol}, precision={precision}); loosen the tolerance "
                                      f"or use fp32 (bf16 noise can keep an adaptive solver from converging)")
                return drift_div(state[0], t.to(torch.float32).reshape(()))

            if method in EXPONENTIAL:
                from .solvers import dpm_solve
                zT, delta, nfe = dpm_solve(eps_div, eps_fwd, sde, z0, steps=steps, order=int(method[-1]),
                                           eps=eps, spacing=spacing)
            else:
                try:
                    zs, deltas = odeint(func, state0, ts, method=method, **kwargs)
                except AssertionError as err:  # torchdiffeq's checks, e.g. "underflow in dt nan"
                    raise SolverError(f"the probability-flow ODE solve failed ({method}, eps={eps}: torchdiffeq: "
                                      f"{err or 'assertion failed'}); the model output or the start time is not "
                                      f"usable. Use eps >= 1e-5 and check the checkpoint (NaN weights?)") from None
                zT, delta = zs[-1], deltas[-1]
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start
    zT, delta = zT.float(), delta.float()
    prior = sde.prior_logp(zT)
    dims = z0[0].numel()
    logp = prior + delta + dims * math.log(2.0)  # z = 2x - 1: density of x on [0, 1]^D
    bad = ~torch.isfinite(logp)
    if bad.any():
        idx = bad.nonzero().flatten().tolist()
        raise SolverError(f"the probability-flow ODE returned non-finite log-likelihoods for batch rows "
                          f"{idx[:10]} (method={method}, rtol={rtol}, atol={atol}, eps={eps}); try a "
                          f"tighter tolerance, a larger eps (e.g. 1e-3), or method='rk4' with more steps")
    return LikelihoodResult(logp.cpu(), to_bits_per_dim(logp, dims, levels).cpu(), nfe, seconds,
                            prior.cpu(), delta.cpu())


def class_log_likelihoods(model, sde: SDE, x: torch.Tensor, classes=None, *,
                          levels: int = 256, dequantize: bool = False, probe: str = "rademacher",
                          n_probes: int = 1, divergence_mode: str = "hutchinson",
                          generator: torch.Generator | None = None, **solver) -> LikelihoodResult:
    """log p(x_i | y = k) for every image i and class k in ONE solve: result (N, K).

    Every class of an image sees the same Hutchinson probe and the same dequantization noise,
    so differences between classes are not blurred by independent noise.
    """
    validate_images(x, model)
    classes = list(range(model.num_classes)) if classes is None else list(classes)
    n, k = x.shape[0], len(classes)
    deq = torch.rand(x.shape, generator=generator) if dequantize else None
    probes = None
    if divergence_mode == "hutchinson":
        probes = _make_probes(probe, n_probes, x.shape, generator, "cpu", torch.float32)
        probes = probes.repeat_interleave(k, dim=1)
    xs = x.repeat_interleave(k, dim=0)
    ys = torch.tensor(classes, dtype=torch.long).repeat(n)
    res = log_likelihood(model, sde, xs, ys, levels=levels,
                         dequantize_noise=None if deq is None else deq.repeat_interleave(k, dim=0),
                         divergence_mode=divergence_mode, probes=probes, **solver)
    shape = (n, k)
    return LikelihoodResult(res.logp.view(shape), res.bpd.view(shape), res.nfe, res.seconds,
                            res.prior_logp.view(shape), res.delta_logp.view(shape))
