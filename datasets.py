"""Datasets by name (config key `ctrl.dataset`): a dataset folder -> one clip table.

Every adapter returns (table, classes): one row per clip, in the order of the CSV files
(the training ones first) and of their lines, with fname, path, label, labels, labels_idx,
label_idx, verified, subset ('train'; 'val' for the dataset's own validation clips:
FSD50K, ARCA23K, a csv split column; 'test') and, where the CSVs have them, the true
labels; classes are the sorted training labels. The layouts are in fsd_layouts.py (the
Freesound datasets) and csv_layout.py (any table), the CSV checks in dataset_tables.py.

How targets are carried (one convention for single- and multi-label data):
  labels      tuple of the clip's class names, sorted (single-label: one name)
  labels_idx  tuple of their indices into `classes`
  label       the names comma-joined (single-label: the class name, as in the CSV)
  label_idx   index of the clip's first label (single-label: its only label); what the
              single-label code paths (accuracy, LSR GROUPS2, split) read
  true_labels / true_labels_idx / true_label / true_idx  the same for the true labels,
              where the CSV has a true_label(s) column (synthetic data)
targets(table, n_classes) gives the [N, K] multi-hot matrix (one-hot for single-label).
A CSV without rows, a repeated fname, several labels in single-label data, a rare label that
misspells another (RARE_CLIPS) or one outside the vocabulary (ctrl.classes, or the dataset's
official one) is refused with file and line.
"""
import logging
from pathlib import Path

import numpy as np

import open_set
from config import ConfigError, lookup
import csv_layout
from fsd_layouts import (load_arca23k, load_fsd50k, load_fsdkaggle2018, load_fsdkaggle2019,
                         load_fsdnoisy18k)

logger = logging.getLogger(__name__)

# ctrl.train_data -> which training rows are used (FSDnoisy18k: manually_verified 1 is
# the clean set, noisy_small 1 the small noisy subset).
TRAIN_SUBSETS = {
    'noisy': lambda t: t.verified == 0,
    'clean': lambda t: t.verified == 1,
    'noisy_small': lambda t: t.noisy_small == 1,
    'noisy_small_clean': lambda t: (t.noisy_small == 1) | (t.verified == 1),
    'all': lambda t: t.verified >= 0,
    'curated': lambda t: t.verified == 1,
    'verified': lambda t: t.verified == 1,
    'unverified': lambda t: t.verified == 0,
}

# Datasets whose clips may carry several labels (csv: when ctrl.csv.multi_label is true or
# a labels cell holds several: csv_layout.multi_label).
MULTI_LABEL = ('fsdkaggle2019', 'fsd50k')

# The subsets each dataset has. FSDKaggle2018 is split like FSDnoisy18k: noisy = the
# clips not manually verified, clean = the verified ones. FSDKaggle2019: curated (the
# verified FSD clips), noisy (the unverified YFCC clips).
SUBSETS_OF = {
    'fsdnoisy18k': ('noisy', 'clean', 'noisy_small', 'noisy_small_clean', 'all'),
    'fsdkaggle2018': ('noisy', 'clean', 'all'),
    'fsdkaggle2019': ('curated', 'noisy', 'all'),
    'fsd50k': ('all',),
    'arca23k': ('noisy', 'clean', 'all'),  # ARCA23K, ARCA23K-FSD, both
    'csv': ('all', 'verified', 'unverified'),
}


def targets(table, n_classes):
    """[N, K] float32 multi-hot targets of the table's clips (one-hot for single-label
    data)."""
    y = np.zeros((len(table), n_classes), np.float32)
    for row, ids in enumerate(table.labels_idx):
        y[row, list(ids)] = 1.0
    return y


def is_multi_label(table):
    """True when some clip has more than one label, or ctrl.csv.multi_label forces it."""
    forced = table.attrs.get('multi_label')
    if forced is not None:
        return forced
    return 'labels' in table.columns and bool((table['labels'].map(len) > 1).any())


def multi_label(cfg, table=None):
    """Whether the configured dataset is multi-label: from the table once loaded, before
    that from its name (csv: ctrl.csv.multi_label, or a labels cell of several)."""
    if table is not None:
        return is_multi_label(table)
    return (cfg['ctrl']['dataset'] in MULTI_LABEL or
            (cfg['ctrl']['dataset'] == 'csv' and csv_layout.multi_label(cfg)))


def train_rows(table, train_data):
    """Row numbers of the training clips of subset ctrl.train_data."""
    train = table[table.subset == 'train']
    rows = np.flatnonzero(TRAIN_SUBSETS[train_data](train).to_numpy())
    if rows.size == 0:
        raise ConfigError(f'ctrl.train_data {train_data!r} selects no training clip')
    return train.index.to_numpy()[rows]


def _folders(table, rows):
    return ', '.join(sorted({str(Path(p).parent) for p in table.path.to_numpy()[rows]}))


def _classes_of(table, rows):
    """Class indices that the given rows carry (every label of a multi-label clip)."""
    return {k for ids in table.labels_idx.to_numpy()[rows] for k in ids}


