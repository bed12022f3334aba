"""Every CUDA branch of the package and the benchmark harness, run on the CPU through fakes, so
a wrong call, keyword or field name in GPU code fails here and not on the first GPU it meets.

The fakes (the model: tests/test_monitor.py):

- :class:`FakeCuda`: ``torch.cuda`` on a machine with two GPUs, the current one ``cuda:1``.
  Each call the package makes is bound to the real function's signature (a wrong keyword or
  argument count raises as it would on a GPU) and recorded. Its streams (:class:`FakeStream`)
  and CUDA graphs (:class:`FakeGraph`, captured under :class:`FakeCapture`) are bound the same
  way: a capture records the modules its body ran and refuses a host synchronisation, a nested
  capture or a second capture of one graph; a replay is counted and needs a captured graph.
- :class:`OnFakeGpu`: a torch function mode under which a tensor asked for on a CUDA device
  (``device=...``, ``.to(...)``, ``.cuda()``) is made on the CPU and marked as the GPU's; what
  is computed from a marked tensor is marked, ``.cpu()`` unmarks a copy, and ``.numpy()`` of
  a marked tensor raises as torch does on a GPU. Moves of real models are then no-ops.
- :class:`FakeCupy`: the part of CuPy the CUDA exit table uses (devices, external streams,
  ``RawModule``, ``from_dlpack``). A kernel launch is checked against the kernel's signature
  parsed from ``geep.methods.exit_table.CUDA_SOURCE`` (argument count, order and C types, arrays on the
  GPU and contiguous, the module's device and torch's stream current), then the kernel runs as
  Python on the shared tensors, its threads in random order.
"""

from __future__ import annotations

import inspect
import json
import math
import random
import re
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch.overrides import TorchFunctionMode

import benchmarks.conftest as bench_conftest
import benchmarks.test_geep_efficiency as efficiency
import benchmarks.test_latency_calibration as calibration
from geep.common.config import TrainConfig
from geep.common.errors import GeepError
from geep.core import interface as runner
from geep.methods import exit_table
from geep.methods.exit_table import CUDA_SOURCE, ExitTable
from geep.model import train_state, training
from geep.pipeline import evaluate as evaluation
from geep.report import results as report
from geep.reproduce import gpu_check
from geep.reproduce.gpu_check import DRY_SIZE
from geep.reproduce.units import device_name
from tests.helpers import new_method, toy_test_split, trained_on_toy

GPU = torch.device("cuda", 1)  # the fake machine's current device: the second of two
STREAM = 0x7F00_1000  # the raw cudaStream_t of torch's current stream on GPU 0 (+ index)
NAME = "Fake H200"
L = 4


# --- torch.cuda ----------------------------------------------------------------------------------


# the real classes' and methods' signatures, taken before a fake replaces them
STREAM_NEW = inspect.signature(torch.cuda.Stream)
WAIT_STREAM = inspect.signature(torch.cuda.Stream.wait_stream)
CUDA_GRAPH_NEW = inspect.signature(torch.cuda.CUDAGraph)
REPLAY = inspect.signature(torch.cuda.CUDAGraph.replay)
GRAPH_NEW = inspect.signature(torch.cuda.graph)


class FakeCuda:
    """``torch.cuda`` with two GPUs (current: 1): the functions the package calls, bound to the
    real ones' signatures and recorded in :attr:`calls` as (name, bound arguments); its classes
    ``Stream``, ``CUDAGraph`` and ``graph`` replaced by subclasses of :class:`FakeStream`,
    :class:`FakeGraph` and :class:`FakeCapture` (still classes: ``X | None`` and isinstance
    work) whose constructors are bound and recorded the same way."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.rng = [torch.arange(16, dtype=torch.uint8) + 16 * i for i in range(2)]
        fakes: dict[str, Callable[..., Any]] = {
            "is_available": lambda: True,
            "device_count": lambda: 2,
            "current_device": lambda: GPU.index,
            "get_device_name": lambda device=None: NAME,
            "synchronize": self._synchronize,
            "empty_cache": lambda: None,
            "set_device": lambda device: None,
            "current_stream": self._current_stream,
            "get_rng_state_all": lambda: [state.clone() for state in self.rng],
            "set_rng_state_all": self._set_rng,
            "stream": self._stream_context,
            "graph_pool_handle": self._pool,
            "is_current_stream_capturing": lambda: self.capturing is not None,
        }
        for name, fake in fakes.items():
            monkeypatch.setattr(torch.cuda, name, self._checked(name, fake))
        # torch.accelerator, which the optimizers ask for the current stream: on a CUDA build
        # of torch the real one would start the driver, on a CPU build it would answer "none"
        accelerator = {
            "current_accelerator": lambda check_available=False: torch.device("cuda"),
            "is_available": lambda: True,
            "device_count": lambda: 2,
            "current_device_index": lambda: GPU.index,
            "current_stream": self._current_stream,
            "synchronize": self._synchronize,
        }
        for name, fake in accelerator.items():
            checked = self._checked(name, fake, torch.accelerator, "accelerator.")
            monkeypatch.setattr(torch.accelerator, name, checked)
        for fake_class in (FakeStream, FakeGraph, FakeCapture):
            name = fake_class.replaces
            monkeypatch.setattr(torch.cuda, name, type(name, (fake_class,), {"cuda": self}))
        # each GPU's default stream (its raw handle: STREAM + index) and the streams entered with
        # torch.cuda.stream; every side stream, pool and graph made; the graph being captured
        self.default = {i: torch.cuda.Stream.default(i) for i in range(2)}
        self.entered: dict[int, list[FakeStream]] = {i: [] for i in range(2)}
        self.side_streams: list[FakeStream] = []
        self.pools: list[FakePool] = []
        self.graphs: list[FakeGraph] = []
        self.capturing: FakeGraph | None = None

    def _checked(
        self, name: str, fake: Callable[..., Any], module: Any = torch.cuda, prefix: str = ""
    ) -> Callable[..., Any]:
        signature = inspect.signature(getattr(module, name))

        def call(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)  # TypeError as from the real function
            self.calls.append((prefix + name, dict(bound.arguments)))
            return fake(*args, **kwargs)

        return call

    @staticmethod
    def index(device: Any = None) -> int:
        """The GPU a ``device`` argument names (None: the current one)."""
        if isinstance(device, int):
            return device
        index = GPU.index if device is None else torch.device(device).index
        return GPU.index if index is None else index

    def _synchronize(self, device: Any = None) -> None:
        if self.capturing is not None:  # what CUDA answers during a capture
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    def _current_stream(self, device: Any = None) -> FakeStream:
        index = self.index(device)
        return (self.entered[index] or [self.default[index]])[-1]

    @contextmanager
    def _stream_context(self, stream: FakeStream | None) -> Iterator[None]:
        """``torch.cuda.stream``: makes ``stream`` its GPU's current stream (None: no-op)."""
        if stream is None:
            yield
            return
        assert isinstance(stream, FakeStream), f"torch.cuda.stream({stream!r}): not a stream"
        self.entered[stream.device_index].append(stream)
        try:
            yield
        finally:
            self.entered[stream.device_index].pop()

    def _pool(self) -> FakePool:
        self.pools.append(FakePool())
        return self.pools[-1]

    def _set_rng(self, new_states: Any) -> None:
        states = list(new_states)
        assert len(states) == len(self.rng)
        assert all(s.dtype == torch.uint8 and s.shape == self.rng[0].shape for s in states)
        self.rng = [s.clone() for s in states]

    def called(self, name: str) -> list[dict[str, Any]]:
        """The bound arguments of every call of ``torch.cuda.<name>`` (``accelerator.<name>``:
        of ``torch.accelerator.<name>``), in order."""
        return [arguments for called, arguments in self.calls if called == name]


