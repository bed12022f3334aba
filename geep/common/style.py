"""What every plot shares: one colour per method, the same in every figure, from Okabe and Ito's
colour-blind-safe palette; a line style and a marker per batching policy; legends outside the
axes, clear of the data."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure

PALETTE = (
    "#000000",  # black
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#009E73",  # bluish green
    "#D55E00",  # vermillion
    "#0072B2",  # blue
    "#CC79A7",  # reddish purple
    "#F0E442",  # yellow
    "#999999",  # grey, then Tol's muted tones for a ninth method and on
    "#882255",
    "#44AA99",
    "#117733",
)
LINESTYLES = {None: "-", "shrink": "-", "regroup": "--", "keep": ":"}
MARKERS = {None: "o", "shrink": "o", "regroup": "s", "keep": "^"}


def colours(methods: Sequence[str]) -> dict[str, str]:
    """Each of ``methods`` its colour, in the order given: pass the registry's methods first
    (geep.core.registry.method_names), so a method has the same colour in every figure
    whichever others are in it."""
    ordered = list(dict.fromkeys(methods))
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(ordered)}


def outside_legend(fig: Figure, **kwargs: object) -> None:
    """The figure's one legend to the right of its axes (the figure needs
    ``layout="constrained"``), so no label covers a point."""
    fig.legend(loc="outside right upper", fontsize=7, **kwargs)
