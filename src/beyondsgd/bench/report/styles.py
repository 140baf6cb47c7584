"""One style per method (colour, line style, marker), the same in every figure and every report.

:func:`method_style` derives it from the method's *name* alone (a fixed table for the registered
methods, a hash of the name for any other), never from which methods a store holds. Baselines
are drawn solid, the papers' methods dashed or dash-dotted.

>>> method_style("sgd") == method_style("sgd") and method_style("sgd") != method_style("adam")
True
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

# Colours: matplotlib's tab10 plus six darker tones of tab20b/c, all readable on white.
PALETTE = ("#000000", "#7f7f7f", "#1f77b4", "#393b79", "#bcbd22", "#8c564b", "#17becf",
           "#d62728", "#2ca02c", "#ff7f0e", "#8c6d31", "#e7ba52", "#9467bd", "#7b4173",
           "#e377c2", "#637939", "#843c39")
LINESTYLES = ("-", "--", "-.", (0, (1, 1)), (0, (5, 1, 1, 1, 1, 1)))
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "h", "<", ">", "d", "p", "H", "8")
# name -> (palette index, line style index, marker index). Baselines solid; paper methods
# dashed, their variants dash-dotted, one colour family per paper (PHT: oranges/golds, ProxProp:
# purples). Each registered method has its own colour and its own marker.
_TABLE = {
    "sgd": (0, 0, 0), "momentum": (1, 0, 1), "adam": (2, 0, 2), "adamw": (3, 0, 3),
    "adagrad": (4, 0, 4), "adadelta": (5, 0, 5), "rmsprop": (6, 0, 6),
    "bpgrad": (7, 1, 7), "gdsolver": (8, 1, 8),
    "pht_sgd": (9, 1, 9), "pht_adam": (10, 2, 10), "pht_alt": (11, 3, 11),
    "proxprop": (12, 1, 12), "proxprop_sgd": (13, 2, 13), "slbi": (14, 1, 14),
}


def method_style(method: str) -> dict:
    """Matplotlib keyword arguments (``color``, ``linestyle``, ``marker``) of ``method``: from
    the fixed table for the registered methods, else from the MD5 of the name (stable across
    processes and machines, unlike ``hash``)."""
    if method in _TABLE:
        c, ls, mk = _TABLE[method]
    else:
        h = int.from_bytes(hashlib.md5(method.encode()).digest()[:8], "big")
        c, ls, mk = h % len(PALETTE), (h // 97) % len(LINESTYLES), (h // 9973) % len(MARKERS)
    return {"color": PALETTE[c], "linestyle": LINESTYLES[ls], "marker": MARKERS[mk]}


def _styles_for(rows: Sequence[dict]) -> list[dict]:
    """One style per row: the method's; a second row of the same method (other
    hyperparameters) keeps its colour and marker but takes the next line style."""
    seen: dict[str, int] = defaultdict(int)
    out = []
    for r in rows:
        st = dict(method_style(r["method"]))
        k = seen[r["method"]]
        seen[r["method"]] += 1
        if k:
            st["linestyle"] = LINESTYLES[(LINESTYLES.index(st["linestyle"]) + k)
                                         % len(LINESTYLES)]
        out.append(st)
    return out


def _plt():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(plt, fig, path: Path) -> Path:
    """Lay out, write (PNG, 110 dpi, cropped to the figure's contents, outside legends
    included) and close ``fig``; returns ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)
    return path