class FakeStream:
    """``torch.cuda.Stream``: a side stream of GPU ``device_index`` with a raw handle of its
    own; its waits are recorded in the fake's calls as ``Stream.wait_stream``."""

    replaces = "Stream"
    cuda: FakeCuda  # set on the subclass each FakeCuda installs

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bound = STREAM_NEW.bind(*args, **kwargs)  # TypeError as from the real class
        # the real class passes **kwargs on to its C constructor, which takes these only
        unknown = set(bound.arguments.get("kwargs", {})) - {
            "stream_id",
            "device_index",
            "device_type",
        }
        if unknown:
            raise TypeError(f"Stream() got unexpected keyword arguments {sorted(unknown)}")
        self.cuda.calls.append(("Stream", dict(bound.arguments)))
        self.device_index = self.cuda.index(bound.arguments.get("device"))
        self.cuda_stream = STREAM + 0x100 * (len(self.cuda.side_streams) + 1)
        self.cuda.side_streams.append(self)

    @classmethod
    def default(cls, index: int) -> FakeStream:
        """GPU ``index``'s default stream (made without the constructor: nothing records it)."""
        stream = object.__new__(cls)
        stream.device_index, stream.cuda_stream = index, STREAM + index
        return stream

    def is_capturing(self) -> bool:
        """Whether a graph is being captured (``torch.Stream.is_capturing``)."""
        return self.cuda.capturing is not None

    def wait_stream(self, *args: Any, **kwargs: Any) -> None:
        bound = WAIT_STREAM.bind(self, *args, **kwargs)  # TypeError as from the real method
        other = bound.arguments["stream"]
        assert isinstance(other, FakeStream), f"wait_stream({other!r}): not a stream"
        self.cuda.calls.append(("Stream.wait_stream", dict(bound.arguments)))

    def __repr__(self) -> str:
        return f"FakeStream(cuda:{self.device_index}, {self.cuda_stream:#x})"


class FakePool:
    """What ``torch.cuda.graph_pool_handle()`` returns: an opaque handle."""


class FakeGraph:
    """``torch.cuda.CUDAGraph``: captured once (the module types its body ran, in order, and
    the pool it captured into), then replayed (counted)."""

    replaces = "CUDAGraph"
    cuda: FakeCuda

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bound = CUDA_GRAPH_NEW.bind(*args, **kwargs)  # TypeError as from the real class
        if not isinstance(bound.arguments.get("keep_graph", False), bool):  # as its C++ does
            raise TypeError(f"CUDAGraph(): keep_graph must be a bool, got {bound.arguments}")
        self.cuda.calls.append(("CUDAGraph", dict(bound.arguments)))
        self.captured = False
        self.modules: list[str] = []
        self.pool: FakePool | None = None
        self.replays = 0
        self.cuda.graphs.append(self)

    def replay(self, *args: Any, **kwargs: Any) -> None:
        REPLAY.bind(self, *args, **kwargs)  # TypeError as from the real method
        assert self.captured, "replay of a graph that was never captured"
        assert self.cuda.capturing is None, "a replay inside a capture"
        self.replays += 1


# what a capture may not do to a tensor on the GPU: each waits for the GPU (or reads its memory
# from the host), which CUDA refuses while a stream is capturing
HOST_SYNCS = {
    "item",
    "tolist",
    "cpu",
    "numpy",
    "__array__",
    "__bool__",
    "__int__",
    "__float__",
    "__index__",
    "nonzero",
    "unique",
    "masked_select",
    "equal",
    "allclose",
}


