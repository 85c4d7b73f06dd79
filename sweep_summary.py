"""The summaries of a sweep (sweep.py): per grid point n, mean, std and the 95 % t interval
of every numeric result, paired differences to the baseline point, and what is shown of them.

summary.csv keeps every computed figure as computed. summary.md and summary.png show the
headline metrics (metrics.METRICS' headline keys), with each interval clipped to its
metric's range (metrics.headline_range: 0-100 for percent, 0-1 for fractions) and marked †
where it was clipped. The console shows less: the dataset's headline metric only (n, mean,
interval, paired difference and its interval), and the grid points where a run's method did
nothing (results.json method_acted false).
"""
import numpy as np
import pandas as pd
from scipy import stats

import metrics
import utils
from sweepspec import fmt

# Columns of runs.csv that are not metrics (besides the grid keys).
NOT_METRICS = ('run', 'point', 'seed', 'overrides', 'status', 'error', 'method_acted')
CLIPPED = '†'
CLIPPED_NOTE = (f'{CLIPPED} the interval passes what the metric can take and is shown clipped '
                f'to its range (0-100 for %, 0-1 for fractions); summary.csv keeps the '
                f'computed values')
IDLE_NOTE = ('"method did nothing": finished runs whose method changed nothing '
             '(results.json method_acted false; its method_inaction says why)')


def flatten(results, prefix=''):
    """Numeric scalar entries of results.json, nested keys joined by '.'; lists skipped."""
    flat = {}
    for key, value in results.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f'{prefix}{key}.'))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f'{prefix}{key}'] = value
    return flat


def mean_ci(values, level=0.95):
    """(n, mean, std, CI low, CI high) of the finite values: Student's t interval."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    n = v.size
    if n == 0:
        return 0, np.nan, np.nan, np.nan, np.nan
    if n == 1:
        return 1, v[0], np.nan, np.nan, np.nan
    std = v.std(ddof=1)
    half = stats.t.ppf(0.5 + level / 2, n - 1) * std / np.sqrt(n)
    return n, v.mean(), std, v.mean() - half, v.mean() + half


def metric_columns(frame, grid):
    fixed = {*NOT_METRICS, *grid}
    return [c for c in frame.columns if c not in fixed]


def summarise(frame, grid, baseline):
    """summary: one row per grid point: n, n_method_idle (finished runs whose method did
    nothing), <metric>_mean/_std/_ci95_low/_ci95_high, and with a baseline
    <metric>_diff_mean/_diff_ci95_low/_diff_ci95_high (paired by seed)."""
    done = frame[frame.status == 'finished']
    columns = metric_columns(frame, grid)
    rows = []
    for point, group in frame.groupby('point', sort=False):
        ok = done[done.point == point]
        idle = ok['method_acted'].eq(False).sum() if 'method_acted' in ok else 0
        row = {'point': point, **group.iloc[0][list(grid)].to_dict(), 'n': len(ok),
               'n_method_idle': int(idle)}
        for m in columns:
            _, *figures = mean_ci(ok[m])
            row.update(zip([f'{m}_{s}' for s in ('mean', 'std', 'ci95_low', 'ci95_high')],
                           figures))
        if baseline:
            ref = {**row, **{k: fmt(v) for k, v in baseline.items()}}
            ref_point = done[(done[list(grid)] == pd.Series(ref)[list(grid)]).all(axis=1)]
            pairs = ok.merge(ref_point, on='seed', suffixes=('', '_ref'))
            row['n_pairs'] = len(pairs)
            for m in headline(columns):
                _, mean, _, low, high = mean_ci(pairs[m] - pairs[f'{m}_ref'])
                row.update({f'{m}_diff_mean': mean, f'{m}_diff_ci95_low': low,
                            f'{m}_diff_ci95_high': high})
        rows.append(row)
    return pd.DataFrame(rows)


def headline(columns):
    """The metrics of a run shown in summary.md and summary.png and compared to --baseline:
    the headline keys of metrics.METRICS. The other numbers of results.json (per-class
    figures, counts, echoes of the config, the model selection, the wall time) are kept in
    runs.csv and summary.csv only."""
    keys = metrics.headline_keys()
    return [c for c in columns if c in keys]


def headline_metric(names, columns):
    """The dataset's headline metric: the first headline key of its first reported metric
    (names: eval.metric_names) among the summarised columns, else the first headline
    column (None if there is none)."""
    keys = [k for name in names for k in metrics.METRICS[name].headline if k in columns]
    shown = headline(columns)
    return (keys or shown or [None])[0]


def clip(value, key, diff=False):
    """A figure clipped to what metric `key` can take (a difference: to +- its range's
    width) -> (value, whether it was clipped)."""
    low, high = metrics.headline_range(key)
    if diff:
        low, high = low - high, high - low
    if pd.isna(value) or low <= value <= high:
        return value, False
    return float(np.clip(value, low, high)), True


def num(x):
    return '-' if pd.isna(x) else f'{x:.4g}'


def interval(row, key, prefix):
    """'[low, high]' of row's <prefix>_ci95_low/_high, each clipped and marked; '-' when
    there is none (fewer than 2 runs or pairs)."""
    low, high = row[f'{prefix}_ci95_low'], row[f'{prefix}_ci95_high']
    if pd.isna(low) or pd.isna(high):
        return '-'
    diff = prefix.endswith('_diff')
    ends = [clip(v, key, diff) for v in (low, high)]
    return '[' + ', '.join(num(v) + (CLIPPED if c else '') for v, c in ends) + ']'


def markdown(summary, columns, grid, baseline):
    """summary.md: per grid point n and, per headline metric, mean, std and 95 % CI (and the
    paired difference to the baseline), intervals clipped to the metric's range (†)."""
    idle = 'n_method_idle' in summary and summary.n_method_idle.gt(0).any()
    head = [*grid, 'n'] + (['method did nothing'] if idle else [])
    for m in columns:
        head += [f'{m} mean', f'{m} std', f'{m} 95 % CI']
        head += [f'{m} - baseline', f'{m} - baseline 95 % CI'] if baseline else []
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    marked = False
    for _, r in summary.iterrows():
        cells = [str(r[k]) for k in grid] + [str(r['n'])]
        cells += [str(r['n_method_idle']) if r['n_method_idle'] else '-'] if idle else []
        for m in columns:
            cells += [num(r[f'{m}_mean']), num(r[f'{m}_std']), interval(r, m, m)]
            if baseline:
                cells += [num(r[f'{m}_diff_mean']), interval(r, m, f'{m}_diff')]
        marked |= any(CLIPPED in c for c in cells)
        lines.append('| ' + ' | '.join(cells) + ' |')
    note = ('\nmean and std over the seeds of each grid point; 95 % CI: Student\'s t '
            'interval of the mean (n - 1 degrees of freedom); - : not defined (fewer than '
            'two runs)')
    if baseline:
        note += (f'; "- baseline": mean difference to the point with '
                 f'{", ".join(f"{k}={fmt(v)}" for k, v in baseline.items())}, paired by seed')
    notes = [note + '.'] + ([CLIPPED_NOTE + '.'] if marked else []) + (
        [IDLE_NOTE + '.'] if idle else [])
    return '\n'.join(lines) + '\n' + '\n\n'.join(notes) + '\n'


