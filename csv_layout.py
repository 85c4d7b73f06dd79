"""ctrl.dataset csv: any folder of audio with a table -> (table, classes) (datasets.py).

The clips come from one CSV (ctrl.csv.table: a split column of train / val / test, or
official folds with ctrl.test_fold K: test on fold K, train on the others) or two
(ctrl.csv.train + ctrl.csv.test). Column names are ctrl.csv's; only fname and labels are
required. verified (0/1) is optional: without it every clip is verified. A true-labels
column turns on the noise-detection figures. Audio paths are relative to the CSV's folder,
or to ctrl.dataset_path / ctrl.csv.audio_dir. Every table mistake is one line naming the
file, line and column: a missing column, an empty cell, a split outside train / val /
test, a fold that is not a whole number or a ctrl.test_fold no row has, a repeated file,
an audio file that does not exist (a listed file that is not there is a mistake of the
table here, not a bad clip to skip: the user wrote the table).
"""
import logging
from pathlib import Path

import pandas as pd

import dataset_tables as tables
from config import ConfigError

logger = logging.getLogger(__name__)

SPLITS = ('train', 'val', 'test')


def load_csv(cfg):
    """The csv layout -> (table, classes); see the module docstring."""
    spec, fold = cfg['ctrl']['csv'], cfg['ctrl']['test_fold']
    root = tables.root(cfg)
    if spec['table'] is not None:
        path = root / spec['table']
        frame = _read(cfg, path, [spec['fold'] if fold is not None else spec['split']])
        parts = _by_fold(frame, spec['fold'], fold) if fold is not None else \
            _by_split(frame, spec['split'])
        sources = dict.fromkeys(parts, path)
    else:
        sources = {'train': root / spec['train'], 'test': root / spec['test']}
        parts = {name: _read(cfg, path) for name, path in sources.items()}
    tables.check_distinct(list(parts.values()))
    for frame in parts.values():
        _check_files(frame, spec['fname'])
    train = parts['train']
    train['subset'] = 'train'
    others = [(parts[name], name, sources[name]) for name in ('val', 'test') if name in parts]
    if spec['true_labels'] in train.columns:
        tables.true_labels(train, [frame for frame, _, _ in others], spec['true_labels'],
                           sources['train'], spec['separator'])
    table, classes = tables.finish(cfg, train, others, [sources['train']])
    if spec['multi_label'] is not None:
        table.attrs['multi_label'] = spec['multi_label']
    return table, classes


def multi_label(cfg):
    """Whether the csv dataset is multi-label, known before it is loaded (the checks of the
    methods and metrics run first): ctrl.csv.multi_label when set, else whether a labels
    cell of the table (or of the training CSV) holds several labels. A CSV that cannot be
    read counts as single-label here: loading it reports the mistake with its line."""
    spec = cfg['ctrl']['csv']
    if spec['multi_label'] is not None:
        return spec['multi_label']
    name = spec['table'] or spec['train']
    if name is None:
        return False
    try:
        cells = pd.read_csv(Path(cfg['ctrl']['dataset_path']) / name,
                            usecols=[spec['labels']])[spec['labels']]
    except (OSError, ValueError):  # pandas' parser and empty-file errors are ValueErrors
        return False
    return bool(cells.dropna().astype(str).map(
        lambda cell: sum(bool(n.strip()) for n in cell.split(spec['separator'])) > 1).any())


