"""The lineage PNG: the ledger's runs drawn as a forest (parent -> child), depth on x, order on y, no graphviz.

matplotlib is imported only when a plot is drawn, so reading or writing a ledger never pays for it.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

_STATUS_COLOURS = {"done": "#cfe8cf", "running": "#fff2b3", "failed": "#f6c6c6", "interrupted": "#dddddd"}


def _short_id(run_id: str, arch: str | None) -> str:
    """`20261127-113501-resnet18-3f2a` -> `113501-3f2a`: the arch is on the node already, and the date
    is the same for most runs of a notebook."""
    parts = run_id.split("-")
    arch_parts = set((arch or "").split("-"))
    kept = [p for p in parts if p and p not in arch_parts]
    if len(kept) > 1 and len(kept[0]) == 8 and kept[0].isdigit():
        kept = kept[1:]
    short = "-".join(kept) or run_id
    return short if len(short) <= 16 else short[:15] + "…"


def tree_layout(
    nodes: list[str], parent_of: Mapping[str, str | None]
) -> tuple[dict[str, tuple[int, float]], list[str]]:
    """Place a forest: x = depth, y = leaf order, a parent centred on its children.

    Returns the positions and the nodes that had to be made roots to break a parent cycle.
    """
    children: dict[str, list[str]] = {node: [] for node in nodes}
    roots = []
    for node in nodes:
        parent = parent_of.get(node)
        if parent in children and parent != node:
            children[parent].append(node)
        else:
            roots.append(node)
    positions: dict[str, tuple[int, float]] = {}
    visited: set[str] = set()
    cycle_roots: list[str] = []
    next_leaf = 0
    pending = list(roots)
    while True:
        for root in pending:
            next_leaf = _place_subtree(root, children, positions, visited, next_leaf)
        unreached = [node for node in nodes if node not in visited]  # only cycles are never reached
        if not unreached:
            return positions, cycle_roots
        cycle_roots.append(unreached[0])
        pending = [unreached[0]]


def _place_subtree(
    root: str,
    children: Mapping[str, list[str]],
    positions: dict[str, tuple[int, float]],
    visited: set[str],
    next_leaf: int,
) -> int:
    """Iterative post-order walk (lineages can be deeper than Python's recursion limit)."""
    stack: list[tuple[str, int, bool]] = [(root, 0, False)]
    while stack:
        node, depth, expanded = stack.pop()
        if expanded:
            placed = [positions[kid][1] for kid in children[node] if kid in positions]
            if placed:
                positions[node] = (depth, (placed[0] + placed[-1]) / 2)
            else:
                positions[node] = (depth, float(next_leaf))
                next_leaf += 1
            continue
        if node in visited:
            continue
        visited.add(node)
        stack.append((node, depth, True))
        stack.extend((kid, depth + 1, False) for kid in reversed(children[node]) if kid not in visited)
    return next_leaf


def _node_label(row: Mapping[str, Any]) -> str:
    cv = row.get("cv")
    best = row.get("best_cv")
    score = f"cv {cv:.4f}" if cv is not None else (f"best {best:.4f}" if best is not None else "cv -")
    return f"{row.get('arch') or '?'}\n{_short_id(row['run_id'], row.get('arch'))}\n{score}"


def draw_forest(
    rows: Mapping[str, Mapping[str, Any]],
    positions: Mapping[str, tuple[int, float]],
    cycle_roots: list[str],
    highlight: str | None,
    title: str,
) -> bytes:
    """The PNG bytes of the placed runs: status colours, `highlight` outlined in red, cycle edges dashed."""
    # the object API with an Agg canvas: no pyplot, so a notebook's backend and figures are untouched
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    depth = max((x for x, _ in positions.values()), default=0)
    height = max((y for _, y in positions.values()), default=0.0)
    fig = Figure(figsize=(2.4 * (depth + 1) + 0.8, 0.85 * (height + 1) + 0.9), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    boxes = {}
    for run_id, (x, y) in positions.items():
        row = rows[run_id]
        edge = "#c0392b" if run_id == highlight else "#555555"
        box = {
            "boxstyle": "round,pad=0.4",
            "fc": _STATUS_COLOURS.get(row.get("status"), "#ffffff"),
            "ec": edge,
            "lw": 2.0 if run_id == highlight else 0.8,
        }
        boxes[run_id] = ax.text(
            x, y, _node_label(row), ha="center", va="center", fontsize=8, family="monospace", bbox=box
        )
    for run_id in positions:
        parent = rows[run_id].get("parent_run_id")
        if parent in boxes:
            _draw_edge(ax, boxes[parent], boxes[run_id], closes_cycle=run_id in cycle_roots)
    legend = [Patch(fc=colour, ec="#555555", label=status) for status, colour in _STATUS_COLOURS.items()]
    ax.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    ax.set_xlim(-0.6, depth + 0.6)
    ax.set_ylim(height + 0.6, -0.6)  # first root at the top
    ax.axis("off")
    ax.set_title(title, fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def _draw_edge(ax: Any, parent_box: Any, child_box: Any, *, closes_cycle: bool) -> None:
    """An arrow anchored on the two text boxes, so it meets their edges whatever their size."""
    if closes_cycle:
        # the edge that closes a parent cycle runs backwards: a dashed red arc under the boxes
        arrow = {
            "arrowstyle": "-|>",
            "color": "#c0392b",
            "linestyle": "--",
            "connectionstyle": "arc3,rad=-0.3",
        }
        ax.annotate(
            "", xy=(0.5, 0.0), xycoords=child_box, xytext=(0.5, 0.0), textcoords=parent_box, arrowprops=arrow
        )
        return
    arrow = {"arrowstyle": "-|>", "color": "#333333", "shrinkA": 6, "shrinkB": 6}
    ax.annotate(
        "", xy=(0.0, 0.5), xycoords=child_box, xytext=(1.0, 0.5), textcoords=parent_box, arrowprops=arrow
    )
