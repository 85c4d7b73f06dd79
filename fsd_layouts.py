"""The layouts of the Freesound datasets: FSDnoisy18k, FSDKaggle2018 and FSDKaggle2019 (of
the sources), FSD50K and ARCA23K, each a folder -> (table, classes) (see datasets.py for
the table)."""
from pathlib import Path

import pandas as pd

import dataset_tables as tables
import vocabularies
from config import ConfigError

TRAIN_COLUMNS = ['fname', 'label', 'aso_id', 'manually_verified', 'noisy_small']
TEST_COLUMNS = ['fname', 'label', 'aso_id']


def load_fsdnoisy18k(cfg):
    """FSDnoisy18k layout -> (table, classes).

    table has one row per clip, train.csv's rows first: fname, path, label, label_idx, labels,
    labels_idx, verified, noisy_small, subset ('train'/'test'), [true_label, true_idx,
    true_labels, true_labels_idx when train.csv has true_label], plus any extra columns
    of the CSVs. classes are the sorted training labels.
    """
    root = tables.root(cfg)
    meta = root / 'FSDnoisy18k.meta'
    train = tables.read_csv(meta / 'train.csv', TRAIN_COLUMNS)
    test = tables.read_csv(meta / 'test.csv', TEST_COLUMNS)
    train['subset'], test['subset'] = 'train', 'test'
    train_audio = tables.audio_folder(root / 'FSDnoisy18k.audio_train')
    test_audio = tables.audio_folder(root / 'FSDnoisy18k.audio_test')
    train['path'] = [str(train_audio / f) for f in train.fname]
    test['path'] = [str(test_audio / f) for f in test.fname]
    train['verified'] = train.manually_verified.astype(float).astype(int)
    train['noisy_small'] = train.noisy_small.astype(float).astype(int)
    test['verified'], test['noisy_small'] = 1, 0
    train['labels'] = tables.split_labels(train, 'label', meta / 'train.csv', single=True)
    test['labels'] = tables.split_labels(test, 'label', meta / 'test.csv', single=True)
    tables.true_labels(train, [test], 'true_label', meta / 'train.csv')
    return tables.finish(cfg, train, [(test, 'test', meta / 'test.csv')],
                         [meta / 'train.csv'])


def load_fsdkaggle2018(cfg):
    """FSDKaggle2018 (DCASE 2018 task 2) layout -> (table, classes). Single-label;
    verified = manually_verified; test clips are the post-competition scoring clips."""
    root = tables.root(cfg)
    meta = root / 'FSDKaggle2018.meta'
    train_csv = meta / 'train_post_competition.csv'
    test_csv = meta / 'test_post_competition_scoring_clips.csv'
    train = tables.read_csv(train_csv, ['fname', 'label', 'manually_verified'])
    test = tables.read_csv(test_csv, ['fname', 'label'])
    train['subset'], test['subset'] = 'train', 'test'
    train_audio = tables.audio_folder(root / 'FSDKaggle2018.audio_train')
    test_audio = tables.audio_folder(root / 'FSDKaggle2018.audio_test')
    train['path'] = [str(train_audio / f) for f in train.fname]
    test['path'] = [str(test_audio / f) for f in test.fname]
    train['verified'], test['verified'] = train.manually_verified.astype(float).astype(int), 1
    train['labels'] = tables.split_labels(train, 'label', train_csv, single=True)
    test['labels'] = tables.split_labels(test, 'label', test_csv, single=True)
    tables.true_labels(train, [test], 'true_label', train_csv)
    return tables.finish(cfg, train, [(test, 'test', test_csv)], [train_csv],
                         (vocabularies.FSDKAGGLE2018, 'the FSDKaggle2018 vocabulary'))


def load_fsdkaggle2019(cfg):
    """FSDKaggle2019 (DCASE 2019 task 2) layout -> (table, classes). Multi-label (labels:
    a comma-separated list); the curated clips are the verified ones, the noisy ones
    (YFCC) unverified; subset 'train' holds both, curated first."""
    root = tables.root(cfg)
    meta = root / 'FSDKaggle2019.meta'
    csvs = {'curated': meta / 'train_curated_post_competition.csv',
            'noisy': meta / 'train_noisy_post_competition.csv',
            'test': meta / 'test_post_competition.csv'}
    frames = {}
    for part, path in csvs.items():
        df = tables.read_csv(path, ['fname', 'labels'])
        df['labels'] = tables.split_labels(df, 'labels', path)
        folder = 'audio_train_' + part if part != 'test' else 'audio_test'
        audio = tables.audio_folder(root / f'FSDKaggle2019.{folder}')
        df['path'] = [str(audio / f) for f in df.fname]
        df['verified'] = int(part != 'noisy')
        df['subset'] = 'test' if part == 'test' else 'train'
        frames[part] = df
    train = pd.concat([frames['curated'], frames['noisy']], ignore_index=True)
    tables.true_labels(train, [frames['test']], 'true_labels', csvs['noisy'])
    return tables.finish(cfg, train, [(frames['test'], 'test', csvs['test'])],
                         [csvs['curated'], csvs['noisy']],
                         (vocabularies.FSDKAGGLE2019, 'the FSDKaggle2019 vocabulary'))