class FakeCapture(TorchFunctionMode):
    """``with torch.cuda.graph(graph, pool=...)``: checks it got a :class:`FakeGraph` never
    captured and a pool from ``graph_pool_handle``, then runs the body eagerly, recording the
    modules it runs into the graph and refusing host synchronisations of GPU tensors (and,
    through :meth:`FakeCuda._synchronize`, ``torch.cuda.synchronize``)."""

    replaces = "graph"
    cuda: FakeCuda

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        bound = GRAPH_NEW.bind(*args, **kwargs)  # TypeError as from the real class
        self.cuda.calls.append(("graph", dict(bound.arguments)))
        graph = bound.arguments["cuda_graph"]
        pool = bound.arguments.get("pool")
        stream = bound.arguments.get("stream")
        assert isinstance(graph, FakeGraph), f"torch.cuda.graph({graph!r}): not a CUDAGraph"
        assert pool is None or any(pool is p for p in self.cuda.pools), f"{pool!r}: no pool"
        assert stream is None or isinstance(stream, FakeStream), f"stream {stream!r}"
        self.graph, self.pool = graph, pool

    def __enter__(self) -> FakeCapture:
        assert self.cuda.capturing is None, "a capture inside a capture"
        assert not self.graph.captured, "a graph captured twice"
        self.cuda.capturing = self.graph
        self.hook = torch.nn.modules.module.register_module_forward_hook(
            lambda module, args, out: self.graph.modules.append(type(module).__name__)
        )
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.hook.remove()
        self.cuda.capturing = None
        self.graph.captured, self.graph.pool = exc[0] is None, self.pool

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        leaves = _leaves(args, kwargs)
        tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
        # a boolean index's result has as many rows as it has True values: the host reads them
        masked = name == "__getitem__" and any(t.dtype == torch.bool for t in tensors[1:])
        # (not .to: the fake GPU's tensors say they are on the CPU, so .to(x.device) of two
        # GPU tensors would look like a copy to the host)
        if (name in HOST_SYNCS or masked) and any(on_gpu(t) for t in tensors):
            raise RuntimeError(
                f"CUDA error: operation not permitted when stream is capturing ({name})"
            )
        return func(*args, **kwargs)


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
    return FakeCuda(monkeypatch)


def on_gpu(t: torch.Tensor) -> bool:
    """Whether ``t`` was made on the fake GPU (see :class:`OnFakeGpu`)."""
    return getattr(t, "_on_fake_gpu", False)


def _cuda_device(x: object) -> bool:
    if isinstance(x, torch.device):
        return x.type == "cuda"
    return isinstance(x, str) and re.fullmatch(r"cuda(:\d+)?", x) is not None


def _cpu_device(x: object) -> bool:
    return (isinstance(x, torch.device) and x.type == "cpu") or (isinstance(x, str) and x == "cpu")


def _leaves(args: tuple, kwargs: dict) -> list[Any]:
    """The arguments of a torch call, with the items of list and tuple arguments."""
    out = []
    for x in (*args, *kwargs.values()):
        out.extend(x) if isinstance(x, (list, tuple)) else out.append(x)
    return out


def _to_cpu(x: Any) -> Any:
    if isinstance(x, (list, tuple)):
        return type(x)(_to_cpu(y) for y in x)
    return "cpu" if _cuda_device(x) else x


class OnFakeGpu(TorchFunctionMode):
    """Tensors asked for on CUDA are made on the CPU and marked (see the module docstring)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.device:  # naming a device moves nothing
            return func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        this = args[0] if args and isinstance(args[0], torch.Tensor) else None
        leaves = _leaves(args, kwargs)
        to_gpu = any(_cuda_device(x) for x in leaves)
        from_gpu = any(on_gpu(x) for x in leaves if isinstance(x, torch.Tensor))
        if name in ("numpy", "__array__") and this is not None and on_gpu(this):
            raise TypeError(
                "can't convert cuda:1 device type tensor to numpy. Use Tensor.cpu() to copy "
                "the tensor to host memory first."
            )
        if name == "cuda":
            return _mark(this.clone())
        if name == "cpu":
            return this.clone() if on_gpu(this) else this
        if to_gpu:
            args, kwargs = _to_cpu(args), {k: _to_cpu(v) for k, v in kwargs.items()}
        out = func(*args, **kwargs)
        if name == "to" and this is not None:
            target = [x for x in leaves[1:] if isinstance(x, torch.Tensor)]
            to_gpu = to_gpu or any(on_gpu(x) for x in target)
            to_cpu = any(_cpu_device(x) for x in leaves[1:]) or (target and not to_gpu)
            if to_gpu or (to_cpu and on_gpu(this)):
                out = out.clone() if out is this else out
                return _mark(out) if to_gpu else out
            return _mark(out) if on_gpu(this) and out is not this else out
        if (name.endswith("_") and not name.startswith("__")) or name == "__setitem__":
            return out  # in place: the tensor stays where it was
        if to_gpu or from_gpu:
            for t in out if isinstance(out, (list, tuple)) else (out,):
                if isinstance(t, torch.Tensor):
                    _mark(t)
        return out


def _mark(t: torch.Tensor) -> torch.Tensor:
    t._on_fake_gpu = True
    return t


def test_the_gpu_mode_marks_what_is_made_or_computed_on_the_gpu() -> None:
    with OnFakeGpu():
        made = torch.zeros(3, dtype=torch.int32, device=GPU)
        moved = torch.arange(3).to(GPU, torch.int64)
        plain = torch.arange(3)
        assert on_gpu(made) and on_gpu(moved) and on_gpu(made + 1) and on_gpu(plain.cuda())
        assert not on_gpu(plain) and not on_gpu(moved.cpu()) and on_gpu(moved)
        assert not on_gpu(moved.to("cpu")) and on_gpu(moved.to(torch.int32))
        assert moved.cpu().numpy().tolist() == [0, 1, 2]
        with pytest.raises(TypeError, match=r"Tensor\.cpu\(\)"):
            moved.numpy()


def test_the_fake_graphs_refuse_what_cuda_refuses(fake_cuda: FakeCuda) -> None:
    """The graph fakes bind the real signatures and refuse, as CUDA does, a host
    synchronisation inside a capture, a capture inside one, a second capture of one graph and a
    replay of a graph never captured."""
    with OnFakeGpu():
        x = torch.ones(3, device=GPU)
        pool = torch.cuda.graph_pool_handle()
        with pytest.raises(TypeError, match="mempool"):
            torch.cuda.graph(torch.cuda.CUDAGraph(), mempool=pool)
        with pytest.raises(TypeError):
            torch.cuda.CUDAGraph().replay(True)
        with pytest.raises(AssertionError, match="never captured"):
            torch.cuda.CUDAGraph().replay()
        for sync in (
            lambda: x.sum().item(),
            lambda: bool(x.all()),
            lambda: x[x > 0],
            lambda: x.cpu(),
            lambda: torch.cuda.synchronize(GPU),
        ):
            capture = torch.cuda.graph(torch.cuda.CUDAGraph(), pool=pool)
            with pytest.raises(RuntimeError, match="stream is capturing"), capture:
                sync()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            assert torch.cuda.is_current_stream_capturing()
            y = torch.nn.functional.relu(x + 1)  # run eagerly (a GPU runs it at each replay)
            inner = torch.cuda.graph(torch.cuda.CUDAGraph())
            with pytest.raises(AssertionError, match="capture inside a capture"), inner:
                pass
        assert on_gpu(y) and torch.equal(y.cpu(), torch.full((3,), 2.0))
        assert (
            graph.captured and graph.pool is pool and not torch.cuda.is_current_stream_capturing()
        )
        with pytest.raises(AssertionError, match="captured twice"), torch.cuda.graph(graph):
            pass
        graph.replay()
        assert graph.replays == 1
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            assert torch.cuda.current_stream() is side
        assert torch.cuda.current_stream() is fake_cuda.default[GPU.index]
        assert isinstance(side, torch.cuda.Stream) and isinstance(graph, torch.cuda.CUDAGraph)


# --- CuPy ----------------------------------------------------------------------------------------

_KERNEL = re.compile(r'extern "C" __global__ void (\w+)\(([^)]*)\)')


def kernel_signatures(source: str) -> dict[str, list[tuple[str, str]]]:
    """Each kernel of ``source`` -> its parameters as (C type without const, name)."""
    out = {}
    for name, params in _KERNEL.findall(source):
        out[name] = []
        for param in params.split(","):
            words = [w for w in param.replace("*", " * ").split() if w != "const"]
            out[name].append((" ".join(words[:-1]).replace(" *", "*"), words[-1]))
    return out


# what a launch must pass for each C type: an array of these torch dtypes, or this numpy scalar
POINTERS = {
    "long long*": (torch.int64,),
    "unsigned long long*": (torch.int64, torch.uint64),
    "int*": (torch.int32,),
}
SCALARS = {"long long": np.int64, "int": np.int32}


class FakeArray:
    """``cupy.from_dlpack(tensor)``: the tensor's memory, shared."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


