"""Figures of a run (curves.png, confusion.png, per_class.png) and of a sweep (summary.png).

matplotlib with the Agg backend: files only, no display needed (servers, Ray workers).
Every figure is written atomically and closed, so that long sweeps do not hold figures.
"""
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import metrics  # noqa: E402
from utils import atomic_path  # noqa: E402

# history.csv columns that the losses and the staged masker log (their log_names) -> their
# label in curves.png; the metrics' own columns (noise detection) are in metrics.METRICS.
METHOD_FIGURES = {'q_a': 'adaptive Lq: batch q_a', 'eta': 'staged: threshold eta',
                  'discarded': 'time-dependent loss: discarded share',
                  'masked': 'staged: masked share'}


def _save(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches='tight', format='png')
    plt.close(fig)


def curves(history, path, title):
    """Training curves from history.csv: loss, accuracy, learning rate, method figures."""
    hist = pd.read_csv(history) if not isinstance(history, pd.DataFrame) else history
    panels = [('loss', ['loss', 'val_loss']),
              ('accuracy', ['accuracy', 'val_accuracy', 'val_clip_accuracy']),
              ('learning rate', ['lr'])]
    labels = {**METHOD_FIGURES, **metrics.curve_labels()}
    method = [c for c in labels if c in hist.columns and hist[c].notna().any()]
    panels += [('method figures', method)] if method else []
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False,
                             layout='constrained')
    for ax, (name, columns) in zip(axes[0], panels):
        for column in (c for c in columns if c in hist.columns):
            ax.plot(hist.epoch, hist[column], marker='.',
                    label=labels.get(column, column.replace('_', ' ')))
        ax.set(title=name, xlabel='epoch', ylabel=name)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize='small')
    fig.suptitle(title)
    _save(fig, path)


def confusion(true_idx, pred_idx, classes, path, title):
    """Row-normalised confusion matrix: row = true class, column = predicted class."""
    k = len(classes)
    counts = np.zeros((k, k))
    np.add.at(counts, (np.asarray(true_idx), np.asarray(pred_idx)), 1)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    size = 3 + 0.35 * k
    fig, ax = plt.subplots(figsize=(size + 1, size), layout='constrained')
    image = ax.imshow(share, vmin=0, vmax=1, cmap='Blues')
    ax.set_xticks(range(k), classes, rotation=90, fontsize='small')
    ax.set_yticks(range(k), classes, fontsize='small')
    ax.set(title=title, xlabel='predicted class', ylabel='true class')
    fig.colorbar(image, ax=ax, label='share of the true class')
    _save(fig, path)


def per_class(per_class_results, path, title):
    """Bar chart of the per-class accuracy (results.json's per_class), best first."""
    items = sorted(per_class_results.items(), key=lambda kv: -np.nan_to_num(kv[1]['accuracy']))
    names = [name for name, _ in items]
    fig, ax = plt.subplots(figsize=(max(5, 0.4 * len(names) + 2), 4), layout='constrained')
    ax.bar(names, [v['accuracy'] for _, v in items], label='clip accuracy')
    ax.tick_params(axis='x', labelrotation=90, labelsize='small')
    ax.set(title=title, xlabel='class', ylabel='accuracy (%)', ylim=(0, 100))
    ax.legend(fontsize='small')
    _save(fig, path)


def summary(table, metrics, path, title):
    """Per metric, one panel: the mean of each grid point with its 95 % CI as whiskers.

    table has a 'point' column and <metric>_mean / _ci95_low / _ci95_high columns.
    """
    fig, axes = plt.subplots(1, len(metrics), figsize=(1.5 + 3.5 * len(metrics), 4.2),
                             squeeze=False, layout='constrained')
    x = np.arange(len(table))
    for ax, metric in zip(axes[0], metrics):
        mean = table[f'{metric}_mean'].to_numpy(float)
        low = mean - table[f'{metric}_ci95_low'].to_numpy(float)
        high = table[f'{metric}_ci95_high'].to_numpy(float) - mean
        ax.errorbar(x, mean, yerr=np.nan_to_num([low, high]), fmt='o', capsize=4,
                    label='mean, 95 % CI')
        ax.set_xticks(x, table.point, rotation=30, ha='right', fontsize='small')
        ax.set(title=metric, xlabel='grid point', ylabel=metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize='small')
    fig.suptitle(title)
    _save(fig, path)
