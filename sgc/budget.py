"""GPU memory and time of a run, estimated without a GPU: counted on PyTorch's meta device.

Nothing here is a measurement. The score network of a run is built on the ``meta`` device (shapes
only, no data, no arithmetic) and run once forward and backward, which gives exactly

- the parameters (bytes),
- the activations autograd saves for the backward pass (bytes, fp32; parameters not counted,
  tensors that share storage counted once: the same count a CPU run gives, which
  ``tests/test_budget.py`` checks), and the largest saved tensor,
- the floating-point operations (``torch.utils.flop_counter``).

From these counts:

- **training memory** = parameters x 5 (weights, gradients, two AdamW moments, the EMA copy)
  + saved activations + 2 x the largest tensor (the backward's working set), times 1.15 for the
  allocator's rounding and fragmentation, plus 0.5 GiB of CUDA context. Activations are counted
  at fp32, so under the default bf16 autocast (about half the bytes) this is an upper bound;
  gradient checkpointing is ignored (it only lowers the real figure).
- **likelihood memory** (the exact ODE: one forward with gradients + one VJP per evaluation over
  images x classes rows) = parameters + saved activations + 2 x the largest tensor, the same
  factors; the bound (forward passes under no_grad over up to ``max_batch`` rows of draws) =
  parameters + the most bytes of tensors alive at once during one pass (followed on the meta
  device by a dispatch mode), the same factors.
- **time** = operations / R, never less than a launch-bound floor, where both come from two
  H200 measurements of sgc's 32 px BreastMNIST UNet (32 channels, multipliers 1,2,2), 2026-11-27:
  R = the operations of one ODE evaluation at 312 rows / its 11.2 ms of GPU kernel time
  (docs/measurements.md), and the floor = 1 / 25 training steps per second (4,505 steps of batch
  128 in 3 minutes, eager; the issue that asked for GPU profiles reports it). The floor also
  bounds one ODE evaluation from below (13.1 ms, eager, measured the same day). Larger
  convolutions usually run closer to the GPU's peak than the reference's, so times above the
  floor tend to be overestimates. An H100 is close to an H200 in compute; its memory is 80 GB.
"""
from __future__ import annotations

import math
from functools import lru_cache

__all__ = ["GIB", "GPU_GIB", "REFERENCE", "network_costs", "training_estimate", "likelihood_estimate", "adaptive_nfe",
           "image_shape", "network_config", "batch_estimate"]

GIB = 2 ** 30
GPU_GIB = 80                   # the GPUs the profiles are sized for: H100 / H200, 80 GB or more
OVERHEAD_SECONDS = 15          # per notebook: kernel, imports, CUDA start-up, data loading (an allowance)
TOY_SECONDS = 45               # notebook 05 trains its 2-D toy model on the CPU (an allowance)
CONTEXT_BYTES = 0.5 * GIB      # CUDA context and cuDNN / cuBLAS workspaces
FRAGMENTATION = 1.15           # caching allocator: rounding and fragmentation
REFERENCE = {                  # the measured figures every time estimate is scaled from
    "device": "NVIDIA H200", "date": "2026-11-27",
    "model": {"arch": "unet", "channels": 32, "channel_mults": [1, 2, 2], "emb_dim": 128},
    "shape": (1, 32, 32), "num_classes": 2,
    "ode_eval_rows": 312, "ode_eval_seconds": 0.0112,      # GPU kernel time of one forward + VJP
    "eager_ode_eval_seconds": 0.0131,                      # one evaluation at 32 rows, eager (launch-bound)
    "train_steps_per_second": 4505 / 180,                  # batch 128, eager sgc train
}


def _build(model: dict, shape, num_classes: int):
    import torch
    from .nets import build_model
    c, h, _ = shape
    config = {"arch": "unet", **model, "num_classes": num_classes, "in_channels": c, "image_size": h}
    config.pop("checkpointing", None)  # ignored: the estimate is the upper bound without it
    with torch.device("meta"):
        return build_model(config)


