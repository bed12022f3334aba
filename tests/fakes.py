"""The fakes every GPU-branch test shares: each CUDA branch of the package and the benchmark
harness runs on the CPU through them, so a wrong call, keyword or field name in GPU code fails
in the tests and not on the first GPU it meets. Plain classes and functions; their fixtures
(``fake_cuda``, ``fake_cupy``, ``fake_nvml``, and ``bert`` / ``bert_on_gpu``) are registered in
tests/conftest.py, and tests/test_fakes.py checks the fakes themselves.

The fakes (the model: :class:`FakeNvml`, the utilisation monitor's):

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
  parsed from ``geep.methods.exit_table.CUDA_SOURCE`` (argument count, order and C types,
  arrays on the GPU and contiguous, the module's device and torch's stream current), then the
  kernel runs as Python on the shared tensors, its threads in random order.
- :class:`ReplayingGraphs`: a graph backend (geep.core.runtime) whose replay runs the captured
  function again on its static inputs and writes its outputs in place, as a CUDA graph's
  replay does: graphed inference then answers for real on the CPU.
- :class:`FakeNvml`: the part of ``pynvml`` (nvidia-ml-py) the utilisation monitor
  (geep.measure.monitor) reads, a GPU of known readings; its fixture also patches the
  ``torch.cuda`` peak-memory calls.
"""

from __future__ import annotations

import inspect
import random
import re
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from geep.core import interface as runner
from geep.measure import work
from geep.methods import exit_table

GPU = torch.device("cuda", 1)  # the fake machine's current device: the second of two
STREAM = 0x7F00_1000  # the raw cudaStream_t of torch's current stream on GPU 0 (+ index)
NAME = "Fake H200"


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


class ReplayingGraphs:
    """:class:`geep.core.runtime.GraphBackend` on the CPU: a capture runs ``run`` once for its
    outputs; a replay runs it again, uncounted (a real replay issues no Python calls), and
    copies the results into those outputs. :attr:`replays` counts the replays."""

    def __init__(self) -> None:
        self.replays = 0

    def capture(self, run: Callable[[], tuple[torch.Tensor, ...]]):
        outputs = run()

        def replay() -> None:
            self.replays += 1
            with work.paused():
                for static, fresh in zip(outputs, run(), strict=True):
                    static.copy_(fresh)

        return replay, outputs


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


# --- moves of a method ---------------------------------------------------------------------------


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


# --- NVML ----------------------------------------------------------------------------------------

MIB = 1024 * 1024


class FakeNvml(types.ModuleType):
    """The part of ``pynvml`` (nvidia-ml-py) the monitor uses: a GPU whose utilisation reads
    40 then 80 percent (then 80 on), with 100 then 300 MiB in use."""

    def __init__(self) -> None:
        super().__init__("pynvml")
        self.calls: list[str] = []
        self.readings = 0
        self.reset: list[torch.device] = []  # torch.cuda.reset_peak_memory_stats's calls

    def nvmlInit(self) -> None:
        self.calls.append("init")

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        self.calls.append(f"handle {index}")
        return f"gpu{index}"

    def nvmlDeviceGetUtilizationRates(self, handle: str) -> types.SimpleNamespace:
        assert handle == "gpu1"
        self.readings += 1
        return types.SimpleNamespace(gpu=40 if self.readings == 1 else 80, memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> types.SimpleNamespace:
        assert handle == "gpu1"
        return types.SimpleNamespace(used=(100 if self.readings == 1 else 300) * MIB)
