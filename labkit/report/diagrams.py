"""Small pictures of who sends what to whom, drawn for the notebooks."""

import math

import matplotlib.pyplot as plt

PATTERNS = {
    "single": "one process: nothing to send",
    "allreduce": "all-reduce: every rank ends with the sum",
    "ps": "parameter server: every worker ↔ rank 0",
    "ring": "ring: each rank sends to its right neighbour",
}


def draw_pattern(kind: str, ranks: int = 4):
    """Ranks on a circle, arrows for the messages of one synchronization round."""
    fig, ax = plt.subplots(figsize=(3.2, 3.2))
    n = 1 if kind == "single" else ranks
    points = [(math.cos(2 * math.pi * i / n + math.pi / 2), math.sin(2 * math.pi * i / n + math.pi / 2))
              for i in range(n)] if n > 1 else [(0, 0)]
    arrows = {
        "single": [],
        "allreduce": [(i, j) for i in range(n) for j in range(n) if i != j],
        "ps": [(i, 0) for i in range(1, n)] + [(0, i) for i in range(1, n)],
        "ring": [(i, (i + 1) % n) for i in range(n)],
    }[kind]
    for i, j in arrows:
        (x0, y0), (x1, y1) = points[i], points[j]
        ax.annotate("", xy=(x0 + 0.8 * (x1 - x0), y0 + 0.8 * (y1 - y0)), xytext=(x0 + 0.2 * (x1 - x0), y0 + 0.2 * (y1 - y0)),
                    arrowprops=dict(arrowstyle="->", color="tab:blue", alpha=0.6, connectionstyle="arc3,rad=0.1"))
    for i, (x, y) in enumerate(points):
        server = kind == "ps" and i == 0
        ax.scatter([x], [y], s=900, color="tab:orange" if server else "tab:green", zorder=3)
        ax.text(x, y, "server" if server else f"rank {i}", ha="center", va="center", fontsize=8, zorder=4)
    ax.set(title=PATTERNS[kind], xlim=(-1.5, 1.5), ylim=(-1.5, 1.5), aspect="equal")
    ax.title.set_fontsize(9)
    ax.axis("off")
    fig.tight_layout()
    return fig