class _LiveBytes:
    """A dispatch mode that follows the bytes of the tensor storages its operations create while they
    are alive (the peak a no-grad call needs); storages of ``existing`` tensors (parameters, inputs),
    which operations may view, are not counted."""

    def __new__(cls, existing=()):
        import weakref
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        class Mode(TorchDispatchMode):
            def __init__(self):
                super().__init__()
                self.refs, self.sizes, self.now, self.peak = {}, {}, 0, 0
                self.ignore = {t.untyped_storage()._cdata for t in existing}

            def _drop(self, key):
                self.refs[key] -= 1
                if not self.refs[key]:
                    self.now -= self.sizes.pop(key)
                    del self.refs[key]

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    if hasattr(t, "untyped_storage") and t.untyped_storage()._cdata not in self.ignore:
                        key = t.untyped_storage()._cdata
                        if key not in self.refs:
                            self.refs[key], self.sizes[key] = 0, t.untyped_storage().nbytes()
                            self.now += self.sizes[key]
                            self.peak = max(self.peak, self.now)
                        self.refs[key] += 1
                        weakref.finalize(t, self._drop, key)
                return out
        return Mode()


def network_costs(model: dict,          # network config: arch + keywords (sgc.nets.build_model)
                  shape,                # (C, H, W) of one image
                  num_classes: int,     # classes the network is conditioned on
                  rows: int,            # batch rows of one call (images, or images x classes)
                  backward: str = "params",  # "params" (a training step), "input" (an ODE VJP) or "none"
                  ) -> dict:
    """Exact counts of one call of the network (see :func:`_costs` for the keys): every activation and
    operation of the networks is per row, so the counts of one row, made once per network, shape and
    kind of call, are multiplied by ``rows`` (``tests/test_budget.py`` checks this against direct counts)."""
    import json
    one = _costs_of_one(json.dumps(model, sort_keys=True), tuple(int(v) for v in shape), int(num_classes), backward)
    return {k: v if k in ("parameters", "param_bytes") else v * int(rows) for k, v in one.items()}


@lru_cache(maxsize=64)
def _costs_of_one(model_json: str, shape: tuple, num_classes: int, backward: str) -> dict:
    import json
    return _costs(json.loads(model_json), shape, num_classes, 1, backward)


def _costs(model: dict, shape, num_classes: int, rows: int, backward: str = "params") -> dict:
    """Counts of one call at ``rows`` rows (arguments as in :func:`network_costs`), from a run on the
    meta device (no memory, no compute).

    Returns ``parameters``, ``param_bytes``, ``forward_flops``, ``backward_flops`` and
    - with a backward: ``saved_bytes`` (activations autograd keeps for it, fp32, parameters
      excluded, shared storage counted once) and ``largest_bytes`` (the largest of them);
    - ``backward="none"`` (a forward under no_grad): ``peak_bytes``, the most bytes of
      intermediate tensors alive at once (the input excluded), and ``backward_flops`` 0.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    if backward not in ("params", "input", "none"):
        raise ValueError(f"backward must be 'params', 'input' or 'none', got {backward!r}")
    net = _build(model, shape, num_classes)
    net.train(backward == "params")
    params = list(net.parameters())
    out = {"parameters": sum(p.numel() for p in params), "param_bytes": 4 * sum(p.numel() for p in params)}
    with torch.device("meta"):
        x = torch.empty(rows, *shape, requires_grad=backward == "input")
        t, y = torch.rand(rows), torch.zeros(rows, dtype=torch.long)
    if backward == "none":
        with torch.no_grad(), FlopCounterMode(display=False) as fwd, _LiveBytes([*params, x]) as live:
            net(x, t, y)
        return {**out, "peak_bytes": live.peak, "forward_flops": fwd.get_total_flops(), "backward_flops": 0}
    own = {p.untyped_storage()._cdata for p in params}
    saved: dict[int, int] = {}

    def pack(tensor):
        key = tensor.untyped_storage()._cdata
        if key not in own:
            saved[key] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), \
            FlopCounterMode(display=False) as fwd:
        result = net(x, t, y)
    with FlopCounterMode(display=False) as bwd:
        torch.autograd.grad(result, params if backward == "params" else [x], torch.ones_like(result))
    return {**out, "saved_bytes": sum(saved.values()), "largest_bytes": max(saved.values(), default=0),
            "forward_flops": fwd.get_total_flops(), "backward_flops": bwd.get_total_flops()}


@lru_cache(maxsize=1)
def _rate() -> float:
    """Operations per second of the reference measurement (one ODE evaluation at 312 rows)."""
    ref = REFERENCE
    c = network_costs(ref["model"], ref["shape"], ref["num_classes"], ref["ode_eval_rows"], backward="input")
    return (c["forward_flops"] + c["backward_flops"]) / ref["ode_eval_seconds"]


def _gib(nbytes: float) -> float:
    return (FRAGMENTATION * nbytes + CONTEXT_BYTES) / GIB


def training_estimate(model: dict,       # network config: arch + keywords
                      shape,             # (C, H, W) of one image
                      num_classes: int,  # classes
                      batch: int,        # global batch of one optimiser step (one GPU)
                      ) -> dict:
    """{"gib": peak GPU memory, "seconds_per_step", "parameters", "flops_per_step"}: estimates."""
    c = network_costs(model, shape, num_classes, batch, backward="params")
    peak = 5 * c["param_bytes"] + c["saved_bytes"] + 2 * c["largest_bytes"]
    flops = c["forward_flops"] + c["backward_flops"]
    seconds = max(1 / REFERENCE["train_steps_per_second"], flops / _rate())
    return {"gib": _gib(peak), "seconds_per_step": seconds, "parameters": c["parameters"], "flops_per_step": flops}


def adaptive_nfe(options: dict) -> int:
    """Function evaluations assumed for an ODE solve with ``options`` (method, rtol, steps): a fixed-step
    method's own count; an adaptive one (dopri5) at rtol <= 1e-4: 800 (the most measured, 812-824 on
    the authors' UNet at 1e-5), looser: 200."""
    from .likelihood import ADAPTIVE
    method = options.get("method", "dopri5")
    if method not in ADAPTIVE:
        return int(options.get("steps") or 64)
    return 800 if float(options.get("rtol", 1e-5)) <= 1e-4 else 200