class FakeCupy(types.ModuleType):
    """The part of CuPy the CUDA exit table uses; records compiled modules and launches."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__("cupy")
        self.__version__ = "0.0.0+fake"
        self.rng = random.Random(seed)
        self.devices: list[int] = []  # the current device: the last entered
        self.streams: list[int] = []
        self.modules: list[int] = []  # the device each RawModule was compiled on
        self.launches: list[dict[str, Any]] = []
        fake = self

        class Device:
            def __init__(self, device: int | None = None) -> None:
                self.id = 0 if device is None else int(device)

            def __enter__(self) -> Device:
                fake.devices.append(self.id)
                return self

            def __exit__(self, *exc: object) -> None:
                fake.devices.pop()

        class ExternalStream:
            def __init__(self, ptr: int, device_id: int = -1) -> None:
                self.ptr = ptr

            def __enter__(self) -> ExternalStream:
                fake.streams.append(self.ptr)
                return self

            def __exit__(self, *exc: object) -> None:
                fake.streams.pop()

        self.cuda = types.SimpleNamespace(Device=Device, ExternalStream=ExternalStream)

    def current_device(self) -> int:
        return self.devices[-1] if self.devices else 0

    def RawModule(  # CuPy's name
        self,
        code: str | None = None,
        *,
        path: str | None = None,
        options: tuple = (),
        backend: str = "nvrtc",
        translate_cucomplex: bool = False,
        enable_cooperative_groups: bool = False,
        name_expressions: Any = None,
        jitify: bool = False,
    ) -> types.SimpleNamespace:
        self.modules.append(self.current_device())
        signatures = kernel_signatures(code)
        return types.SimpleNamespace(
            get_function=lambda name: FakeKernel(self, name, signatures[name])
        )

    def from_dlpack(self, array: torch.Tensor) -> FakeArray:
        assert on_gpu(array), "from_dlpack of a CPU tensor (CuPy arrays live on the GPU)"
        return FakeArray(array)


class FakeKernel:
    """A ``RawModule.get_function`` kernel: checks each launch, then emulates it."""

    def __init__(self, cupy: FakeCupy, name: str, params: list[tuple[str, str]]) -> None:
        self.cupy, self.name, self.params = cupy, name, params
        self.device = cupy.current_device()

    def __call__(
        self,
        grid: tuple[int, ...],
        block: tuple[int, ...],
        args: tuple,
        *,
        shared_mem: int = 0,
        stream: Any = None,
        enable_cooperative_groups: bool = False,
    ) -> None:
        assert self.cupy.current_device() == self.device, "launched off its module's device"
        assert isinstance(args, tuple) and len(args) == len(self.params), (self.name, args)
        for arg, (ctype, pname) in zip(args, self.params, strict=True):
            if ctype in POINTERS:
                assert isinstance(arg, FakeArray), f"{self.name}({pname}): {arg!r} is no array"
                assert arg.tensor.dtype in POINTERS[ctype], (self.name, pname, arg.tensor.dtype)
                assert arg.tensor.is_contiguous(), f"{self.name}({pname}) is not contiguous"
            else:
                assert type(arg) is SCALARS[ctype], f"{self.name}({pname}): {arg!r} not {ctype}"
        assert all(isinstance(d, int) and d > 0 for d in (*grid, *block)), (grid, block)
        assert block[0] <= 1024 and len(grid) == len(block) == 1
        self.cupy.launches.append(
            {
                "kernel": self.name,
                "grid": grid,
                "block": block,
                "device": self.device,
                "stream": self.cupy.streams[-1] if self.cupy.streams else None,
                "n": int(args[[p for _, p in self.params].index("n")]),
            }
        )
        named = {pname: arg for arg, (_, pname) in zip(args, self.params, strict=True)}
        threads = list(range(grid[0] * block[0]))
        self.cupy.rng.shuffle(threads)
        EMULATED[self.name](threads, **named)


def _flat(a: FakeArray) -> list[int]:
    return a.tensor.reshape(-1).tolist()


def _store(a: FakeArray, values: list[int]) -> None:
    signed = [v - (1 << 64) if v >= 1 << 63 else v for v in values]
    a.tensor.copy_(torch.tensor(signed, dtype=a.tensor.dtype).view(a.tensor.shape))


def _home(key: int, bits: int) -> int:
    return ((key * exit_table.GOLDEN) % (1 << 64)) >> (64 - bits)


EMPTY_KEY = (1 << 64) - 1


def emulate_insert(
    threads, keys, layers, amounts, n, table_keys, counts, capacity, bits, num_layers, overflow
) -> None:
    """CUDA_SOURCE's exit_table_insert, one thread after another."""
    key_of, layer_of, amount_of = _flat(keys), _flat(layers), _flat(amounts)
    table = [k % (1 << 64) for k in _flat(table_keys)]
    flat, over = _flat(counts), _flat(overflow)
    for i in threads:
        if i >= n:
            continue
        key = key_of[i] % (1 << 64)
        slot = _home(key, int(bits))
        for _ in range(int(capacity)):
            held = table[slot]
            if held == EMPTY_KEY:
                table[slot] = key
            if held in (EMPTY_KEY, key):
                flat[slot * int(num_layers) + layer_of[i] - 1] += amount_of[i]
                break
            slot = (slot + 1) & (int(capacity) - 1)
        else:
            over[0] = 1
    _store(table_keys, table)
    _store(counts, flat)
    _store(overflow, over)


