"""CUDA graphs of fixed-shape work: capture once, replay many times.

On a GPU at the batch sizes this project uses, the network is bound by Python and kernel
launches, not by arithmetic: one probability-flow ODE evaluation (forward + VJP) of the 32 px
UNet at 32 rows launches about 640 kernels. A CUDA graph records such a call once and replays
all its kernels with one launch (``torch.cuda.CUDAGraph``, the mechanism PyTorch documents for
whole-network capture: warm-up on a side stream, capture, replay on static tensors).

* ``capture(fn, device)``: warm ``fn()`` up, then capture one call (CUDA only).
* ``GraphedFunction(fn, example_inputs, device)``: ``fn(*inputs)`` of fixed shapes as a graph;
  each call copies the inputs into static buffers, replays, and returns copies of the outputs
  (the next replay overwrites them, while a solver keeps earlier stages).
* ``cached(key, build)``: one graph per (what, model, shapes, precision), least recently used
  first out; ``model_key`` makes a model whose weights were replaced (``.to(...)``) a new key.

What a captured function must respect: fixed input shapes, dtypes and devices; no host
synchronisation (no ``.item()``, ``float(tensor)``, no Python branch on a tensor's value); the
parameters that exist at capture (weights updated in place are seen by the replays); autocast
only with ``cache_enabled=False``; the random draws of a custom generator outside (callers draw
their noise eagerly and pass it in).

On a device other than CUDA nothing is captured: the same static-buffer code runs as plain
calls (the CPU tests check that bookkeeping; the capture itself needs a GPU). A capture that
fails falls back to plain calls with one message on stderr, so a long run never dies of it.
"""
from __future__ import annotations

import sys
import warnings
from collections import OrderedDict

import torch

__all__ = ["capture", "GraphedFunction", "cached", "model_key", "clear_cache", "MAX_GRAPHS"]

MAX_GRAPHS = 8  # graphs kept by ``cached``; each holds its own memory pool (activations of one call)
_CACHE: OrderedDict = OrderedDict()


def _say(msg: str) -> None:
    print(f"sgc: {msg}", file=sys.stderr, flush=True)


def capture(fn, device, warmup: int = 3):
    """(graph, out): ``fn()`` run ``warmup`` times, then one call captured as a CUDA graph.

    On CUDA the warm-up runs on a side stream (lazy initialisations, cuDNN/cuBLAS workspaces and
    autotuning happen there, not inside the capture), and the capture uses the same stream; ``out``
    is what the captured call returned: static tensors that every ``graph.replay()`` rewrites.
    On other devices the warm-up calls run as they are and ``graph`` is None (``out`` is the last
    warm-up's result, or None). Warm-up calls have their full effects (a training step updates
    the weights): callers that must not see them restore their state afterwards.
    """
    device = torch.device(device)
    if device.type != "cuda":
        out = None
        for _ in range(warmup):
            out = fn()
        return None, out
    stream = torch.cuda.Stream(device=device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream), warnings.catch_warnings():
        # capturable optimisers warn when stepped outside a capture: the warm-up does exactly that
        warnings.filterwarnings("ignore", message=".*capturable=True.*")
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        out = fn()
    return graph, out


def _clone(out):
    if torch.is_tensor(out):
        return out.clone()
    if isinstance(out, (tuple, list)):
        return type(out)(_clone(o) for o in out)
    return out


class GraphedFunction:
    """``fn(*inputs)`` replayed from a CUDA graph; inputs of the shapes of ``example_inputs``.

    ``fn`` takes tensors only and must be capturable (see the module docstring). Without CUDA,
    or when the capture fails, calls run ``fn`` on the static buffers directly (``graphed``
    says which). Outputs are always fresh copies.
    """

    def __init__(self,
                 fn,                    # callable(*tensors) -> tensor or tuple of tensors
                 example_inputs,        # tensors of the shapes/dtypes/devices of every later call
                 device,                # where the work runs (CUDA: captured)
                 warmup: int = 3,       # eager calls before the capture
                 name: str = "function",  # for the fallback message
                 ):
        self.fn, self.name = fn, name
        self.static = tuple(x.detach().clone() for x in example_inputs)  # real values for the warm-up
        self.graph, self.out = None, None
        if torch.device(device).type == "cuda":
            try:
                self.graph, self.out = capture(lambda: fn(*self.static), device, warmup)
            except Exception as err:  # noqa: BLE001 - any capture failure: run uncaptured, say why
                self.graph, self.out = None, None
                _say(f"CUDA graph capture of the {name} failed ({type(err).__name__}: "
                     f"{str(err).splitlines()[0] if str(err) else ''}); running it eagerly")

    @property
    def graphed(self) -> bool:
        return self.graph is not None

    def __call__(self, *inputs):
        if len(inputs) != len(self.static):
            raise TypeError(f"the graphed {self.name} takes {len(self.static)} tensors, got {len(inputs)}")
        for s, x in zip(self.static, inputs):
            if x.shape != s.shape:
                raise ValueError(f"the graphed {self.name} was captured for shape {tuple(s.shape)}, "
                                 f"got {tuple(x.shape)}")
            s.copy_(x)
        if self.graph is None:
            return _clone(self.fn(*self.static))
        self.graph.replay()
        return _clone(self.out)


def model_key(model: torch.nn.Module) -> tuple:
    """Identity of a model's current weights: replaced tensors (``.to(device / memory format)``)
    give a new key; weights updated in place (training, ``load_state_dict``) keep it."""
    return (id(model), model.training, tuple(p.data_ptr() for p in model.parameters()),
            tuple(b.data_ptr() for b in model.buffers()))


def cached(key, build):
    """The graph stored under ``key``, built by ``build()`` the first time; at most
    ``MAX_GRAPHS`` are kept (the least recently used is dropped, with its memory)."""
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    graph = build()
    _CACHE[key] = graph
    while len(_CACHE) > MAX_GRAPHS:
        _CACHE.popitem(last=False)
    return graph


def clear_cache() -> None:
    """Drop every cached graph (and the memory pools they hold)."""
    _CACHE.clear()