def likelihood_estimate(model: dict,       # network config: arch + keywords
                        shape,             # (C, H, W) of one image
                        num_classes: int,  # classes scored per image
                        batch: int,        # images per batched solve (rows = batch x classes)
                        images: int,       # images classified in all
                        estimator: str = "ode",     # "ode" (exact) or "elbo" (the bound)
                        options: dict | None = None,  # estimator options (method, rtol, n_draws, ...)
                        ) -> dict:
    """{"gib": peak GPU memory of one batched call, "seconds": for all images, "nfe"}: estimates."""
    options = options or {}
    rows = batch * num_classes
    if estimator == "ode":
        c = network_costs(model, shape, num_classes, rows, backward="input")
        peak = c["param_bytes"] + c["saved_bytes"] + 2 * c["largest_bytes"]
        evals = adaptive_nfe(options) * int(options.get("n_probes", 1))
        floor = REFERENCE["eager_ode_eval_seconds"]
    elif estimator == "elbo":
        draws = int(options.get("n_draws", 64))
        per_pass = rows * min(draws, max(1, int(options.get("max_batch", 4096)) // rows))  # sgc.elbo's chunking
        c = network_costs(model, shape, num_classes, per_pass, backward="none")
        peak = c["param_bytes"] + c["peak_bytes"]
        evals = -(-draws * rows // per_pass)      # forward passes per batch of images
        floor = REFERENCE["eager_ode_eval_seconds"]  # a forward alone launches fewer kernels: an overestimate
    else:
        raise ValueError(f"estimator must be 'ode' or 'elbo', got {estimator!r}")
    calls = -(-images // batch)
    per_eval = max(floor, (c["forward_flops"] + c["backward_flops"]) / _rate())
    return {"gib": _gib(peak), "seconds": calls * evals * per_eval,
            "nfe": evals if estimator == "ode" else int(options.get("n_draws", 64))}


def image_shape(dataset: str, data_options: dict | None) -> tuple[int, int, int]:
    """(C, H, W) of the images the loader gives with ``data_options`` (from its keyword defaults)."""
    import inspect
    from .data import DATASETS, loaders
    options = dict(data_options or {})
    if dataset == "digits":
        return 1, 8, 8
    loader = getattr(loaders, DATASETS[dataset].__name__)
    defaults = {k: p.default for k, p in inspect.signature(loader).parameters.items()
                if p.default is not inspect.Parameter.empty}
    size = options.get("size", defaults.get("size"))
    if size is None:  # MedMNIST: the file's own side
        size = options.get("resolution", defaults.get("resolution", 28))
    channels = options.get("channels", defaults.get("channels")) or 1
    return int(channels), int(size), int(size)


def network_config(params: dict, notebook_defaults: dict) -> dict:
    """The profile's ``model`` (else the notebooks' default), with ``arch`` (default unet)."""
    return {"arch": "unet", **(params.get("model") or notebook_defaults.get("model") or {})}


def batch_estimate(dataset: str, params: dict, about: dict, defaults: dict | None = None) -> dict:
    """Memory (GiB) and time (s) of a profile's notebook batch on one GPU (sgc.profiles), estimated.

    ``params``: the profile's notebook parameters; ``about``: its ``profile:`` section
    (``train_images``, ``test_images``).

    ``defaults``: the notebooks' own parameter defaults (for keys the profile leaves out).
    Returns ``{"memory": {what: GiB}, "gib": the largest, "seconds": {term: s}, "minutes": total,
    "parameters", "shape"}``; the terms name the notebook that spends them.
    """
    p = {**(defaults or {}), **params}
    shape, model = image_shape(dataset, p.get("data_options")), network_config(params, defaults or {})
    k, n_test, n_train = 2, int(about.get("test_images", 100)), int(about.get("train_images", 500))
    train = p.get("train") or {}
    tr = training_estimate(model, shape, k, int(train.get("batch_size", 128)))
    data_gib = n_train * math.prod(shape) * 4 / GIB
    on_gpu = data_gib <= (GPU_GIB - tr["gib"]) / 4          # sgc.step.place_data: a quarter of the free memory
    batch = int(p.get("batch_size", 64))

    def bound_seconds(images, draws, rows=64):
        return likelihood_estimate(model, shape, k, min(rows, images), images, "elbo", {"n_draws": draws})["seconds"]

    score = likelihood_estimate(model, shape, k, batch, n_test, p.get("estimator", "ode"), p.get("estimator_options"))
    bound = likelihood_estimate(model, shape, k, batch, 3 * n_test, p.get("score_estimator", "elbo"),
                                p.get("score_options"))                     # 06: calibration, test and OOD sets
    n_abl = int(p.get("ablation_images", 30))
    ode_abl = sum(likelihood_estimate(model, shape, k, min(64, n_abl), n_abl, "ode", {"rtol": tol})["seconds"]
                  for tol in p.get("tolerances", [1e-3]))
    ode_abl += len(p.get("probe_settings", [1, 1, 1])) * int(p.get("probe_repeats", 2)) * likelihood_estimate(
        model, shape, k, min(64, n_abl), n_abl, "ode", {"rtol": p.get("probe_rtol", 1e-2)})["seconds"]
    models_04 = len(p.get("step_grid", [])) + len(p.get("fractions", []))
    runs_04 = len(p.get("experiment_fractions", [])) * len(p.get("experiment_seeds", []))
    draws_04 = bound_seconds(n_abl, sum(p.get("elbo_draws", [8])) + models_04 * int(p.get("ablation_draws", 32)))
    draws_04 += runs_04 * bound_seconds(n_test, int(p.get("experiment_draws", 16)))
    extra_steps = (max(p.get("step_grid", [0]) or [0]) + len(p.get("fractions", [])) * int(p.get("fraction_steps", 0))
                   + runs_04 * int(p.get("experiment_steps", 0)))
    def forward_passes(passes, rows):   # a training step is about 3 forward passes
        return passes * training_estimate(model, shape, k, max(1, int(rows)))["seconds_per_step"] / 3

    sampling = forward_passes(2 * k * int(p.get("sampler_steps", 100)), p.get("samples_per_class", 4))
    counterfactuals = forward_passes(2 * sum(p.get("t_stars", [0.2, 0.4, 0.6])) * int(p.get("counterfactual_steps", 200)),
                                     p.get("counterfactual_images", 24))   # target and control, t* of [0, T] each
    seconds = {"02 training": int(train.get("steps", 0)) * tr["seconds_per_step"],
               "02 samples and EMA check": sampling + 2 * bound_seconds(int(p.get("ema_images", 100)),
                                                                         int(p.get("ema_draws", 16)), 50),
               "03 classification": score["seconds"],
               "04 ablation training": extra_steps * tr["seconds_per_step"],
               "04 ablation likelihoods": ode_abl + draws_04,
               "05 toy model (CPU)": TOY_SECONDS,
               "06 scores and counterfactuals": bound["seconds"] + counterfactuals,
               "notebook start-up and data": 6 * OVERHEAD_SECONDS}
    memory = {"training": tr["gib"] + (data_gib if on_gpu else 0.0), "classification": score["gib"],
              "06 scores": bound["gib"]}
    return {"memory": memory, "gib": max(memory.values()), "seconds": seconds,
            "minutes": sum(seconds.values()) / 60, "parameters": tr["parameters"], "shape": shape,
            "training_data_gib": data_gib, "training_data_on_gpu": on_gpu}