def readable_train_rows(table, classes, length, train_data):
    """Training rows of ctrl.train_data whose audio could be read (length [n] frames per
    row, 0 for a failed clip); every class must keep at least one."""
    rows = train_rows(table, train_data)
    readable = rows[length[rows] > 0]
    if readable.size == 0:
        raise ConfigError(f'no readable training clip: all {rows.size} clips of '
                          f'ctrl.train_data {train_data!r} failed to load from '
                          f'{_folders(table, rows)}')
    missing = sorted(set(range(len(classes))) - _classes_of(table, readable))
    if missing:
        raise ConfigError(f'class(es) {", ".join(classes[k] for k in missing)} have no '
                          f'readable training clip in ctrl.train_data {train_data!r} (from '
                          f'{_folders(table, rows)})')
    return readable


def readable_test_rows(table, length):
    """Test rows whose audio could be read; at least one, checked before training."""
    rows = table.index[(table.subset == 'test').to_numpy()].to_numpy()
    readable = rows[length[rows] > 0]
    if readable.size == 0:
        raise ConfigError(f'no readable test clip: all {rows.size} test clips failed to load '
                          f'from {_folders(table, rows)}')
    return readable


def readable_val_rows(table, length):
    """The readable clips of the dataset's own validation split (subset 'val'), or None
    where the dataset gives none (learn.val_split draws one)."""
    rows = table.index[(table.subset == 'val').to_numpy()].to_numpy()
    if rows.size == 0:
        return None
    readable = rows[length[rows] > 0]
    if readable.size == 0:
        raise ConfigError(f'no readable validation clip: all {rows.size} validation clips of '
                          f'the dataset failed to load from {_folders(table, rows)}')
    return readable


DATASETS = {'fsdnoisy18k': load_fsdnoisy18k, 'fsdkaggle2018': load_fsdkaggle2018,
            'fsdkaggle2019': load_fsdkaggle2019, 'fsd50k': load_fsd50k,
            'arca23k': load_arca23k, 'csv': csv_layout.load_csv}


def check(cfg):
    """Refuse an unknown dataset, a training subset the dataset lacks, or a ctrl.classes
    that is not a list of names."""
    name, subset = cfg['ctrl']['dataset'], cfg['ctrl']['train_data']
    lookup(DATASETS, name, 'ctrl.dataset')
    vocabulary = cfg['ctrl']['classes']
    if vocabulary is not None and not (vocabulary and all(isinstance(c, str) and c
                                                          for c in vocabulary)):
        raise ConfigError(f'ctrl.classes must be a list of class names (null: none), got '
                          f'{vocabulary!r}')
    if subset not in SUBSETS_OF[name]:
        raise ConfigError(f'ctrl.train_data {subset!r} does not apply to ctrl.dataset {name}; '
                          f'valid: {", ".join(SUBSETS_OF[name])}')
    if name == 'csv':
        csv_layout.check(cfg)
    elif cfg['ctrl']['test_fold'] is not None:
        raise ConfigError(f'ctrl.test_fold applies to ctrl.dataset csv (a table with a fold '
                          f'column), not to {name}: set it to null')
    if multi_label(cfg):
        _single_label_noise(cfg)


def _single_label_noise(cfg):
    if cfg['ctrl']['inject_noise']['rate'] > 0:
        raise ConfigError(f'ctrl.inject_noise replaces one label per clip and applies to '
                          f'single-label datasets, not to {cfg["ctrl"]["dataset"]} '
                          f'(synthetic.py --noise-rate writes multi-label noise)')


def load(cfg):
    """ctrl.dataset -> (table, classes), with ctrl.inject_noise applied to the labels."""
    table, classes = lookup(DATASETS, cfg['ctrl']['dataset'], 'ctrl.dataset')(cfg)
    if is_multi_label(table):  # a csv table is found multi-label only here
        _single_label_noise(cfg)
    spec = cfg['ctrl']['inject_noise']
    if spec['kind'] == 'open_set' and spec['rate'] > 0:  # held-out classes as noise
        return open_set.inject(table, classes, spec, noise_subset_rows(table, spec['subset']))
    return inject_noise(table, classes, spec), classes


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
        table['true_labels'], table['true_labels_idx'] = table['labels'], table['labels_idx']
    rng = np.random.default_rng(spec['seed'])
    rows = noise_subset_rows(table, spec['subset'])
    # round(rate * n) clips drawn without replacement: each clip is chosen with probability
    # rate, and the realised share is the requested rate, not a binomial draw around it.
    chosen = np.sort(rng.choice(rows, size=int(round(spec['rate'] * rows.size)), replace=False))
    new = flip_labels(table.label_idx.to_numpy()[chosen], len(classes), spec['kind'], rng)
    table.loc[chosen, 'label_idx'] = new
    table.loc[chosen, 'label'] = np.asarray(classes, object)[new]
    ids, names = table['labels_idx'].tolist(), table['labels'].tolist()  # targets read these
    for row, k in zip(chosen, new):
        ids[row], names[row] = (int(k),), (classes[k],)
    table['labels_idx'], table['labels'] = ids, names
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
                            'share_changed': float(changed.mean()) if rows.size else 0.0,
                            **(open_set.label_noise(table) if spec['kind'] == 'open_set' else {})}}
