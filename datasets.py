"""Datasets by name (config key `ctrl.dataset`): a dataset folder -> one clip table.

Every adapter returns (table, classes): one row per clip, train rows first, with fname,
path, label, labels, labels_idx, label_idx, verified, subset ('train'/'test') and, where
the CSVs have them, the true labels; classes are the sorted training labels.

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
misspells another (RARE_CLIPS) or one outside ctrl.classes is refused with file and line.
"""
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

import open_set
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
    'curated': lambda t: t.verified == 1,
}

MULTI_LABEL = ('fsdkaggle2019',)  # datasets whose clips may carry several labels

# The subsets each dataset has. FSDKaggle2018 is split like FSDnoisy18k: noisy = the
# clips not manually verified, clean = the verified ones. FSDKaggle2019: curated (the
# verified FSD clips), noisy (the unverified YFCC clips).
SUBSETS_OF = {
    'fsdnoisy18k': ('noisy', 'clean', 'noisy_small', 'noisy_small_clean', 'all'),
    'fsdkaggle2018': ('noisy', 'clean', 'all'),
    'fsdkaggle2019': ('curated', 'noisy', 'all'),
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
    _check_cells(path, df, columns)
    _check_unique(path, df)
    return df


FLAGS = ('manually_verified', 'noisy_small')  # 0/1 columns of the training CSVs
LABEL_COLUMNS = ('label', 'labels')  # checked by _split_labels, which names the fname


def _check_cells(path, df, columns):
    """One line naming the file, line and column of the first empty or malformed cell."""
    for column in columns:
        cells = df[column]
        empty = cells.isna() | (cells.astype(str).str.strip() == '')
        if empty.any() and column not in LABEL_COLUMNS:
            raise ConfigError(f'{path} line {_line(empty)}: empty {column} cell')
        if column in FLAGS:
            bad = ~cells.astype(str).str.strip().isin(['0', '1', '0.0', '1.0'])
            if bad.any():
                value = cells[bad].iloc[0]
                # a numpy scalar would print as np.int64(2)
                value = value.item() if isinstance(value, np.generic) else value
                raise ConfigError(f'{path} line {_line(bad)}: {column} must be 0 or 1, got '
                                  f'{value!r}')


def _check_unique(path, df):
    """One clip per fname in a CSV: a repeated row would count (and train) the clip twice."""
    repeated = df.fname.duplicated()
    if repeated.any():
        second = int(repeated.to_numpy().argmax())
        first = int((df.fname == df.fname.iloc[second]).to_numpy().argmax())
        raise ConfigError(f'{path} lines {first + 2} and {second + 2}: fname '
                          f'{df.fname.iloc[second]} appears twice (one row per clip)')


def _line(mask):
    """File line of the first True row (line 1 is the header)."""
    return int(mask.to_numpy().argmax()) + 2


def _audio_folder(folder):
    if not folder.is_dir():
        raise ConfigError(f'audio folder {folder} does not exist (check ctrl.dataset_path '
                          f'and the folder name)')
    return folder


def _root(cfg):
    root = Path(cfg['ctrl']['dataset_path'])
    if not root.is_dir():
        raise ConfigError(f'dataset folder {root} does not exist (ctrl.dataset_path)')
    return root


def _split_labels(df, column, path, single=False):
    """Column of label strings -> list of sorted label tuples; a comma separates the
    labels of a multi-label clip. An empty label, or several in a `single`-label dataset,
    is an error naming file and row."""
    out = []
    for row, value in enumerate(df[column].tolist()):
        names = [] if pd.isna(value) else [n.strip() for n in str(value).split(',')]
        # row + 2: the header is line 1 of the file
        where = f'{path} line {row + 2} (fname {df.fname.iloc[row]})'
        if not names or not all(names):
            raise ConfigError(f'{where}: empty label in column {column!r}')
        if single and len(names) > 1:
            raise ConfigError(f'{where}: {column} {value!r} holds several labels, but this '
                              f'dataset has one label per clip')
        out.append(tuple(sorted(set(names))))
    return out


def _finish(cfg, parts, sources):
    """Train and test frames with a 'labels' column -> (table, classes).

    parts: (train, test) DataFrames with fname, path, verified, subset, labels and any
    true_labels; sources: (train CSVs, test CSV) for error messages, the train CSVs as
    ((path, number of rows), ...) in the order of train's rows.
    """
    train, test = parts
    train_csvs, test_csv = sources
    if train.empty:
        raise ConfigError(f'{" and ".join(str(p) for p, _ in train_csvs)} '
                          f'{"has" if len(train_csvs) == 1 else "have"} no training clips '
                          f'(only a header line)')
    if test.empty:
        raise ConfigError(f'{test_csv} has no test clips (only a header line)')
    vocabulary = cfg['ctrl']['classes']
    if vocabulary is None:
        _check_misspelt(train, train_csvs)
    else:
        _check_vocabulary(vocabulary, train, lambda row: _locate(train_csvs, row))
        _check_vocabulary(vocabulary, test, lambda row: (test_csv, row + 2))
    classes = sorted({name for labels in train['labels'] for name in labels})
    n_classes = cfg['learn']['n_classes']
    if n_classes is not None and len(classes) != n_classes:
        raise ConfigError(f'learn.n_classes is {n_classes} but {train_csvs[0][0]} has '
                          f'{len(classes)} classes (null: take them from the data)')
    index = {c: i for i, c in enumerate(classes)}
    for row, labels in enumerate(test['labels']):
        unknown = [n for n in labels if n not in index]
        if unknown:
            raise ConfigError(f'{test_csv} line {row + 2} (fname {test.fname.iloc[row]}) has '
                              f'labels absent from the training data: {", ".join(unknown[:5])}')
    table = pd.concat([train, test], ignore_index=True)
    _label_columns(table, 'labels', index, 'label', 'label_idx')
    if 'true_labels' in table.columns:
        _label_columns(table, 'true_labels', index, 'true_label', 'true_idx')
    return table, classes


def _locate(csvs, row):
    """Row of the concatenated training CSVs ((path, n_rows), ...) -> (path, file line)."""
    for path, n_rows in csvs:
        if row < n_rows:
            return path, row + 2  # line 1 is the header
        row -= n_rows
    raise IndexError(row)


# A training label in at most RARE_CLIPS clips, or in under RARE_SHARE of them, that is
# another label but for case, quotes and spaces (or underscores, which the datasets write
# for spaces), or other labels joined by a separator, is a misspelling: taken as it is, it
# would be a class of its own and the clip's real label lost. A frequent label is a class,
# however it is spelt.
RARE_CLIPS, RARE_SHARE = 2, 0.01
SEPARATORS = re.compile(r'[;|,]')


def _plain(name):
    """What two spellings of one class share: the name without case, quotes, spaces or
    underscores."""
    return re.sub(r'[\s_"\']', '', name).casefold()


def _resembles(name, labels):
    """The labels that `name` misspells, alone or joined ([] if none); where several
    spellings match, the first in `labels` (most frequent first) is named."""
    plain = {}
    for label in labels:
        if label != name:
            plain.setdefault(_plain(label), label)
    if _plain(name) in plain:
        return [plain[_plain(name)]]
    parts = [part for part in SEPARATORS.split(name) if _plain(part)]
    if parts != [name] and parts and all(_plain(part) in plain for part in parts):
        return [plain[_plain(part)] for part in parts]
    return []


def _check_misspelt(train, csvs):
    """Refuse the first rare training label that misspells another (see RARE_CLIPS)."""
    counts = pd.Series([n for labels in train['labels'] for n in labels]).value_counts()
    checked = set()
    for row, labels in enumerate(train['labels']):
        for name in labels:
            count = int(counts[name])
            if name in checked or (count > RARE_CLIPS and count >= RARE_SHARE * len(train)):
                continue
            checked.add(name)
            like = _resembles(name, counts.index)
            if like:
                path, line = _locate(csvs, row)
                raise ConfigError(
                    f'{path} line {line} (fname {train.fname.iloc[row]}): label {name!r} '
                    f'(in {count} training clip(s)) looks like a misspelling of '
                    f'{" and ".join(like)}; correct it, or list every class in ctrl.classes '
                    f'if it is a class of its own')


def _check_vocabulary(vocabulary, frame, where):
    """Every label of frame must be one of ctrl.classes; where(row) -> (path, line)."""
    known = set(vocabulary)
    for row, labels in enumerate(frame['labels']):
        unknown = [n for n in labels if n not in known]
        if unknown:
            path, line = where(row)
            like = _resembles(unknown[0], vocabulary)
            hint = f' (did you mean {" and ".join(like)}?)' if like else ''
            raise ConfigError(f'{path} line {line} (fname {frame.fname.iloc[row]}): label '
                              f'{unknown[0]!r} is not in ctrl.classes{hint}')


def _label_columns(table, column, index, name_column, idx_column):
    """From a column of label tuples: its _idx tuples, the comma-joined names and the
    index of the first label (-1 for a name outside the classes)."""
    table[f'{column}_idx'] = [tuple(index.get(n, -1) for n in labels)
                              for labels in table[column]]
    table[name_column] = [','.join(labels) for labels in table[column]]
    table[idx_column] = [ids[0] for ids in table[f'{column}_idx']]


def targets(table, n_classes):
    """[N, K] float32 multi-hot targets of the table's clips (one-hot for single-label
    data)."""
    y = np.zeros((len(table), n_classes), np.float32)
    for row, ids in enumerate(table.labels_idx):
        y[row, list(ids)] = 1.0
    return y


def is_multi_label(table):
    """True when some clip has more than one label."""
    return 'labels' in table.columns and bool((table['labels'].map(len) > 1).any())


def load_fsdnoisy18k(cfg):
    """FSDnoisy18k layout -> (table, classes).

    table has one row per clip, train rows first: fname, path, label, label_idx, labels,
    labels_idx, verified, noisy_small, subset ('train'/'test'), [true_label, true_idx,
    true_labels, true_labels_idx when train.csv has true_label], plus any extra columns
    of the CSVs. classes are the sorted training labels.
    """
    root = _root(cfg)
    meta = root / 'FSDnoisy18k.meta'
    train = _read_csv(meta / 'train.csv', TRAIN_COLUMNS)
    test = _read_csv(meta / 'test.csv', TEST_COLUMNS)
    train['subset'], test['subset'] = 'train', 'test'
    train_audio = _audio_folder(root / 'FSDnoisy18k.audio_train')
    test_audio = _audio_folder(root / 'FSDnoisy18k.audio_test')
    train['path'] = [str(train_audio / f) for f in train.fname]
    test['path'] = [str(test_audio / f) for f in test.fname]
    train['verified'] = train.manually_verified.astype(float).astype(int)
    train['noisy_small'] = train.noisy_small.astype(float).astype(int)
    test['verified'], test['noisy_small'] = 1, 0
    train['labels'] = _split_labels(train, 'label', meta / 'train.csv', single=True)
    test['labels'] = _split_labels(test, 'label', meta / 'test.csv', single=True)
    _true_labels(train, test, 'true_label', meta / 'train.csv')
    return _finish(cfg, (train, test), (((meta / 'train.csv', len(train)),),
                                        meta / 'test.csv'))


def load_fsdkaggle2018(cfg):
    """FSDKaggle2018 (DCASE 2018 task 2) layout -> (table, classes). Single-label;
    verified = manually_verified; test clips are the post-competition scoring clips."""
    root = _root(cfg)
    meta = root / 'FSDKaggle2018.meta'
    train_csv = meta / 'train_post_competition.csv'
    test_csv = meta / 'test_post_competition_scoring_clips.csv'
    train = _read_csv(train_csv, ['fname', 'label', 'manually_verified'])
    test = _read_csv(test_csv, ['fname', 'label'])
    train['subset'], test['subset'] = 'train', 'test'
    train_audio = _audio_folder(root / 'FSDKaggle2018.audio_train')
    test_audio = _audio_folder(root / 'FSDKaggle2018.audio_test')
    train['path'] = [str(train_audio / f) for f in train.fname]
    test['path'] = [str(test_audio / f) for f in test.fname]
    train['verified'], test['verified'] = train.manually_verified.astype(float).astype(int), 1
    train['labels'] = _split_labels(train, 'label', train_csv, single=True)
    test['labels'] = _split_labels(test, 'label', test_csv, single=True)
    _true_labels(train, test, 'true_label', train_csv)
    return _finish(cfg, (train, test), (((train_csv, len(train)),), test_csv))


def load_fsdkaggle2019(cfg):
    """FSDKaggle2019 (DCASE 2019 task 2) layout -> (table, classes). Multi-label (labels:
    a comma-separated list); the curated clips are the verified ones, the noisy ones
    (YFCC) unverified; subset 'train' holds both, curated first."""
    root = _root(cfg)
    meta = root / 'FSDKaggle2019.meta'
    csvs = {'curated': meta / 'train_curated_post_competition.csv',
            'noisy': meta / 'train_noisy_post_competition.csv',
            'test': meta / 'test_post_competition.csv'}
    frames = {}
    for part, path in csvs.items():
        df = _read_csv(path, ['fname', 'labels'])
        df['labels'] = _split_labels(df, 'labels', path)
        folder = 'audio_train_' + part if part != 'test' else 'audio_test'
        audio = _audio_folder(root / f'FSDKaggle2019.{folder}')
        df['path'] = [str(audio / f) for f in df.fname]
        df['verified'] = int(part != 'noisy')
        df['subset'] = 'test' if part == 'test' else 'train'
        frames[part] = df
    train = pd.concat([frames['curated'], frames['noisy']], ignore_index=True)
    _true_labels(train, frames['test'], 'true_labels', csvs['noisy'])
    return _finish(cfg, (train, frames['test']),
                   (tuple((csvs[p], len(frames[p])) for p in ('curated', 'noisy')), csvs['test']))


def _true_labels(train, test, column, path):
    """true_labels from the optional truth column of the training CSV(s) (synthetic data);
    a clip without one keeps its given labels, the test clips theirs."""
    if column not in train.columns:
        return
    given = train['labels']
    truth = train[column].where(train[column].notna(), given.map(','.join))
    train['true_labels'] = _split_labels(train.assign(**{column: truth}), column, path)
    test['true_labels'] = test['labels']


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


DATASETS = {'fsdnoisy18k': load_fsdnoisy18k, 'fsdkaggle2018': load_fsdkaggle2018,
            'fsdkaggle2019': load_fsdkaggle2019}


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
    if name in MULTI_LABEL and cfg['ctrl']['inject_noise']['rate'] > 0:
        raise ConfigError(f'ctrl.inject_noise replaces one label per clip and applies to '
                          f'single-label datasets, not to {name} (synthetic.py --noise-rate '
                          f'writes multi-label noise)')


def load(cfg):
    """ctrl.dataset -> (table, classes), with ctrl.inject_noise applied to the labels."""
    table, classes = lookup(DATASETS, cfg['ctrl']['dataset'], 'ctrl.dataset')(cfg)
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
