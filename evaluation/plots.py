"""PNG plots of an evaluation run (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix  # noqa: E402

from .metrics import NONE_CLASS, POINTS  # noqa: E402

OTHER = "(other)"


def _matrix(ax, matrix: np.ndarray, labels: list[str], title: str, rotation: int = 60) -> None:
    """A confusion matrix (gold rows, predicted columns) drawn by scikit-learn, counts in the cells."""
    ConfusionMatrixDisplay(matrix, display_labels=labels).plot(ax=ax, cmap="Blues", colorbar=False,
                                                               values_format="d", xticks_rotation=rotation)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    for text in ax.texts:
        text.set_fontsize(7)


def plot_points(metrics: dict, title: str, path: Path) -> None:
    """The binary confusion matrices of start, end and switch points side by side."""
    fig, axes = plt.subplots(1, len(POINTS), figsize=(3.2 * len(POINTS), 3.2))
    for ax, point in zip(axes, POINTS):
        m = metrics[point]
        matrix = np.array([[m["tp"], m["fn"]], [m["fp"], m["tn"]]])
        _matrix(ax, matrix, [point, f"not {point}"], point, rotation=0)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def task_matrix(confusion: Counter, top_n: int = 15) -> tuple[list[str], np.ndarray]:
    """(labels, gold x predicted counts) over the `top_n` most frequent gold classes, none, and the rest as other."""
    gold_counts = Counter()
    for (gold, _), n in confusion.items():
        gold_counts[gold] += n
    classes = [c for c, _ in gold_counts.most_common() if c != NONE_CLASS][:top_n]
    classes.append(NONE_CLASS)
    shown = set(classes)
    labels = classes + ([OTHER] if any(g not in shown or p not in shown for g, p in confusion) else [])
    pairs = [((g if g in shown else OTHER), (p if p in shown else OTHER), n) for (g, p), n in confusion.items()]
    gold, pred, counts = zip(*pairs) if pairs else ((), (), ())
    return labels, confusion_matrix(gold, pred, labels=labels, sample_weight=counts).astype(int)


def plot_tasks(confusion: Counter, title: str, path: Path, top_n: int = 15) -> None:
    """Task-selection confusion matrix over the `top_n` most frequent gold classes (+ none), the rest as other."""
    labels, matrix = task_matrix(confusion, top_n)
    size = max(4.0, 0.35 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    _matrix(ax, matrix, labels, title)
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
