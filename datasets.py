"""Datasets by name (config key `ctrl.dataset`): a dataset folder -> one clip table.

Every adapter returns (table, classes): one row per clip, train rows first, with fname,
path, label, label_idx, verified, subset ('train'/'test') and, where the CSV has them,
the true labels; classes are the sorted training labels.
"""
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from config import ConfigError, lookup

logger = logging.getLogger(__name__)

TRAIN_COLUMNS = ['fname', 'label', 'aso_id', 'manually_verified', 'noisy_small']
TEST_COLUMNS = ['fname', 'label', 'aso_id']

# ctrl.train_data -> which training rows are used (FSDnoisy18k: manually_verified 1 is
# the clean set, noisy_small 1 the small noisy subset).
TRAIN_SUBSETS = {
    'noisy': lambda t: t.verified == 0,
    'clean': lambda t: t.verified == 1,
    'noisy_small': lambda t: t.noisy_small == 1,
    'noisy_small_clean': lambda t: (t.noisy_small == 1) | (t.verified == 1),
    'all': lambda t: t.verified >= 0,
}


def _read_csv(path, columns):
    if not path.is_file():
        raise ConfigError(f'missing dataset file {path} (check ctrl.dataset_path)')
    try:
        df = pd.read_csv(path)
    except Exception as err:  # pandas raises several types for unreadable files
        raise ConfigError(f'cannot read {path}: {err}') from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ConfigError(f'{path} lacks the column(s) {", ".join(missing)}; required: '
                          f'{", ".join(columns)}')
    return df


def load_fsdnoisy18k(cfg):
    """FSDnoisy18k layout -> (table, classes).

    table has one row per clip, train rows first: fname, path, label, label_idx, verified,
    noisy_small, subset ('train'/'test'), [true_label, true_idx when train.csv has it],
    plus any extra columns of the CSVs. classes are the sorted training labels.
    """
    root = Path(cfg['ctrl']['dataset_path'])
    if not root.is_dir():
        raise ConfigError(f'dataset folder {root} does not exist (ctrl.dataset_path)')
    meta = root / 'FSDnoisy18k.meta'
    train = _read_csv(meta / 'train.csv', TRAIN_COLUMNS)
    test = _read_csv(meta / 'test.csv', TEST_COLUMNS)
    train['subset'], test['subset'] = 'train', 'test'
    train['path'] = [str(root / 'FSDnoisy18k.audio_train' / f) for f in train.fname]
    test['path'] = [str(root / 'FSDnoisy18k.audio_test' / f) for f in test.fname]
    train['verified'] = train.manually_verified.astype(int)
    test['verified'], test['noisy_small'] = 1, 0
    classes = sorted(train.label.unique())
    n_classes = cfg['learn']['n_classes']
    if len(classes) != n_classes:
        raise ConfigError(f'learn.n_classes is {n_classes} but {meta / "train.csv"} has '
                          f'{len(classes)} classes')
    unknown = sorted(set(test.label) - set(classes))
    if unknown:
        raise ConfigError(f'{meta / "test.csv"} has labels absent from train.csv: '
                          f'{", ".join(map(str, unknown[:5]))}')
    table = pd.concat([train, test], ignore_index=True)
    index = {c: i for i, c in enumerate(classes)}
    table['label_idx'] = table.label.map(index).astype(int)
    if 'true_label' in table.columns:
        table['true_label'] = table.true_label.fillna(table.label)
        table['true_idx'] = table.true_label.map(index).fillna(-1).astype(int)
    return table, classes


def train_rows(table, train_data):
    """Row numbers of the training clips of subset ctrl.train_data."""
    train = table[table.subset == 'train']
    rows = np.flatnonzero(TRAIN_SUBSETS[train_data](train).to_numpy())
    if rows.size == 0:
        raise ConfigError(f'ctrl.train_data {train_data!r} selects no training clip')
    return train.index.to_numpy()[rows]


DATASETS = {'fsdnoisy18k': load_fsdnoisy18k}


def check(cfg):
    lookup(DATASETS, cfg['ctrl']['dataset'], 'ctrl.dataset')


def load(cfg):
    """ctrl.dataset -> (table, classes), with ctrl.inject_noise applied to the labels."""
    table, classes = lookup(DATASETS, cfg['ctrl']['dataset'], 'ctrl.dataset')(cfg)
    return inject_noise(table, classes, cfg['ctrl']['inject_noise']), classes


# ----------------------------------------------------------------------------- label noise

# ctrl.inject_noise.subset -> which training rows may have their label replaced.
NOISE_SUBSETS = {'unverified': lambda t: t.verified == 0, 'verified': lambda t: t.verified == 1,
                 'all': lambda t: t.verified >= 0}


def noise_subset_rows(table, subset):
    train = table.subset == 'train'
    return np.flatnonzero((train & NOISE_SUBSETS[subset](table)).to_numpy())


def flip_labels(labels, n_classes, kind, rng):
    """New labels, each different from its old one: `symmetric` uniform over the other
    classes; `pairflip` the next class after it in one random permutation of the classes."""
    labels = np.asarray(labels)
    if kind == 'symmetric':
        return (labels + rng.integers(1, n_classes, size=labels.size)) % n_classes
    cycle = rng.permutation(n_classes)
    position = np.argsort(cycle)  # position[c]: where class c sits in the cycle
    return cycle[(position[labels] + 1) % n_classes]


def inject_noise(table, classes, spec):
    """Replace the label of each clip of spec['subset'] with probability spec['rate'].

    Labels only (features do not depend on them). The labels before injection become the
    true labels (true_label / true_idx) unless the table already has them, so that the
    noise-detection figures measure against the real truth; column noise_injected marks
    the replaced labels. Its own seed keeps the noisy
    labels equal across the runs of a sweep that vary ctrl.seed (paired comparisons).
    """
    if spec['rate'] <= 0:
        return table
    table = table.copy()
    if 'true_idx' not in table.columns:
        table['true_label'], table['true_idx'] = table.label, table.label_idx
    rng = np.random.default_rng(spec['seed'])
    rows = noise_subset_rows(table, spec['subset'])
    # round(rate * n) clips drawn without replacement: each clip is chosen with probability
    # rate, and the realised share is the requested rate, not a binomial draw around it.
    chosen = np.sort(rng.choice(rows, size=int(round(spec['rate'] * rows.size)), replace=False))
    new = flip_labels(table.label_idx.to_numpy()[chosen], len(classes), spec['kind'], rng)
    table.loc[chosen, 'label_idx'] = new
    table.loc[chosen, 'label'] = np.asarray(classes, object)[new]
    table['noise_injected'] = False
    table.loc[chosen, 'noise_injected'] = True
    logger.info('label noise injected: %s at rate %.3f into %d %s training clips: %d labels '
                'changed (%.1f %%)', spec['kind'], spec['rate'], rows.size, spec['subset'],
                chosen.size, 100.0 * chosen.size / max(rows.size, 1))
    return table


def label_noise(cfg, table):
    """results.json entry of ctrl.inject_noise: {rate, kind, subset, share_changed}, or {}."""
    spec = cfg['ctrl']['inject_noise']
    if spec['rate'] <= 0:
        return {}
    rows = noise_subset_rows(table, spec['subset'])
    changed = table.noise_injected.to_numpy()[rows]
    return {'label_noise': {'rate': spec['rate'], 'kind': spec['kind'], 'subset': spec['subset'],
                            'share_changed': float(changed.mean()) if rows.size else 0.0}}