def emulate_lookup(threads, keys, n, table_keys, capacity, bits, slots) -> None:
    """CUDA_SOURCE's exit_table_lookup, one thread after another."""
    key_of, table, found = _flat(keys), [k % (1 << 64) for k in _flat(table_keys)], _flat(slots)
    for i in threads:
        if i >= n:
            continue
        found[i] = -1
        if key_of[i] >= 0:
            key = key_of[i]
            slot = _home(key, int(bits))
            for _ in range(int(capacity)):
                if table[slot] == key:
                    found[i] = slot
                    break
                if table[slot] == EMPTY_KEY:
                    break
                slot = (slot + 1) & (int(capacity) - 1)
    _store(slots, found)


EMULATED = {"exit_table_insert": emulate_insert, "exit_table_lookup": emulate_lookup}


def test_the_emulated_kernels_are_the_sources() -> None:
    """The fake knows every kernel of CUDA_SOURCE, with its parameters' types in order."""
    assert kernel_signatures(CUDA_SOURCE) == {
        "exit_table_insert": [
            ("long long*", "keys"),
            ("long long*", "layers"),
            ("int*", "amounts"),
            ("long long", "n"),
            ("unsigned long long*", "table_keys"),
            ("int*", "counts"),
            ("long long", "capacity"),
            ("int", "bits"),
            ("int", "num_layers"),
            ("int*", "overflow"),
        ],
        "exit_table_lookup": [
            ("long long*", "keys"),
            ("long long", "n"),
            ("unsigned long long*", "table_keys"),
            ("long long", "capacity"),
            ("int", "bits"),
            ("long long*", "slots"),
        ],
    }
    for name, params in kernel_signatures(CUDA_SOURCE).items():
        assert list(inspect.signature(EMULATED[name]).parameters)[1:] == [p for _, p in params]


@pytest.fixture
def fake_cupy(monkeypatch: pytest.MonkeyPatch, fake_cuda: FakeCuda) -> Iterator[FakeCupy]:
    """A fake CuPy (and the fake torch.cuda) under the fake-GPU tensor mode."""
    cupy = FakeCupy()
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    exit_table._cuda_kernels.cache_clear()  # compiled per process: none from another test
    with OnFakeGpu():
        yield cupy
    exit_table._cuda_kernels.cache_clear()


# --- geep/methods/exit_table.py --------------------------------------------------------------------------


def test_cuda_table_equals_the_cpu_table(fake_cupy: FakeCupy, fake_cuda: FakeCuda) -> None:
    """_check_cuda, the current device's index, _cuda_insert (growth and rehash too), _launch
    and the lookup kernel: the same table as the CPU backend's."""
    rng = random.Random(1)
    gpu, cpu = ExitTable(L, capacity=16, device="cuda"), ExitTable(L, capacity=16)
    assert (gpu.backend, gpu.device) == ("cuda", GPU)
    assert on_gpu(gpu._keys) and on_gpu(gpu._counts)
    pool = [*range(30), 2**62 + 5, 2**63 - 1, *(rng.randrange(2**63) for _ in range(40))]
    for size in (6, 25, 90):
        batch = [rng.choice(pool) for _ in range(size)]
        args = [
            torch.tensor(batch),
            torch.tensor([rng.randint(1, L) for _ in batch]),
            torch.tensor([rng.randint(0, 3) for _ in batch]),
        ]
        gpu.add(*(a.cuda() for a in args))
        cpu.add(*args)
        assert (len(gpu), gpu.capacity) == (len(cpu), cpu.capacity)
    assert gpu.capacity > 16  # grew: the rehash ran through the insert kernel
    for mine, theirs in zip(gpu.items(), cpu.items(), strict=True):
        assert torch.equal(mine, theirs) and not on_gpu(mine)
    queries = torch.tensor([*pool, -1, -(2**63), 12345])
    rows = gpu.lookup(queries.cuda())
    assert on_gpu(rows) and rows.dtype == torch.int32
    assert torch.equal(rows.cpu(), cpu.lookup(queries))
    kernels = {launch["kernel"] for launch in fake_cupy.launches}
    assert kernels == {"exit_table_insert", "exit_table_lookup"}
    for launch in fake_cupy.launches:  # on torch's stream of the table's GPU, enough threads
        assert (launch["device"], launch["stream"]) == (1, STREAM + 1)
        assert launch["block"] == (256,) and launch["grid"] == (math.ceil(launch["n"] / 256),)
    assert fake_cupy.modules == [1]  # compiled once for the device
    assert fake_cuda.called("current_stream")[0] == {"device": GPU}