def load_fsd50k(cfg):
    """FSD50K (Fonseca et al., "FSD50K: an open dataset of human-labeled sound events",
    IEEE/ACM TASLP 2022) -> (table, classes). Multi-label (200 classes, labels a comma-
    separated list of class names); every clip verified. dev.csv (fname, labels, mids,
    split) holds the development clips, its split column train / val the dataset's own
    validation split, used instead of learn.val_split; eval.csv (fname, labels, mids) the
    test clips; vocabulary.csv (no header: index, name, mid) the classes every label must
    be in. fname is the clip's Freesound id, its audio <fname>.wav in FSD50K.dev_audio/ or
    FSD50K.eval_audio/."""
    root = tables.root(cfg)
    meta = root / 'FSD50K.ground_truth'
    dev_csv, eval_csv = meta / 'dev.csv', meta / 'eval.csv'
    dev = tables.read_csv(dev_csv, ['fname', 'labels', 'split'])
    test = tables.read_csv(eval_csv, ['fname', 'labels'])
    for frame, folder, path in ((dev, 'FSD50K.dev_audio', dev_csv),
                                (test, 'FSD50K.eval_audio', eval_csv)):
        audio = tables.audio_folder(root / folder)
        frame['fname'] = frame.fname.astype(str)
        frame['path'] = [str(audio / f'{f}.wav') for f in frame.fname]
        frame['verified'] = 1
        frame['labels'] = tables.split_labels(frame, 'labels', path)
    split = dev.split.astype(str).str.strip()
    bad = ~split.isin(['train', 'val'])
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise ConfigError(f'{dev_csv} line {row + 2}: split {dev.split.iloc[row]!r} must be '
                          f'train or val')
    train = dev[(split == 'train').to_numpy()].reset_index(drop=True)
    val = dev[(split == 'val').to_numpy()].reset_index(drop=True)
    train['subset'] = 'train'
    tables.true_labels(train, [val, test], 'true_labels', dev_csv)
    return tables.finish(cfg, train, [(val, 'val', dev_csv), (test, 'test', eval_csv)],
                         [dev_csv], (_fsd50k_vocabulary(meta / 'vocabulary.csv'),
                                     str(meta / 'vocabulary.csv')))


def _fsd50k_vocabulary(path):
    """The class names of FSD50K's vocabulary.csv (rows index, name, mid; no header)."""
    if not path.is_file():
        raise ConfigError(f'missing dataset file {path} (check ctrl.dataset_path)')
    try:
        vocabulary = pd.read_csv(path, header=None, names=['index', 'name', 'mid'])
    except Exception as err:  # pandas raises several types for unreadable files
        raise ConfigError(f'cannot read {path}: {err}') from None
    if vocabulary.empty:
        raise ConfigError(f'{path} has no rows (rows: index,name,mid; no header)')
    empty = vocabulary.name.isna()
    if empty.any():
        raise ConfigError(f'{path} line {int(empty.to_numpy().argmax()) + 1}: no class name '
                          f'in its second column (rows: index,name,mid; no header)')
    return vocabulary.name.astype(str).str.strip().tolist()


# ARCA23K (Iqbal, Cao, Bailey, Plumbley & Wang, "ARCA23K: an audio dataset for
# investigating open-set label noise", DCASE 2021 workshop), as its Zenodo release and its
# baseline system lay it out (assumed here, no copy of the data was at hand): the
# ground-truth CSVs (fname = Freesound id, label = one class name, mid) are
# ARCA23K.ground_truth/train.csv (the noisy train set, audio in ARCA23K.audio/) and
# ARCA23K-FSD.ground_truth/{train,val,test}.csv (the clean train set and the validation and
# test sets both share, all FSD50K clips: train and val in FSD50K.dev_audio/, test in
# FSD50K.eval_audio/ of the FSD50K folder, ctrl.fsd50k_path). ARCA23K.ground_truth/ holds
# the same val.csv and test.csv; those of ARCA23K-FSD are read.
ARCA23K_TRAIN = {'noisy': ('ARCA23K.ground_truth', 'ARCA23K.audio', 0),
                 'clean': ('ARCA23K-FSD.ground_truth', 'FSD50K.dev_audio', 1)}


def load_arca23k(cfg):
    """ARCA23K / ARCA23K-FSD -> (table, classes): single-label, 70 classes; ctrl.train_data
    noisy trains on ARCA23K (verified 0), clean on ARCA23K-FSD (verified 1), all on both;
    val.csv is the dataset's own validation split (used instead of learn.val_split)."""
    root = tables.root(cfg)
    fsd50k = Path(cfg['ctrl']['fsd50k_path'] or root)
    if not fsd50k.is_dir():
        raise ConfigError(f'FSD50K folder {fsd50k} does not exist (ctrl.fsd50k_path)')
    chosen = cfg['ctrl']['train_data']
    parts, train_csvs = [], []
    for name, (meta, audio, verified) in ARCA23K_TRAIN.items():
        if chosen in (name, 'all'):
            path = root / meta / 'train.csv'
            parts.append(_arca23k_csv(path, (root if verified == 0 else fsd50k) / audio,
                                      verified))
            train_csvs.append(path)
    train = pd.concat(parts, ignore_index=True)
    train['subset'] = 'train'
    meta = root / 'ARCA23K-FSD.ground_truth'
    val = _arca23k_csv(meta / 'val.csv', fsd50k / 'FSD50K.dev_audio', 1)
    test = _arca23k_csv(meta / 'test.csv', fsd50k / 'FSD50K.eval_audio', 1)
    tables.check_distinct([train, val, test])
    tables.true_labels(train, [val, test], 'true_label', train_csvs[0])
    return tables.finish(cfg, train, [(val, 'val', meta / 'val.csv'),
                                      (test, 'test', meta / 'test.csv')], train_csvs)


def _arca23k_csv(path, audio, verified):
    frame = tables.read_csv(path, ['fname', 'label'])
    audio = tables.audio_folder(audio)
    frame['fname'] = frame.fname.astype(str)
    frame['path'] = [str(audio / f'{f}.wav') for f in frame.fname]
    frame['verified'] = verified
    frame['labels'] = tables.split_labels(frame, 'label', path, single=True)
    return frame
