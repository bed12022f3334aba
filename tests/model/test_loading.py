"""Loading an encoder (geep.model.backbone.load_pretrained): the weights are float32 whatever
the folder stores."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModel

from geep.model.backbone import load_pretrained


def test_a_float16_model_folder_loads_in_float32_with_its_values(
    tiny_model: Path, tmp_path: Path
) -> None:
    """transformers 5 keeps a float16 checkpoint in float16 unless told otherwise; the methods
    train and run in float32 (AdamW's updates would round away in float16)."""
    half = AutoModel.from_pretrained(tiny_model).half()
    half.save_pretrained(tmp_path)
    backbone, _ = load_pretrained(str(tmp_path))
    assert {p.dtype for p in backbone.parameters()} == {torch.float32}
    loaded = backbone.encoder.state_dict()
    for key, value in half.state_dict().items():
        if key in loaded:
            assert torch.equal(loaded[key], value.float()), key
