"""A trained method run by ONNX Runtime on the CPU, in float32 or dynamic int8: a runtime of the
method, not a method of its own (it is registered nowhere and keeps the method's class, name,
options and exit rule, as :func:`geep.core.quantize.int8` does).

Two ways to export it, both with ``torch.onnx.export`` (the dynamo exporter) and dynamic batch
and token axes:

- :func:`onnx_whole`: a full-depth model's ``logits(batch)`` (``bert``: embeddings, every layer
  with the suite's own mask handling, the sentence vector and the pooler classifier) as one
  graph, so ONNX Runtime optimises across the whole model;
- :func:`onnx_pieces`: a dynamic-exit method's model as layer pieces, one graph each for the
  embeddings, every encoder layer and every exit head. Each piece takes the place of the torch
  module it was exported from, so the method's own exit loop (:mod:`geep.core.dynamic_exit`,
  Python) runs unchanged between the graphs: samples leave after any layer, under any batching
  policy.

int8 is ONNX Runtime's ``quantize_dynamic`` on the ``MatMul`` nodes with a weight (the linear
layers; attention's products of activations stay float32): weights in int8 per tensor,
activations quantized per call, as torch's dynamic int8 does for its linear layers; embeddings,
layer norms and softmax stay in float32. Sessions use the CPU execution provider with torch's
thread count, whose threads sleep between calls (spinning ones took the cores from the torch
code between pieces: on the 2-core CPU a layer-pieces run took several times as long). The work
counters (:mod:`geep.measure.work`) still count the embedding and layer
calls; a piece holds no torch weights, so no weight bytes are counted, and a head's own count
(taken inside the torch head) is not, so the latency model does not apply to these runs.

onnx, onnxscript and onnxruntime come with the optional extra: ``pip install 'geep[onnx]'``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from geep.common.errors import GeepError
from geep.core.dynamic_exit import DynamicExitMethod
from geep.core.interface import Method
from geep.data.encoding import Batch, Encoded

if TYPE_CHECKING:
    import onnxruntime

Precision = Literal["fp32", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "int8")
EXTRA = "pip install 'geep[onnx]'"


def onnx_available() -> bool:
    """Whether the ``onnx`` extra is installed (onnx, onnxscript and onnxruntime)."""
    try:
        _modules()
    except GeepError:
        return False
    return True


def _modules() -> tuple[Any, Any]:
    """onnxruntime and its quantization module, imported here: only these runs need them."""
    try:
        import onnx  # noqa: F401 (the exporter's)
        import onnxruntime
        import onnxscript  # noqa: F401 (the exporter's)
        from onnxruntime import quantization
    except ImportError as err:
        raise GeepError(
            f"ONNX Runtime needs the onnx extra ({err.name} is missing): {EXTRA}"
        ) from None
    return onnxruntime, quantization


class OnnxGraph(nn.Module):
    """One exported graph in an ONNX Runtime session, called as the torch module it was
    exported from was called (the same positional and keyword tensors); returns its one output.

    Inputs go to the session as numpy views of the tensors and the output comes back as a
    tensor over the session's array: no copies."""

    def __init__(
        self, session: onnxruntime.InferenceSession, positional: int, keywords: tuple[str, ...]
    ) -> None:
        super().__init__()
        self.session = session
        self.positional, self.keywords = positional, keywords
        self.names = [i.name for i in session.get_inputs()]

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        if len(args) != self.positional or sorted(kwargs) != sorted(self.keywords):
            raise RuntimeError(
                f"a graph exported for {self.positional} positional inputs and keywords "
                f"{list(self.keywords)} was called with {len(args)} and {sorted(kwargs)}"
            )
        tensors = [*args, *(kwargs[k] for k in self.keywords)]
        feed = {
            n: t.detach().contiguous().numpy() for n, t in zip(self.names, tensors, strict=True)
        }
        return torch.from_numpy(self.session.run(None, feed)[0])


class OnnxLayer(OnnxGraph):
    """An encoder layer's graph, called as the layer is: ``(hidden [B, T, H], mask)``, where
    a mask of None (``Backbone.layer_mask``: nothing is masked) stands for every key kept."""

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(hidden, _full_mask(hidden) if mask is None else mask)


def _full_mask(hidden: torch.Tensor) -> torch.Tensor:
    """The layers' boolean mask [B, 1, T, T] (transformers' SDPA form) that masks nothing."""
    b, t, _ = hidden.shape
    return torch.ones(b, 1, t, t, dtype=torch.bool)


