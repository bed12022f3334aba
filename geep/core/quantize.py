"""The reference an engineer would try before early exit: the same model in dynamic int8.

:func:`int8` copies a trained method and replaces every ``nn.Linear`` of its model (the
encoder's attention and feed-forward projections, the pooler and the exit heads) by torch's
dynamically quantized linear layer: weights stored in int8 per tensor, activations quantized on
the fly per batch, accumulation in int32 (PyTorch's dynamic-quantization tutorial for BERT does
the same). Embeddings, layer norms and softmax stay in float32. The copy keeps the method's exit
rule and options, so an early-exit method in int8 shows whether the two savings stack.

torch 2.13 marks ``torch.ao.quantization`` deprecated in favour of the separate torchao package;
it still works and needs nothing beyond torch, so the suite uses it (its warnings are silenced).
torch's quantized kernels (fbgemm on x86, qnnpack on ARM) run on the CPU only. The work
counters (:mod:`geep.measure.work`) still count the float32 FLOPs a call would execute; a quantized
layer's weight bytes are not counted, so the latency model does not apply to int8 runs.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from geep.common.errors import GeepError
from geep.core.interface import Method


def int8(method: Method) -> Method:
    """A copy of ``method`` whose linear layers run in dynamic int8 on the CPU (the original is
    left as it was)."""
    if method.device.type != "cpu":
        raise GeepError(f"int8 runs on the CPU only: {method.name} is on {method.device}")
    from torch.ao.quantization import quantize_dynamic  # torch's own dynamic quantisation

    model = copy.deepcopy(method.model).eval()
    with warnings.catch_warnings():  # deprecated in favour of torchao (module docstring)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        quantized = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
    info = copy.deepcopy(method.info)
    extras = dict(method.extras)
    return type(method)(quantized, method.tokenizer, info, extras)


def is_int8(method: Method) -> bool:
    """Whether the method's linear layers are dynamically quantized (:func:`int8`)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return any(isinstance(m, DynamicLinear) for m in method.model.modules())
