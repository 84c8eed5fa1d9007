"""Small pictures of who sends what to whom, drawn for the notebooks.

Patterns, not methods: a notebook picks the picture of the communication its method uses.
- "none": one process, nothing to send;
- "all-reduce": drawn as the ring algorithm that gloo and NCCL use for large messages
  (Patarasuk & Yuan 2009): each rank sends to its right neighbour only; n−1 steps of
  reduce-scatter, then n−1 of all-gather, each moving S/n bytes per rank;
- "server": every worker sends its gradients to rank 0 and receives the parameters back.
"""

import math

import matplotlib.pyplot as plt

PATTERNS = {
    "none": "one process: nothing to send",
    "all-reduce": "ring all-reduce: each rank sends S/n to its right neighbour,\n"
                  "2(n−1) times (reduce-scatter, then all-gather)",
    "server": "parameter server: workers push gradients to rank 0,\nrank 0 sends parameters back",
}


def draw_pattern(kind: str, ranks: int = 4):
    """Ranks on a circle, arrows for the messages of one synchronization round."""
    if kind not in PATTERNS:
        raise ValueError(f"unknown pattern {kind!r}; choose from {', '.join(PATTERNS)}")
    fig, ax = plt.subplots(figsize=(3.6, 3.6))
    n = 1 if kind == "none" else ranks
    points = [(math.cos(math.pi / 2 - 2 * math.pi * i / n), math.sin(math.pi / 2 - 2 * math.pi * i / n))
              for i in range(n)] if n > 1 else [(0, 0)]
    arrows = {"none": [], "all-reduce": [(i, (i + 1) % n) for i in range(n)],
              "server": [(i, 0) for i in range(1, n)] + [(0, i) for i in range(1, n)]}[kind]
    for i, j in arrows:
        (x0, y0), (x1, y1) = points[i], points[j]
        bend = 0.25 if kind == "server" else 0.3  # server: push and pull on two sides; ring: along the circle
        ax.annotate("", xy=(x0 + 0.78 * (x1 - x0), y0 + 0.78 * (y1 - y0)),
                    xytext=(x0 + 0.22 * (x1 - x0), y0 + 0.22 * (y1 - y0)),
                    arrowprops=dict(arrowstyle="-|>", color="#0173b2", lw=1.5, connectionstyle=f"arc3,rad={bend}"))
        if kind == "all-reduce":
            ax.text(0.85 * (x0 + x1), 0.85 * (y0 + y1), "S/n", fontsize=7, ha="center", va="center", color="#0173b2")
    for i, (x, y) in enumerate(points):
        server = kind == "server" and i == 0
        ax.scatter([x], [y], s=1000, color="#de8f05" if server else "#029e73", zorder=3)
        ax.text(x, y, "rank 0\nserver" if server else f"rank {i}", ha="center", va="center", fontsize=7, zorder=4)
    ax.set(xlim=(-1.6, 1.6), ylim=(-1.6, 1.6), aspect="equal")
    ax.set_title(PATTERNS[kind], fontsize=8)
    ax.axis("off")
    fig.tight_layout()
    return fig
