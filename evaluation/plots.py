"""PNG plots of an evaluation run (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .metrics import NONE_CLASS, POINTS  # noqa: E402

OTHER = "(other)"


def _annotated_matrix(ax, matrix: np.ndarray, rows: list[str], cols: list[str], title: str, rotation: int = 60) -> None:
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(cols)), cols, rotation=rotation, ha="right" if rotation else "center", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title, fontsize=9)
    top = matrix.max() or 1
    for (i, j), value in np.ndenumerate(matrix):
        if value:
            ax.text(j, i, int(value), ha="center", va="center", fontsize=7,
                    color="white" if value > top / 2 else "black")


def plot_points(metrics: dict, title: str, path: Path) -> None:
    """The binary confusion matrices of start, end and switch points side by side."""
    fig, axes = plt.subplots(1, len(POINTS), figsize=(3.2 * len(POINTS), 3.2))
    for ax, point in zip(axes, POINTS):
        m = metrics[point]
        matrix = np.array([[m["tp"], m["fn"]], [m["fp"], m["tn"]]])
        _annotated_matrix(ax, matrix, [point, f"not {point}"], [point, f"not {point}"], point, rotation=0)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tasks(confusion: Counter, title: str, path: Path, top_n: int = 15) -> None:
    """Task-selection confusion matrix over the `top_n` most frequent gold classes (+ none), the rest as other."""
    gold_counts = Counter()
    for (gold, _), n in confusion.items():
        gold_counts[gold] += n
    classes = [c for c, _ in gold_counts.most_common() if c != NONE_CLASS][:top_n]
    classes.append(NONE_CLASS)
    shown = set(classes)
    labels = classes + ([OTHER] if any(g not in shown or p not in shown for g, p in confusion) else [])
    index = {c: i for i, c in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=int)
    for (gold, pred), n in confusion.items():
        matrix[index.get(gold, index.get(OTHER, 0)), index.get(pred, index.get(OTHER, 0))] += n
    size = max(4.0, 0.35 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    _annotated_matrix(ax, matrix, labels, labels, title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _grouped_bars(results: dict, configs: list[str], series: dict[str, Callable[[dict], float | None]], ylabel: str, title: str,
                  path: Path) -> None:
    """One panel per benchmark, one bar group per config, one bar per series."""
    benches = list(results)
    fig, axes = plt.subplots(1, len(benches), figsize=(max(4.0, 1.2 * len(configs) + 2) * len(benches), 4), squeeze=False)
    width = 0.8 / len(series)
    for ax, bench in zip(axes[0], benches):
        x = np.arange(len(configs))
        for k, (label, getter) in enumerate(series.items()):
            values = [getter(results[bench][c]) if c in results[bench] else np.nan for c in configs]
            values = [np.nan if v is None else v for v in values]
            bars = ax.bar(x + (k - (len(series) - 1) / 2) * width, values, width, label=label)
            ax.bar_label(bars, fmt="%.0f", fontsize=7)
        ax.set_xticks(x, configs, rotation=30, ha="right", fontsize=8)
        ax.set_title(bench, fontsize=9)
        ax.set_ylabel(ylabel)
        if len(series) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latency(results: dict, configs: list[str], path: Path) -> None:
    _grouped_bars(results, configs, {"p50": lambda m: m["latency"]["p50_ms"], "p95": lambda m: m["latency"]["p95_ms"]},
                  "ms per routing request", "Latency per config", path)


def plot_invalid(results: dict, configs: list[str], path: Path) -> None:
    _grouped_bars(results, configs, {"invalid": lambda m: m["invalid"]}, "invalid outputs",
                  "Invalid outputs per config", path)
