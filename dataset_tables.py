"""The metadata CSVs of a dataset -> checked frames -> one clip table (datasets.py).

Every reader here refuses a table mistake with one line naming the file, the line and,
where there is one, the column and fname: a missing file or column, an empty or malformed
cell, a repeated fname, several labels in single-label data, a rare label that misspells
another (RARE_CLIPS) or one outside the dataset's vocabulary.
"""
import difflib
import re
from pathlib import Path

import numpy as np
import pandas as pd

from config import ConfigError


def read_csv(path, columns, flags=None, fname='fname'):
    """The CSV at path, refused with one line when it lacks a column of columns or has an
    empty cell in one, a flag column (flags: those of columns that hold 0/1; default FLAGS)
    outside 0/1 (an optional flag column too, when present), or a repeated fname (the
    column `fname`); with csv_path and csv_line (its file line)."""
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
    flags = FLAGS if flags is None else flags
    _check_cells(path, df, [*columns, *(f for f in flags if f in df and f not in columns)],
                 flags)
    _check_unique(path, df, fname)
    df['csv_path'], df['csv_line'] = str(path), np.arange(len(df)) + 2  # line 1: the header
    return df


FLAGS = ('manually_verified', 'noisy_small')  # 0/1 columns of the training CSVs
LABEL_COLUMNS = ('label', 'labels')  # checked by split_labels, which names the fname


def _check_cells(path, df, columns, flags):
    """One line naming the file, line and column of the first empty or malformed cell."""
    for column in columns:
        cells = df[column]
        empty = cells.isna() | (cells.astype(str).str.strip() == '')
        if empty.any() and column not in LABEL_COLUMNS:
            raise ConfigError(f'{path} line {_line(empty)}: empty {column} cell')
        if column in flags:
            bad = ~cells.astype(str).str.strip().isin(['0', '1', '0.0', '1.0'])
            if bad.any():
                value = cells[bad].iloc[0]
                # a numpy scalar would print as np.int64(2)
                value = value.item() if isinstance(value, np.generic) else value
                raise ConfigError(f'{path} line {_line(bad)}: {column} must be 0 or 1, got '
                                  f'{value!r}')


def _check_unique(path, df, column):
    """One clip per fname in a CSV: a repeated row would count (and train) the clip twice."""
    fnames = df[column]
    repeated = fnames.duplicated()
    if repeated.any():
        second = int(repeated.to_numpy().argmax())
        first = int((fnames == fnames.iloc[second]).to_numpy().argmax())
        raise ConfigError(f'{path} lines {first + 2} and {second + 2}: {column} '
                          f'{fnames.iloc[second]} appears twice (one row per clip)')


def _line(mask):
    """File line of the first True row (line 1 is the header)."""
    return int(mask.to_numpy().argmax()) + 2


def audio_folder(folder):
    if not folder.is_dir():
        raise ConfigError(f'audio folder {folder} does not exist (check ctrl.dataset_path '
                          f'and the folder name)')
    return folder


def root(cfg):
    root = Path(cfg['ctrl']['dataset_path'])
    if not root.is_dir():
        raise ConfigError(f'dataset folder {root} does not exist (ctrl.dataset_path)')
    return root


def split_labels(df, column, path, single=False, separator=','):
    """Column of label strings -> list of sorted label tuples; separator (a comma) separates
    the labels of a multi-label clip. An empty label, or several in a `single`-label
    dataset, is an error naming file and row."""
    out = []
    for row, value in enumerate(df[column].tolist()):
        names = [] if pd.isna(value) else [n.strip() for n in str(value).split(separator)]
        # row + 2: the header is line 1 of the file
        where = f'{path} line {row + 2} (fname {df.fname.iloc[row]})'
        if not names or not all(names):
            raise ConfigError(f'{where}: empty label in column {column!r}')
        if single and len(names) > 1:
            raise ConfigError(f'{where}: {column} {value!r} holds several labels, but this '
                              f'dataset has one label per clip')
        out.append(tuple(sorted(set(names))))
    return out


