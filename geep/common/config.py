"""Run settings as dataclasses, saved with every checkpoint: training and method options."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin, get_type_hints

from geep.common.errors import GeepError

if TYPE_CHECKING:
    from typing import Self  # Python 3.11+; only for type checkers


Precision = Literal["float32", "tf32", "bfloat16", "float16"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
"""The arithmetic inference can run in (geep.core.runtime)."""


DEFAULT_MODEL = "minilm-l6"
"""The encoder a run uses unless told otherwise: all-MiniLM-L6-v2, embedded
(geep.model.backbone)."""


@dataclass(frozen=True)
class TrainConfig:
    """Fine-tuning settings; ``max_train`` keeps a seeded random subset of the training split.

    The defaults suit the embedded 6-layer MiniLM on small CPU budgets. They were chosen on the
    rotten-tomatoes dev split (800 training samples, 1 epoch, length 48): lr 1e-4 at batch 16
    reached 0.757 dev accuracy where FastBERT's lr 2e-5 at batch 32 (docs/methods.md) stayed at the
    majority class (0.580): 25 small steps barely move a freshly initialised classifier. The
    papers' recipe (2e-5, batch 32, 3 epochs on BERT-base) is set explicitly where it is used.
    """

    epochs: int = 3
    batch_size: int = 16
    lr: float = 1e-4
    warmup: float = 0.1
    weight_decay: float = 0.01
    seq_len: int = 128
    seed: int = 42
    max_train: int | None = None
    batching: Literal["length", "random"] = "length"  # geep.model.training.EpochBatches

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (0 < self.lr < 1, f"--lr must lie in (0, 1), got {self.lr}"),
            (0 <= self.warmup < 1, f"warmup must lie in [0, 1), got {self.warmup}"),
            (self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}"),
            (8 <= self.seq_len <= 512, f"--seq-len must lie in 8..512, got {self.seq_len}"),
            (
                self.max_train is None or self.max_train >= 1,
                f"--max-train must be at least 1, got {self.max_train}",
            ),
            (
                self.batching in ("length", "random"),
                f"batching must be length or random, got {self.batching!r}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise GeepError(message)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def inference_option(default: Any) -> Any:
    """A method option that may be changed at evaluate time (``geep evaluate --option``)."""
    return field(default=default, metadata={"inference": True})


@dataclass(frozen=True)
class MethodOptions:
    """A method's switches, stored in its checkpoint; subclasses add typed fields.

    Fields are ``Literal[...]`` choices, ``int``, ``float`` or ``bool``. Fields made with
    :func:`inference_option` only change how a trained model is run; the others fix how it is
    trained.
    """

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise GeepError(
                f"unknown option {', '.join(sorted(unknown))}: "
                f"{'; '.join(cls.describe()) or 'none exist'}"
            )
        hints = get_type_hints(cls)
        for key, value in data.items():
            if not _has_type(value, hints[key]):
                raise GeepError(f"option {key}={value!r} is not {_type_name(hints[key])}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_settings(self, settings: Sequence[str], inference_only: bool = False) -> Self:
        """A copy with ``KEY=VALUE`` settings applied, each parsed and checked against its type."""
        hints = get_type_hints(type(self))
        known = {f.name: f for f in fields(self)}
        changes: dict[str, Any] = {}
        for setting in settings:
            key, sep, text = setting.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or key not in known:
                raise GeepError(
                    f"bad option '{setting}': use KEY=VALUE with KEY one of "
                    f"{', '.join(known) or '(this method has no options)'}"
                )
            if inference_only and not known[key].metadata.get("inference"):
                raise GeepError(
                    f"option {key} is fixed when the model is trained: retrain with "
                    f"`geep train --option {key}=...`"
                )
            changes[key] = _parse_value(key, text.strip(), hints[key])
        return replace(self, **changes)

    @classmethod
    def describe(cls) -> list[str]:
        """One line per option: name, type, default, and whether it is an inference option."""
        hints = get_type_hints(cls)
        return [
            f"{f.name}={f.default} ({_type_name(hints[f.name])}"
            f"{', inference' if f.metadata.get('inference') else ''})"
            for f in fields(cls)
        ]


def _type_name(kind: Any) -> str:
    if get_origin(kind) is Literal:
        return "|".join(str(choice) for choice in get_args(kind))
    return kind.__name__


def _has_type(value: Any, kind: Any) -> bool:
    """Whether ``value`` (read from JSON) is a ``kind``: a Literal's choice, a bool, an int, or
    a finite float (an int will do)."""
    if get_origin(kind) is Literal:
        return any(value == choice and type(value) is type(choice) for choice in get_args(kind))
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and math.isfinite(value)
    return isinstance(value, kind)


def _parse_value(key: str, text: str, kind: Any) -> Any:
    """Parse ``text`` as a value of ``kind`` (a Literal, int, float or bool)."""
    if get_origin(kind) is Literal:
        for choice in get_args(kind):
            if text == str(choice):
                return choice
        raise GeepError(f"option {key}={text!r}: choose one of {_type_name(kind)}")
    if kind is bool:
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise GeepError(f"option {key}={text!r}: use true or false")
    try:
        value = kind(text)
    except ValueError:
        raise GeepError(f"option {key}={text!r} is not a valid {kind.__name__}") from None
    if not math.isfinite(value):
        raise GeepError(f"option {key}={text!r} must be finite")
    return value