def console(summary, key, grid, baseline):
    """The console's summary: per grid point n, the mean of the headline metric `key`, its
    interval and, with a baseline, the paired difference and its interval; the runs whose
    method did nothing are flagged."""
    if key is None:
        return 'no headline metric among the results'
    unit = ' %' if metrics.headline_range(key) == metrics.UNIT_RANGES['%'] else ''
    head = ['point', 'n', f'{key} mean{unit}', '95 % CI']
    head += ['- baseline', '95 % CI'] if baseline else []
    rows = []
    for _, r in summary.iterrows():
        cells = [r['point'], str(r['n']), num(r[f'{key}_mean']), interval(r, key, key)]
        if baseline:
            cells += [num(r[f'{key}_diff_mean']), interval(r, key, f'{key}_diff')]
        if r.get('n_method_idle', 0):
            cells.append(f'! method did nothing in {r["n_method_idle"]} of {r["n"]} runs')
        rows.append(cells)
    widths = [max(len(row[i]) for row in [head, *rows] if i < len(row))
              for i in range(len(head))]
    lines = ['  '.join(c.ljust(w) for c, w in zip(row, widths)) + ''.join(
        f'  {c}' for c in row[len(head):]) for row in [head, *rows]]
    if baseline:
        lines.append(f'- baseline: paired by seed, to '
                     f'{", ".join(f"{k}={fmt(v)}" for k, v in baseline.items())}')
    if any(CLIPPED in c for row in rows for c in row):
        lines.append(CLIPPED_NOTE)
    return '\n'.join(line.rstrip() for line in lines)


def write_outputs(out, name, frame, grid, baseline, key=None):
    """runs.csv, summary.csv, summary.md and summary.png -> (summary, markdown, the console
    summary of headline metric `key` (None: the first headline column))."""
    import plots
    columns = metric_columns(frame, grid)
    summary = summarise(frame, grid, baseline)
    utils.atomic_write_csv(out / 'runs.csv', frame, index=False, float_format='%.6g')
    utils.atomic_write_csv(out / 'summary.csv', summary, index=False, float_format='%.6g')
    shown = headline(columns)
    table = markdown(summary, shown, grid, baseline)
    utils.atomic_write_text(out / 'summary.md', f'# sweep {name}\n\n{table}')
    key = key if key in shown else (shown or [None])[0]
    if shown:
        plots.summary(summary, shown, out / 'summary.png', f'sweep {name}: mean and 95 % CI',
                      key if baseline else None)
    return summary, table, console(summary, key, grid, baseline)