def finish(cfg, train, others, train_csvs, vocabulary=None):
    """The frames of a dataset with a 'labels' column -> (table, classes).

    train: the training clips; others: ((frame, subset, csv path), ...) of the other clips
    (the dataset's own validation clips, 'val', then the test clips, 'test'), each frame
    with fname, path, verified, labels and any true_labels; train_csvs: the training CSVs,
    named when they have no rows. Every frame carries csv_path / csv_line (read_csv), which
    name the file line of a mistake and are dropped here. vocabulary: (names, what they
    are) of the dataset's official class list, or None; ctrl.classes, when set, replaces it.
    Every label of every clip must then be in it; without one, a rare training label that
    misspells another is refused.
    """
    if train.empty:
        raise ConfigError(f'{" and ".join(str(p) for p in train_csvs)} '
                          f'{"has" if len(train_csvs) == 1 else "have"} no training clips '
                          f'(only a header line)')
    for frame, subset, path in others:
        if frame.empty:
            raise ConfigError(f'{path} has no {SUBSET_NAMES[subset]} clips (only a header '
                              f'line)')
        frame['subset'] = subset
    if cfg['ctrl']['classes'] is not None:
        vocabulary = (cfg['ctrl']['classes'], 'ctrl.classes')
    if vocabulary is None:
        _check_misspelt(train)
    else:
        for frame in (train, *(frame for frame, _, _ in others)):
            _check_vocabulary(*vocabulary, frame)
    classes = sorted({name for labels in train['labels'] for name in labels})
    n_classes = cfg['learn']['n_classes']
    if n_classes is not None and len(classes) != n_classes:
        raise ConfigError(f'learn.n_classes is {n_classes} but {train_csvs[0]} has '
                          f'{len(classes)} classes (null: take them from the data)')
    index = {c: i for i, c in enumerate(classes)}
    for frame, subset, _ in others:
        for row, labels in enumerate(frame['labels']):
            unknown = [n for n in labels if n not in index]
            if unknown:
                raise ConfigError(f'{_where(frame, row)} has labels absent from the training '
                                  f'data: {", ".join(unknown[:5])}')
    table = pd.concat([train, *(frame for frame, _, _ in others)], ignore_index=True)
    # Rows in the order of their files (the training CSVs first) and of their lines: the
    # same clips give the same rows, and so share one feature cache, whichever of them a
    # test fold or a split column makes the test clips.
    files = {path: i for i, path in enumerate(dict.fromkeys(table.csv_path))}
    order = np.lexsort((table.csv_line.to_numpy(), table.csv_path.map(files).to_numpy()))
    table = table.iloc[order].reset_index(drop=True).drop(columns=['csv_path', 'csv_line'])
    _label_columns(table, 'labels', index, 'label', 'label_idx')
    if 'true_labels' in table.columns:
        _label_columns(table, 'true_labels', index, 'true_label', 'true_idx')
    return table, classes


SUBSET_NAMES = {'val': 'validation', 'test': 'test'}


def _where(frame, row):
    """'PATH line N (fname F)' of a row of a frame read by read_csv."""
    return (f'{frame.csv_path.iloc[row]} line {frame.csv_line.iloc[row]} '
            f'(fname {frame.fname.iloc[row]})')


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


def _check_misspelt(train):
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
                raise ConfigError(
                    f'{_where(train, row)}: label {name!r} '
                    f'(in {count} training clip(s)) looks like a misspelling of '
                    f'{" and ".join(like)}; correct it, or list every class in ctrl.classes '
                    f'if it is a class of its own')


def _check_vocabulary(names, what, frame):
    """Every label of frame must be one of names (what: where they come from, for the
    message, which names the closest class)."""
    known = set(names)
    for row, labels in enumerate(frame['labels']):
        unknown = [n for n in labels if n not in known]
        if unknown:
            like = _resembles(unknown[0], names) or difflib.get_close_matches(
                unknown[0], names, n=1, cutoff=0)
            hint = f' (did you mean {" and ".join(like)}?)' if like else ''
            raise ConfigError(f'{_where(frame, row)}: label {unknown[0]!r} is not in '
                              f'{what}{hint}')


def _label_columns(table, column, index, name_column, idx_column):
    """From a column of label tuples: its _idx tuples, the comma-joined names and the
    index of the first label (-1 for a name outside the classes)."""
    table[f'{column}_idx'] = [tuple(index.get(n, -1) for n in labels)
                              for labels in table[column]]
    table[name_column] = [','.join(labels) for labels in table[column]]
    table[idx_column] = [ids[0] for ids in table[f'{column}_idx']]


def true_labels(train, others, column, path, separator=','):
    """true_labels from the optional truth column of the training CSV(s) (synthetic data);
    a clip without one keeps its given labels, the other (test, validation) clips theirs."""
    if column not in train.columns:
        return
    given = train['labels']
    truth = train[column].where(train[column].notna(), given.map(separator.join))
    train['true_labels'] = split_labels(train.assign(**{column: truth}), column, path,
                                        separator=separator)
    for frame in others:
        frame['true_labels'] = frame['labels']


def check_distinct(frames):
    """One clip per audio file across the frames (two CSVs, or a train and a test part,
    that list one file would train and test on it, or count it twice)."""
    every = pd.concat([frame[['path', 'csv_path', 'csv_line']] for frame in frames],
                      ignore_index=True)
    repeated = every.path.duplicated()
    if repeated.any():
        second = every[repeated].iloc[0]
        first = every[every.path == second.path].iloc[0]
        raise ConfigError(f'{first.csv_path} line {first.csv_line} and {second.csv_path} line '
                          f'{second.csv_line} list the same audio file {second.path} (one row '
                          f'per clip)')