def check(cfg):
    """ctrl.csv names one table, or a train and a test CSV; ctrl.test_fold needs the table."""
    spec, fold = cfg['ctrl']['csv'], cfg['ctrl']['test_fold']
    pair = (spec['train'] is not None, spec['test'] is not None)
    if spec['table'] is None and pair != (True, True):
        raise ConfigError('ctrl.dataset csv needs ctrl.csv.table (one CSV of every clip), or '
                          'both ctrl.csv.train and ctrl.csv.test')
    if spec['table'] is not None and any(pair):
        raise ConfigError('ctrl.csv.table and ctrl.csv.train / ctrl.csv.test are two ways to '
                          'name the clips: set one')
    if fold is not None and spec['table'] is None:
        raise ConfigError(f'ctrl.test_fold {fold} needs one table of every clip with a fold '
                          f'column (ctrl.csv.table), not ctrl.csv.train / ctrl.csv.test')
    if not spec['separator']:
        raise ConfigError("ctrl.csv.separator must be a character such as ',' or ';'")


def _read(cfg, path, more=()):
    """One CSV of the layout, checked (tables.read_csv) -> frame with labels, path, verified."""
    spec = cfg['ctrl']['csv']
    frame = tables.read_csv(path, [spec['fname'], spec['labels'], *more], [spec['verified']],
                            spec['fname'])
    if spec['verified'] in frame.columns:
        frame['verified'] = frame[spec['verified']].astype(float).astype(int)
    else:
        frame['verified'] = 1
    frame['fname'] = frame[spec['fname']].astype(str)
    frame['labels'] = tables.split_labels(frame, spec['labels'], path,
                                          single=spec['multi_label'] is False,
                                          separator=spec['separator'])
    audio = (Path(cfg['ctrl']['dataset_path']) / spec['audio_dir']
             if spec['audio_dir'] is not None else path.parent)
    frame['path'] = [str(audio / f) for f in frame.fname]
    return frame


def _by_split(frame, column):
    """Rows by the split column (train / val / test); val, when present, is the dataset's
    own validation split."""
    values = frame[column].astype(str).str.strip()
    bad = ~values.isin(SPLITS)
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise ConfigError(f'{frame.csv_path.iloc[row]} line {frame.csv_line.iloc[row]}: '
                          f'{column} {frame[column].iloc[row]!r} must be one of '
                          f'{", ".join(SPLITS)}')
    for name in ('train', 'test'):
        if not (values == name).any() and len(frame):
            raise ConfigError(f'{frame.csv_path.iloc[0]} has no {name} row (column {column})')
    return {name: frame[(values == name).to_numpy()].reset_index(drop=True)
            for name in SPLITS if name != 'val' or (values == 'val').any()}


def _by_fold(frame, column, fold):
    """Rows of fold `fold` are the test clips, the others the training clips."""
    folds = pd.to_numeric(frame[column], errors='coerce')
    bad = folds.isna() | (folds != folds.round())
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise ConfigError(f'{frame.csv_path.iloc[row]} line {frame.csv_line.iloc[row]}: '
                          f'{column} {frame[column].iloc[row]!r} is not a fold number')
    folds = folds.astype(int)
    if not (folds == fold).any():
        raise ConfigError(f'ctrl.test_fold {fold}: no row of {frame.csv_path.iloc[0]} has it '
                          f'in column {column} (folds: '
                          f'{", ".join(map(str, sorted(folds.unique())))})')
    test = (folds == fold).to_numpy()
    if test.all():
        raise ConfigError(f'ctrl.test_fold {fold}: every row of {frame.csv_path.iloc[0]} is of '
                          f'fold {fold}, none is left to train on')
    logger.info('ctrl.test_fold %d: %d test clips of fold %d, %d training clips of folds %s',
                fold, test.sum(), fold, (~test).sum(),
                ', '.join(map(str, sorted(set(folds[~test])))))
    return {'train': frame[~test].reset_index(drop=True),
            'test': frame[test].reset_index(drop=True)}


def _check_files(frame, column):
    """Every listed audio file exists (one os.stat each: cheap next to reading them)."""
    for row, path in enumerate(frame.path):
        if not Path(path).is_file():
            raise ConfigError(f'{frame.csv_path.iloc[row]} line {frame.csv_line.iloc[row]}: '
                              f'{column} {frame.fname.iloc[row]!r}: audio file {path} does '
                              f'not exist')