def test_from_samples_on_a_named_gpu_compiles_for_it(fake_cupy: FakeCupy) -> None:
    keys = torch.tensor([[5, 6, -1], [5, 7, 9], [6, -1, -1]])
    exits = torch.tensor([2, 4, 2])
    table = ExitTable.from_samples(keys.cuda(), exits.cuda(), L, device="cuda:0")
    assert table.device == torch.device("cuda", 0) and fake_cupy.modules == [0]
    cpu = ExitTable.from_samples(keys, exits, L)
    for mine, theirs in zip(table.items(), cpu.items(), strict=True):
        assert torch.equal(mine, theirs)
    assert {(x["device"], x["stream"]) for x in fake_cupy.launches} == {(0, STREAM)}


def test_a_full_cuda_table_reports_the_kernels_overflow(
    fake_cupy: FakeCupy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ExitTable, "_reserve", lambda self, num_keys: False)  # never grows
    table = ExitTable(L, capacity=16, device="cuda")
    with pytest.raises(GeepError, match="insert probed all 16 slots"):
        table.add(torch.arange(17).cuda(), torch.ones(17, dtype=torch.int64).cuda())


def test_cuda_table_without_a_cuda_device_is_refused(
    fake_cupy: FakeCupy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(GeepError, match="torch sees no CUDA device"):
        ExitTable(L, device="cuda")


# --- geep/pipeline/evaluate.py, geep/core/interface.py, geep/reproduce/units.py ---------------------------------------


@pytest.fixture(scope="module")
def bert(tiny_model: Path) -> runner.Method:
    """An untrained ``bert`` (its predictions do not matter here, only what it calls)."""
    return new_method("bert", tiny_model)


@pytest.fixture
def bert_on_gpu(bert: runner.Method, monkeypatch: pytest.MonkeyPatch) -> runner.Method:
    """``bert`` whose device is the fake ``cuda:1`` (its weights stay on the CPU)."""
    monkeypatch.setattr(type(bert), "device", property(lambda self: GPU))
    return bert


def record_moves(monkeypatch: pytest.MonkeyPatch) -> list[torch.device]:
    """The devices every ``Method.to`` call is given from now on (the real one still runs: under
    :class:`OnFakeGpu` it moves nothing)."""
    moves = []
    real_to = runner.Method.to

    def to(self: runner.Method, *args: Any, **kwargs: Any) -> runner.Method:
        device = inspect.signature(real_to).bind(self, *args, **kwargs).arguments["device"]
        moves.append(torch.device(device))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(runner.Method, "to", to)
    return moves


def test_prepare_checkpoint_moves_the_method_to_the_gpu(
    bert: runner.Method, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_cuda: FakeCuda
) -> None:
    bert.save(tmp_path / "bert")
    moves = record_moves(monkeypatch)
    with OnFakeGpu():
        method = evaluation.prepare_checkpoint(tmp_path / "bert")
    assert moves == [torch.device("cuda")]
    assert type(method).name == "bert"


def test_timed_batches_synchronize_the_gpu(bert_on_gpu: runner.Method, fake_cuda: FakeCuda) -> None:
    data = toy_test_split(bert_on_gpu)
    with OnFakeGpu():
        out = bert_on_gpu.run(data, 0.0, 16)
    assert len(out.labels) == len(data) and len(out.batch_seconds) == 3
    # after every batch, and after the end of the batches is found
    assert fake_cuda.called("synchronize") == [{"device": GPU}] * 4


def test_out_of_memory_on_a_gpu_empties_its_cache(
    bert: runner.Method, monkeypatch: pytest.MonkeyPatch, fake_cuda: FakeCuda, capsys
) -> None:
    data = toy_test_split(bert)
    run = bert.run

    def limited(data, speed, batch_size, **kwargs):
        if min(batch_size, len(data)) > 4:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return run(data, speed, batch_size, **kwargs)

    monkeypatch.setattr(bert, "run", limited)
    assert bert.warm_up(data, 0.0, 16) == 4
    assert fake_cuda.called("empty_cache") == [{}, {}]  # after 16 and after 8
    assert "at batch size 8; trying 4" in capsys.readouterr().err
    monkeypatch.setattr(bert, "run", out_of_memory)
    with pytest.raises(GeepError, match="even at batch size 1"):
        bert.warm_up(data, 0.0, 2)
    assert len(fake_cuda.called("empty_cache")) == 4  # and after 2 and after 1


def out_of_memory(*args: Any, **kwargs: Any) -> None:
    raise torch.OutOfMemoryError("CUDA out of memory (simulated)")


def test_device_name_of_a_gpu_is_cudas_name(fake_cuda: FakeCuda) -> None:
    assert device_name(GPU) == NAME
    assert fake_cuda.called("get_device_name") == [{"device": GPU}]


# --- geep/model/train_state.py, geep/model/training.py -------------------------------------------------------


def spy_on(cls: type, calls: list[dict[str, Any]]) -> Callable[..., Any]:
    """``cls`` as a callable that checks its arguments against ``cls``'s own signature and
    records them, then builds the real thing for the CPU (there is no GPU to ask for)."""

    def build(*args: Any, **kwargs: Any) -> Any:
        calls.append(dict(inspect.signature(cls).bind(*args, **kwargs).arguments))
        return cls(*args, **{**kwargs, "cpu": True})

    return build


def test_this_process_asks_accelerate_for_the_gpu(
    monkeypatch: pytest.MonkeyPatch, fake_cuda: FakeCuda
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(train_state, "PartialState", spy_on(train_state.PartialState, calls))
    train_state.this_process()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    train_state.this_process()
    assert [c.get("cpu") for c in calls] == [False, True]


def test_train_loop_asks_accelerate_for_the_gpu(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, fake_cuda: FakeCuda
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(training, "Accelerator", spy_on(training.Accelerator, calls))
    method = new_method("bert", tiny_model, epochs=1)
    trained_on_toy(method)
    assert [c.get("cpu") for c in calls] == [False]
    # AdamW's step asks torch.accelerator whether a graph is being captured: the fake answers
    assert fake_cuda.called("accelerator.current_stream")


def test_training_state_keeps_every_gpus_generator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = train_state.TrainState(tmp_path / "state", {"run": 1}, every_s=0.0)
    fake_cuda = FakeCuda(monkeypatch)  # after the state found its (CPU) process
    saved = [s.clone() for s in fake_cuda.rng]
    model = torch.nn.Linear(2, 2)
    progress = {"desc": "train", "steps": 1, "total": 2, "done": False}
    state.save(0, progress, [0.5], model)
    fake_cuda.rng = [torch.zeros(16, dtype=torch.uint8)] * 2  # the generators moved on
    state.restore(model)
    assert fake_cuda.called("get_rng_state_all") == [{}]
    assert [torch.equal(a, b) for a, b in zip(fake_cuda.rng, saved, strict=True)] == [True] * 2


# --- the benchmark harness and geep/report/results.py ----------------------------------------------------


def test_each_xdist_worker_takes_a_gpu_of_its_own(
    monkeypatch: pytest.MonkeyPatch, fake_cuda: FakeCuda
) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "4")
    bench_conftest.pytest_configure(None)
    assert fake_cuda.called("set_device") == [{"device": 1}]  # worker 3 of 4 on 2 GPUs


def test_calibration_on_a_gpu_is_fitted_with_overlap(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_cuda: FakeCuda
) -> None:
    """The latency calibration moves its model to the GPU and names the GPU and the cuda
    backend; the report then fits the model of a GPU (overlap=True) on its points."""
    profile = types.SimpleNamespace(
        name="fake",
        datasets=("toy",),
        seeds=(42,),
        max_eval=None,
        model_for=lambda dataset: str(tiny_model),
        train_config=lambda method, dataset, seed: TrainConfig(seq_len=16),
    )
    labels = types.SimpleNamespace(names=["negative", "positive"])
    dev = {"dev": types.SimpleNamespace(features={"label": labels})}
    monkeypatch.setattr(calibration, "load_dataset", lambda dataset: dev)
    monkeypatch.setattr(
        calibration,
        "load_split",
        lambda method, *args: types.SimpleNamespace(data=toy_test_split(method)),
    )
    monkeypatch.setattr(calibration, "SIZES", (1, 4))  # six points: enough to fit, quick
    moves = record_moves(monkeypatch)
    monkeypatch.setattr(runner.Method, "device", property(lambda self: GPU))
    with OnFakeGpu():
        measured = calibration.Calibration(profile)
        measured.time_round()
    assert moves == [torch.device("cuda")]
    assert (measured.header["device"], measured.header["backend"]) == (NAME, "cuda")
    path = tmp_path / report.CALIBRATION_FILE
    measured.write(path)

    fits = []
    real_fit = report.fit_device

    def fit(*args: Any, **kwargs: Any) -> Any:
        fits.append(inspect.signature(real_fit).bind(*args, **kwargs).arguments)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(report, "fit_device", fit)
    point = json.loads(path.read_text())["points"][0]
    frame = pd.DataFrame(
        {
            "method": ["bert"],
            "dataset": ["toy"],
            "seed": [42],
            "calls": [point["calls"]],
            "operators": [point["operators"]],
            "round_seconds_median": [point["seconds"]],
            "git_commit": ["c1"],
        }
    )
    out, device = report.with_latency_model(frame, tmp_path)
    assert [(f["name"], f["overlap"]) for f in fits] == [(NAME, True)]
    assert device is not None and np.isfinite(out["modelled_seconds"]).all()


class FakeBenchmark:
    """pytest-benchmark's fixture, as far as the harness uses it: runs ``fn`` once."""

    def __init__(self) -> None:
        self.extra_info: dict[str, Any] = {}
        self.stats = types.SimpleNamespace(stats=types.SimpleNamespace(median=1e-3))

    def pedantic(self, fn: Callable[[], object], **kwargs: Any) -> None:
        fn()


@pytest.fixture(scope="module")
def geep_method(tiny_model: Path) -> runner.Method:
    return trained_on_toy(new_method("geep", tiny_model, epochs=1))


def test_exit_table_rates_on_a_gpu_use_the_cuda_table_and_synchronize(
    geep_method: runner.Method,
    fake_cupy: FakeCupy,
    fake_cuda: FakeCuda,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """GEEP's exit-table benchmark on a GPU: both tables on the device, the CUDA one built and
    probed by the kernels, every timed lookup synchronized."""
    geep = geep_method
    monkeypatch.setattr(type(geep), "device", property(lambda self: GPU))
    benchmark = FakeBenchmark()
    efficiency.test_exit_table_rates(benchmark, geep, toy_test_split(geep), {"method": "geep"})
    info = benchmark.extra_info
    assert info["table_keys"] == len(geep.exit_table(0.4)) > 0 and info["lookup_keys"] > 0
    assert geep.exit_table(0.4).backend == "cuda"
    assert {x["kernel"] for x in fake_cupy.launches} == {"exit_table_insert", "exit_table_lookup"}
    assert fake_cuda.called("synchronize") == [{"device": GPU}] * 21  # the lookup, 20 dense


# --- geep/reproduce/gpu_check.py ---------------------------------------------------------------------------


@pytest.fixture
def small_graphs(monkeypatch: pytest.MonkeyPatch) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The graphs check's CUDA grid cut to four points at lengths DRY_SIZE's model holds (its
    seq_len is 12: GRAPH_LENGTHS' 32 and 128 do not fit) and two timed repeats."""
    monkeypatch.setattr(gpu_check, "GRAPH_SIZES", (1, 4))
    monkeypatch.setattr(gpu_check, "GRAPH_LENGTHS", (6, 12))
    monkeypatch.setattr(gpu_check, "GRAPH_REPEATS", 2)
    return gpu_check.GRAPH_SIZES, gpu_check.GRAPH_LENGTHS


WAYS = ["eager", "layer graphs", "whole graph"]


def test_the_graphs_check_on_a_gpu_captures_and_replays_cuda_graphs(
    tmp_path: Path, fake_cuda: FakeCuda, small_graphs: tuple[tuple[int, ...], tuple[int, ...]]
) -> None:
    """check_graphs on cuda:1: each point timed eager, as per-call graphs and as one graph of
    the whole forward (_graphed: a side-stream warm-up, captures into one pool, replays), every
    timed run synchronised, the cache emptied after each point, the fits named after the GPU."""
    sizes, lengths = small_graphs
    model = gpu_check.make_model(tmp_path, DRY_SIZE)
    with OnFakeGpu():
        result = gpu_check.check_graphs(GPU, DRY_SIZE, model)
    assert result.passed and result.name == "graphs", result.summary
    points = result.details["points"]
    assert [(p["length"], p["batch_size"]) for p in points] == [
        (t, b) for t in lengths for b in sizes
    ]
    assert all(list(p["seconds"]) == WAYS for p in points)
    models = result.details["models"]
    assert [(w, m["name"], m["overlap"]) for w, m in models.items()] == [
        (w, f"{NAME} ({w})", True) for w in WAYS
    ]
    assert "whole graph" in result.summary

    layers, runs = DRY_SIZE.layers, 1 + gpu_check.GRAPH_REPEATS  # an untimed call, the timed
    per_point = layers + 3  # the whole forward; embeddings, each layer, the head
    assert len(fake_cuda.graphs) == len(points) * per_point
    assert len(fake_cuda.side_streams) == len(fake_cuda.pools) == len(points)
    default, expected = fake_cuda.default[GPU.index], []
    for n, (side, pool) in enumerate(zip(fake_cuda.side_streams, fake_cuda.pools, strict=True)):
        graphs = fake_cuda.graphs[n * per_point : (n + 1) * per_point]
        kinds = [
            [m for m in g.modules if m in ("BertEmbeddings", "BertLayer", "PoolerClassifier")]
            for g in graphs
        ]
        assert kinds == [
            ["BertEmbeddings", *["BertLayer"] * layers, "PoolerClassifier"],  # the whole
            ["BertEmbeddings"],
            *[["BertLayer"]] * layers,
            ["PoolerClassifier"],
        ]
        assert all(g.captured for g in graphs) and [g.replays for g in graphs] == [runs] * per_point
        # a side stream of the GPU waits for the current one, runs the warm-up, is waited for;
        # then each graph is captured into the point's pool
        assert side.device_index == GPU.index
        expected += [
            ("Stream", {}),
            ("Stream.wait_stream", {"self": side, "stream": default}),
            ("stream", {"stream": side}),
            ("Stream.wait_stream", {"self": default, "stream": side}),
            *(("graph", {"cuda_graph": g, "pool": pool}) for g in graphs),
        ]
    names = ("Stream", "Stream.wait_stream", "stream", "graph")
    assert [(n, a) for n, a in fake_cuda.calls if n in names] == expected
    assert fake_cuda.called("synchronize") == [{"device": GPU}] * (len(points) * len(WAYS) * runs)
    assert fake_cuda.called("empty_cache") == [{}] * len(points)


def test_the_check_on_a_gpu_writes_its_name_and_the_datasheet_model(
    tmp_path: Path,
    fake_cupy: FakeCupy,
    fake_cuda: FakeCuda,
    monkeypatch: pytest.MonkeyPatch,
    small_graphs: tuple[tuple[int, ...], tuple[int, ...]],
) -> None:
    """run_checks without --dry-run on the fake GPU (at DRY_SIZE): the current device, the CUDA
    exit table against the CPU's, the calibration (the only check that reaches _datasheet: the
    fake's name holds "H200") and the graphs; gpu-check.json names the GPU."""
    small = replace(DRY_SIZE, table_keys=500, calibration_lengths=(6,))  # 3 calibration points
    monkeypatch.setattr(gpu_check, "GPU_SIZE", small)
    monkeypatch.setattr(runner.Method, "device", property(lambda self: GPU))
    table_syncs = []  # the synchronisations of the exit-table check
    check_exit_table = gpu_check.check_exit_table

    def spied(*args: Any, **kwargs: Any) -> gpu_check.CheckResult:
        before = len(fake_cuda.called("synchronize"))
        result = check_exit_table(*args, **kwargs)
        table_syncs.extend(fake_cuda.called("synchronize")[before:])
        return result

    monkeypatch.setattr(gpu_check, "check_exit_table", spied)
    only = ("exit-table", "calibration", "graphs")
    _, path = gpu_check.run_checks(dry_run=False, out=tmp_path, commit="x", only=only)
    assert path == tmp_path / gpu_check.CHECK_FILE
    document = json.loads(path.read_text())
    checks = {c["name"]: c for c in document["checks"]}
    assert list(checks) == list(only) and all(c["passed"] for c in checks.values()), checks
    assert document["passed"] and not document["dry_run"] and document["device"] == NAME
    assert document["versions"]["cupy"] == fake_cupy.__version__
    assert checks["exit-table"]["details"]["backend"] == "cuda"
    assert table_syncs == [{"device": GPU}]  # before the CUDA table's time is read
    assert {(x["device"], x["stream"]) for x in fake_cupy.launches} == {(1, STREAM + 1)}
    models = checks["calibration"]["details"]["models"]
    assert models["fitted"]["name"] == NAME and models["fitted"]["overlap"]
    datasheet = models["datasheet"]
    assert datasheet["name"] == f"{NAME}, float32 (modelled)" and datasheet["overlap"]
    assert datasheet["flops_per_second"] == pytest.approx(0.6 * 67e12)
    assert datasheet["bytes_per_second"] == pytest.approx(0.8 * 4.8e12)
    assert list(checks["graphs"]["details"]["models"]) == WAYS and fake_cuda.graphs
    assert document["size"] == json.loads(json.dumps(asdict(small)))
    assert fake_cuda.called("current_device") == [{}]  # run_checks' device: cuda:1
    for name in ("get_device_name", "synchronize"):
        assert fake_cuda.called(name) and {str(a) for a in fake_cuda.called(name)} == {
            str({"device": GPU})
        }
    assert f"on {NAME}" in (tmp_path / "tables.md").read_text()