class OnnxClassifier(nn.Module):
    """A full-depth classifier whose ``forward_logits`` runs as one graph. ``backbone`` is the
    torch model's, shared and never run: the suite asks it the model's shape (its layers and
    widths, for FLOPs)."""

    def __init__(self, source: nn.Module, graph: OnnxGraph) -> None:
        super().__init__()
        self.backbone = source.backbone
        self.graph = graph

    def forward_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        """[B, T] inputs -> [B, C] logits after all layers."""
        return self.graph(input_ids, attention_mask, token_type_ids)

    def logits(self, batch: Batch) -> torch.Tensor:
        return self.forward_logits(batch.input_ids, batch.attention_mask, batch.token_type_ids)


class _Logits(nn.Module):
    """What :func:`onnx_whole` exports: a model's ``forward_logits`` on the three input
    tensors."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        return self.model.forward_logits(input_ids, attention_mask, token_type_ids)


class _Flat(nn.Module):
    """A module called with tensors only, positional first then keywords, as one argument list
    (what the exporter traces)."""

    def __init__(self, module: nn.Module, positional: int, keywords: tuple[str, ...]) -> None:
        super().__init__()
        self.module, self.positional, self.keywords = module, positional, keywords

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        named = dict(zip(self.keywords, tensors[self.positional :], strict=True))
        return self.module(*tensors[: self.positional], **named)


def onnx_whole(method: Method, example: Encoded, precision: Precision = "fp32") -> Method:
    """A copy of a full-depth ``method`` (``inference_of``: full-depth, a model answering
    ``forward_logits(input_ids, attention_mask, token_type_ids)``) whose model runs as one ONNX
    Runtime graph in ``precision``; traced on
    a batch of ``example`` (module docstring). The original is left as it was."""
    _check(method, precision)
    if method.inference_of(method.options) != "full-depth" or not hasattr(
        method.model, "forward_logits"
    ):
        raise GeepError(
            f"{method.name} is not a full-depth classifier: only one exports as one graph "
            "(a dynamic-exit method exports as layer pieces)"
        )
    batch = _example_batch(method, example)
    inputs = (batch.input_ids, batch.attention_mask, batch.token_type_ids)
    graph = _graph(_Logits(method.model), inputs, {}, inputs[0].shape[1], precision, OnnxGraph)
    return type(method)(
        OnnxClassifier(method.model, graph),
        method.tokenizer,
        copy.deepcopy(method.info),
        dict(method.extras),
    )


def onnx_pieces(method: Method, example: Encoded, precision: Precision = "fp32") -> Method:
    """A copy of a dynamic-exit ``method`` whose embeddings, encoder layers and exit heads each
    run as an ONNX Runtime graph in ``precision``, driven by the method's own exit loop; each
    piece is traced on its first call while a batch of ``example`` runs through every layer and
    head (module docstring). The original is left as it was.

    GeepError for a method whose pieces cannot be exported so: one that does not run its
    layers whole or calls a head with more than tensors (a layer number, say)."""
    _check(method, precision)
    if not isinstance(method, DynamicExitMethod):
        raise GeepError(
            f"{method.name} does not exit through the dynamic-exit loop: layer pieces serve "
            "only methods that call whole layers and heads between them"
        )
    model = copy.deepcopy(method.model).eval()
    runtime = type(method)(model, method.tokenizer, copy.deepcopy(method.info), dict(method.extras))
    backbone = model.backbone
    layers = backbone.encoder.encoder.layer
    pieces: dict[str, tuple[nn.Module, type[OnnxGraph]]] = {
        "embeddings": (backbone.encoder.embeddings, OnnxGraph),
        **{f"layer {i + 1}": (layer, OnnxLayer) for i, layer in enumerate(layers)},
        **{name: (head, OnnxGraph) for name, head in _heads(model)},
    }
    batch = _example_batch(method, example)
    calls = _first_calls(runtime, batch, {n: m for n, (m, _) in pieces.items()})
    for name, (module, kind) in pieces.items():
        if name not in calls:
            raise GeepError(
                f"{method.name}'s {name} is not called whole on the way through its layers: "
                "it cannot be exported as a layer piece"
            )
        args, kwargs = calls[name]
        if kind is OnnxLayer and args[1:2] == (None,):  # nothing masked in the example
            args = (args[0], _full_mask(args[0]), *args[2:])
        if not all(isinstance(a, torch.Tensor) for a in (*args, *kwargs.values())):
            raise GeepError(
                f"{method.name}'s {name} is called with more than tensors (a layer number, "
                "say): it cannot be exported as a layer piece"
            )
        graph = _graph(module, args, kwargs, batch.input_ids.shape[1], precision, kind)
        _replace(model, module, graph)
    return runtime


def _check(method: Method, precision: Precision) -> None:
    _modules()
    if precision not in PRECISIONS:
        raise GeepError(f"ONNX Runtime runs in {' or '.join(PRECISIONS)}, not {precision!r}")
    if method.device.type != "cpu":
        raise GeepError(f"ONNX Runtime runs on the CPU here: {method.name} is on {method.device}")


def _example_batch(method: Method, example: Encoded) -> Batch:
    """The batch the exporter traces: the longest and the shortest samples of ``example``, so it
    has two rows (a size-1 axis would be traced as a constant) and, where lengths differ,
    padding. Its width must differ from the hidden size, or the tokens axis could not be told
    from the hidden one: the longest sample of another length is taken."""
    lengths = example.lengths
    longest = torch.nonzero(lengths != method.backbone.hidden_size).flatten()
    if len(example) < 2 or len(longest) == 0:
        raise GeepError(
            "exporting to ONNX needs an example of at least two samples, one of them not "
            f"{method.backbone.hidden_size} tokens long"
        )
    first = longest[torch.argmax(lengths[longest])]
    return example.batch(torch.stack([first, torch.argmin(lengths)]))


def _heads(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """The model's modules besides its backbone (a module list's each), by name: its heads."""
    for name, child in model.named_children():
        if name == "backbone":
            continue
        if isinstance(child, nn.ModuleList):
            yield from ((f"{name} {i + 1}", m) for i, m in enumerate(child))
        else:
            yield name, child


@torch.no_grad()  # not inference mode: the exporter cannot trace inference tensors
def _first_calls(
    method: DynamicExitMethod, batch: Batch, modules: dict[str, nn.Module]
) -> dict[str, tuple[tuple[Any, ...], dict[str, Any]]]:
    """The arguments of each module's first call while ``batch`` runs through every layer and
    the head after each (nobody exits)."""
    calls: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}

    def keep(name: str) -> Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            calls.setdefault(name, (args, kwargs))

        return hook

    hooks = [m.register_forward_pre_hook(keep(n), with_kwargs=True) for n, m in modules.items()]
    try:
        hidden, mask = method.backbone.embed(**batch.inputs())
        for layer in range(1, method.num_layers + 1):
            hidden = method.backbone.run_layers(hidden, mask, layer - 1, layer)
            method.exit_head(layer, hidden, batch.attention_mask)
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def _replace(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put ``new`` where ``old`` sits in ``model``'s module tree."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if child is old:
                setattr(parent, name, new)
                return
    raise AssertionError("the module to replace is not in the model")


def _graph(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    kwargs: dict[str, torch.Tensor],
    width: int,
    precision: Precision,
    kind: type[OnnxGraph],
) -> OnnxGraph:
    """``module`` exported on the example ``args`` and ``kwargs``, quantized for int8, loaded in
    a CPU session. Axis 0 of every input is the batch and an axis of the example's ``width`` the
    tokens: both dynamic."""
    onnxruntime, quantization = _modules()
    keywords = tuple(kwargs)
    flat = _Flat(module, len(args), keywords).eval()
    tensors = (*args, *kwargs.values())
    batch, tokens = torch.export.Dim("batch"), torch.export.Dim("tokens")
    shapes = (
        tuple(
            {0: batch} | {axis: tokens for axis in range(1, t.dim()) if t.shape[axis] == width}
            for t in tensors
        ),
    )
    with tempfile.TemporaryDirectory(prefix="geep-onnx-") as folder, _quiet():
        path = Path(folder) / "graph.onnx"
        program = torch.onnx.export(
            flat, tensors, dynamo=True, dynamic_shapes=shapes, verbose=False
        )
        program.save(str(path), external_data=False)
        if precision == "int8":
            quantized = Path(folder) / "int8.onnx"
            quantization.quantize_dynamic(
                path,
                quantized,
                weight_type=quantization.QuantType.QInt8,
                op_types_to_quantize=["MatMul"],
            )
            path = quantized
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        # its threads sleep between calls rather than spin: the exit loop's torch code, the
        # batcher and LoadGen need the cores between one piece and the next
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
    for given, shape in zip(session.get_inputs(), shapes[0], strict=True):
        if any(not isinstance(given.shape[axis], str) for axis in shape):
            raise RuntimeError(f"the exporter fixed a batch or token axis: {given.shape}")
    return kind(session, len(args), keywords)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's and the quantizer's progress lines and advice (warnings, logging and
    prints) silenced: they are not the user's to act on."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
