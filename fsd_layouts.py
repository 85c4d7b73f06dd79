"""The layouts of the Freesound datasets of the sources: FSDnoisy18k, FSDKaggle2018 and
FSDKaggle2019, each a folder -> (table, classes) (see datasets.py for the table)."""
import pandas as pd

import dataset_tables as tables
import vocabularies

TRAIN_COLUMNS = ['fname', 'label', 'aso_id', 'manually_verified', 'noisy_small']
TEST_COLUMNS = ['fname', 'label', 'aso_id']


def load_fsdnoisy18k(cfg):
    """FSDnoisy18k layout -> (table, classes).

    table has one row per clip, train rows first: fname, path, label, label_idx, labels,
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
    tables.true_labels(train, test, 'true_label', meta / 'train.csv')
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
    tables.true_labels(train, test, 'true_label', train_csv)
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
    tables.true_labels(train, frames['test'], 'true_labels', csvs['noisy'])
    return tables.finish(cfg, train, [(frames['test'], 'test', csvs['test'])],
                         [csvs['curated'], csvs['noisy']],
                         (vocabularies.FSDKAGGLE2019, 'the FSDKaggle2019 vocabulary'))


