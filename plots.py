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


def _marks(ax, hist):
    """Vertical marks where the method acted (history.csv's event column): between the
    last epoch before it and the first after."""
    if 'event' not in hist.columns:
        return
    for epoch, what in zip(hist.epoch, hist.event):
        if isinstance(what, str) and what:
            ax.axvline(epoch - 0.5, color='grey', linestyle='--', linewidth=1)
            ax.annotate(what, (epoch - 0.5, 1), xycoords=('data', 'axes fraction'),
                        rotation=90, va='top', ha='right', fontsize='x-small', color='grey')


def curves(history, path, title, loss_name=None):
    """Training curves from history.csv: the loss (named: loss_name, loss.type), accuracy
    in percent (the report's unit; Keras logs fractions), the learning rate on a log axis,
    the method figures and the noise detection; each panel with a dashed mark where the
    method acted."""
    hist = pd.read_csv(history) if not isinstance(history, pd.DataFrame) else history
    loss = f'loss ({loss_name})' if loss_name else 'loss'
    panels = [(loss, ['loss', 'val_loss'], 1),
              ('accuracy (%)', ['accuracy', 'val_accuracy', 'val_clip_accuracy'], 100),
              ('learning rate', ['lr'], 1)]
    detection = metrics.curve_labels()
    method = [c for c in METHOD_FIGURES if c in hist.columns and hist[c].notna().any()]
    found = [c for c in detection if c in hist.columns and hist[c].notna().any()]
    panels += [('method figures', method, 1)] if method else []
    panels += [('noise detection (%)', found, 1)] if found else []
    labels = {**METHOD_FIGURES, **detection}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False,
                             layout='constrained')
    for ax, (name, columns, scale) in zip(axes[0], panels):
        for column in (c for c in columns if c in hist.columns):
            ax.plot(hist.epoch, scale * hist[column], marker='.',
                    label=labels.get(column, column.replace('_', ' ')))
        ax.set(title=name, xlabel='epoch', ylabel=name)
        if name == 'learning rate' and (hist.lr > 0).all():
            ax.set_yscale('log')  # a constant rate reads as one line, not 0.00096-0.00104
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        _marks(ax, hist)
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
    """Bar chart of the per-class accuracy (results.json's per_class) in the dataset's class
    order, so that two runs' charts compare side by side."""
    names = list(per_class_results)
    fig, ax = plt.subplots(figsize=(max(5, 0.4 * len(names) + 2), 4), layout='constrained')
    ax.bar(names, [per_class_results[n]['accuracy'] for n in names], label='clip accuracy')
    ax.tick_params(axis='x', labelrotation=90, labelsize='small')
    ax.set(title=title, xlabel='class (dataset order)', ylabel='accuracy (%)', ylim=(0, 100))
    ax.legend(fontsize='small')
    _save(fig, path)


def _interval_panel(ax, table, prefix, low_high_range):
    """Means of <prefix>_mean with whiskers to the 95 % CI clipped to low_high_range; a
    clipped whisker ends in a mark."""
    x = np.arange(len(table))
    mean = table[f'{prefix}_mean'].to_numpy(float)
    low = table[f'{prefix}_ci95_low'].to_numpy(float)
    high = table[f'{prefix}_ci95_high'].to_numpy(float)
    lo, hi = low_high_range
    shown_low, shown_high = np.clip(low, lo, hi), np.clip(high, lo, hi)
    ax.errorbar(x, mean, yerr=np.nan_to_num([mean - shown_low, shown_high - mean]), fmt='o',
                capsize=5)
    clipped = (low < lo) | (high > hi)
    for i in np.flatnonzero(clipped):
        ax.plot(x[i], shown_low[i] if low[i] < lo else shown_high[i], marker='x',
                color='red', markersize=8)
    ax.set_xticks(x, table.point, rotation=30, ha='right', fontsize='small')
    ax.grid(alpha=0.3)
    return clipped.any()


def summary(table, metrics_shown, path, title, diff_metric=None):
    """One panel per headline metric: each grid point's mean with its 95 % CI as whiskers,
    clipped to the metric's range (a red x where clipped); with diff_metric, a last panel
    of the paired differences to the baseline with their intervals and the zero line.

    table has a 'point' column and <metric>_mean / _ci95_low / _ci95_high columns (and
    <diff_metric>_diff_mean / ... with a baseline).
    """
    panels = list(metrics_shown) + ([None] if diff_metric else [])
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    width = max(4.5, 0.6 * len(table) + 2)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, 4.2 * rows), squeeze=False,
                             layout='constrained')
    clipped = False
    for ax, metric in zip(axes.flat, panels):
        if metric is None:
            lo, hi = metrics.headline_range(diff_metric)
            clipped |= _interval_panel(ax, table, f'{diff_metric}_diff', (lo - hi, hi - lo))
            ax.axhline(0, color='black', linewidth=1)
            ax.set(title=f'{diff_metric} - baseline (paired by seed: the sharper test)',
                   ylabel=f'difference in {diff_metric}')
        else:
            clipped |= _interval_panel(ax, table, metric, metrics.headline_range(metric))
            unit = ' (%)' if metrics.headline_range(metric) == metrics.UNIT_RANGES['%'] else ''
            ax.set(title=metric, ylabel=metric + unit)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title + ('; red x: interval clipped to the metric\'s range' if clipped else ''))
    _save(fig, path)
