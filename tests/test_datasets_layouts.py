"""Issue 18 §1-§2: the csv, fsd50k and arca23k layouts on tiny synthetic data of their own
layout (counts against pandas on the CSVs), their one-line table errors, and the dataset's
own validation split replacing learn.val_split."""
import re
import shutil

import numpy as np
import pandas as pd
import pytest

import datasets
import synthetic
from config import ConfigError

TINY_DATA = dict(n_classes=3, train_per_class=6, test_per_class=2, clean_fraction=0.5,
                 noise_rate=0.3, min_dur=0.2, max_dur=0.3, sr=16000, seed=2)


@pytest.fixture(scope='module')
def layouts(tmp_path_factory):
    """{layout: folder} of one tiny synthetic dataset per new layout."""
    root = tmp_path_factory.mktemp('layouts')
    return {'csv': synthetic.make_dataset(root / 'csv', layout='csv', **TINY_DATA),
            'csv_multi': synthetic.make_dataset(root / 'csv_multi', layout='csv', max_labels=2,
                                                **TINY_DATA),
            'fsd50k': synthetic.make_dataset(root / 'fsd50k', layout='fsd50k', max_labels=2,
                                             **TINY_DATA),
            'arca23k': synthetic.make_dataset(root / 'arca23k', layout='arca23k', **TINY_DATA)}


def _copy(layouts, name, tmp_path):
    return shutil.copytree(layouts[name], tmp_path / name)


def _csv_cfg(make_cfg, root, *more):
    return make_cfg('ctrl.dataset=csv', f'ctrl.dataset_path={root}', 'ctrl.train_data=all',
                    'learn.n_classes=null', 'ctrl.csv.table=clips.csv', *more)


def _load(cfg):
    datasets.check(cfg)
    return datasets.load(cfg)


# ----------------------------------------------------------------------------- csv

def test_csv_table_with_split_column(make_cfg, layouts):
    root = layouts['csv']
    clips = pd.read_csv(root / 'clips.csv')
    table, classes = _load(_csv_cfg(make_cfg, root))
    assert classes == sorted(set(clips[clips.split == 'train'].labels))
    for subset in ('train', 'test'):
        part = table[table.subset == subset]
        expected = clips[clips.split == subset]
        assert sorted(part.fname) == sorted(expected.fname)
        assert sorted(part.path) == sorted(str(root / f) for f in expected.fname)
    train = table[table.subset == 'train'].set_index('fname')
    expected = clips[clips.split == 'train'].set_index('fname')
    assert (train.verified == expected.verified.loc[train.index]).all()
    assert (train.label == expected.labels.loc[train.index]).all()
    assert (train.true_label == expected.true_labels.loc[train.index]).all()
    assert not datasets.is_multi_label(table)
    n_verified = int((expected.verified == 1).sum())
    assert datasets.train_rows(table, 'verified').size == n_verified
    assert datasets.train_rows(table, 'unverified').size == len(expected) - n_verified


@pytest.mark.parametrize('fold', [1, 3, 5])
def test_csv_test_fold_tests_on_one_fold_and_trains_on_the_rest(make_cfg, layouts, fold):
    root = layouts['csv']
    clips = pd.read_csv(root / 'clips.csv')
    table, _ = _load(_csv_cfg(make_cfg, root, f'ctrl.test_fold={fold}'))
    assert sorted(table[table.subset == 'test'].fname) == sorted(clips[clips.fold == fold].fname)
    assert sorted(table[table.subset == 'train'].fname) == sorted(clips[clips.fold != fold].fname)


def test_csv_two_files_custom_columns_and_audio_dir(make_cfg, layouts, tmp_path):
    """ESC-50's shape: bare file names in audio/, other column names, a ';' separator."""
    root = _copy(layouts, 'csv_multi', tmp_path)
    clips = pd.read_csv(root / 'clips.csv')
    renamed = clips.assign(filename=clips.fname.str.replace('audio/', ''),
                           category=clips.labels.str.replace(',', ';')).drop(
        columns=['fname', 'labels', 'verified'])
    (root / 'meta').mkdir()
    renamed[clips.split == 'train'].to_csv(root / 'meta' / 'train.csv', index=False)
    renamed[clips.split == 'test'].to_csv(root / 'meta' / 'test.csv', index=False)
    cfg = make_cfg('ctrl.dataset=csv', f'ctrl.dataset_path={root}', 'ctrl.train_data=all',
                   'learn.n_classes=null', 'ctrl.csv.train=meta/train.csv',
                   'ctrl.csv.test=meta/test.csv', 'ctrl.csv.audio_dir=audio',
                   'ctrl.csv.fname=filename', 'ctrl.csv.labels=category',
                   'ctrl.csv.separator=;')
    table, classes = _load(cfg)
    assert datasets.is_multi_label(table)  # inferred: some clip has two labels
    assert (table.verified == 1).all()  # no verified column: every clip verified
    expected = [tuple(sorted(v.split(','))) for v in clips.labels]
    by_name = dict(zip(clips.fname.str.replace('audio/', ''), expected))
    assert [by_name[f] for f in table.fname] == table['labels'].tolist()
    assert table.path.iloc[0] == str(root / 'audio' / table.fname.iloc[0])
    y = datasets.targets(table, len(classes))
    np.testing.assert_array_equal(y.sum(axis=1), [len(v) for v in table['labels']])


def test_csv_single_label_forced_refuses_several_labels(make_cfg, layouts):
    root = layouts['csv_multi']
    clips = pd.read_csv(root / 'clips.csv')
    row = int(np.flatnonzero(clips.labels.str.contains(',').to_numpy())[0])
    with pytest.raises(ConfigError) as err:
        _load(_csv_cfg(make_cfg, root, 'ctrl.csv.multi_label=false'))
    assert str(err.value) == (f"{root / 'clips.csv'} line {row + 2} (fname "
                              f"{clips.fname.iloc[row]}): labels {clips.labels.iloc[row]!r} "
                              f"holds several labels, but this dataset has one label per clip")


def _broken(layouts, tmp_path, edit):
    root = _copy(layouts, 'csv', tmp_path)
    path = root / 'clips.csv'
    edit(pd.read_csv(path)).to_csv(path, index=False)
    return root, path


def _set(column, row, value):
    def edit(df):
        df[column] = df[column].astype(object)
        df.loc[row, column] = value
        return df
    return edit


def test_csv_table_mistakes_are_one_line(make_cfg, layouts, tmp_path):
    """Each names the file, the line and the column."""
    cases = [
        (lambda df: df.drop(columns='labels'), [],
         'clips.csv lacks the column(s) labels; required: fname, labels, split'),
        (_set('labels', 3, None), [], 'clips.csv line 5 (fname {f3}): empty label in column '
                                      "'labels'"),
        (_set('split', 2, 'tset'), [], "clips.csv line 4: split 'tset' must be one of train, "
                                       'val, test'),
        (lambda df: pd.concat([df, df.iloc[[1]]], ignore_index=True), [],
         'clips.csv lines 3 and {n2}: fname {f1} appears twice (one row per clip)'),
        (_set('fname', 4, 'audio/gone.wav'), [],
         "clips.csv line 6: fname 'audio/gone.wav': audio file {root}/audio/gone.wav does not "
         'exist'),
        (_set('verified', 0, 2), [], 'clips.csv line 2: verified must be 0 or 1, got 2'),
        (lambda df: df, ['ctrl.test_fold=9'],
         'ctrl.test_fold 9: no row of {root}/clips.csv has it in column fold (folds: 1, 2, 3, 4, '
         '5)'),
        (_set('fold', 1, 'one'), ['ctrl.test_fold=1'],
         "clips.csv line 3: fold 'one' is not a fold number"),
        (lambda df: df.drop(columns='fold'), ['ctrl.test_fold=1'],
         'clips.csv lacks the column(s) fold; required: fname, labels, fold'),
    ]
    for i, (edit, more, expected) in enumerate(cases):
        root, path = _broken(layouts, tmp_path / str(i), edit)
        frame = pd.read_csv(path)
        with pytest.raises(ConfigError) as err:
            _load(_csv_cfg(make_cfg, root, *more))
        message = str(err.value)
        assert '\n' not in message
        assert message.endswith(expected.format(root=root, n2=len(frame) + 1,
                                                f1=frame.fname.iloc[1],
                                                f3=frame.fname.iloc[3])), (i, message)


def test_csv_file_in_train_and_test_is_refused(make_cfg, layouts, tmp_path):
    root = _copy(layouts, 'csv', tmp_path)
    clips = pd.read_csv(root / 'clips.csv')
    train, test = clips[clips.split == 'train'], clips[clips.split == 'test']
    train.to_csv(root / 'train.csv', index=False)
    pd.concat([test, train.iloc[[0]]]).to_csv(root / 'test.csv', index=False)
    cfg = make_cfg('ctrl.dataset=csv', f'ctrl.dataset_path={root}', 'ctrl.train_data=all',
                   'learn.n_classes=null', 'ctrl.csv.train=train.csv', 'ctrl.csv.test=test.csv')
    with pytest.raises(ConfigError) as err:
        _load(cfg)
    assert str(err.value) == (f'{root / "train.csv"} line 2 and {root / "test.csv"} line '
                              f'{len(test) + 2} list the same audio file '
                              f'{root / train.fname.iloc[0]} (one row per clip)')


@pytest.mark.parametrize('overrides, message', [
    ([], 'ctrl.dataset csv needs ctrl.csv.table (one CSV of every clip), or both '
         'ctrl.csv.train and ctrl.csv.test'),
    (['ctrl.csv.train=a.csv'], 'ctrl.dataset csv needs ctrl.csv.table'),
    (['ctrl.csv.table=a.csv', 'ctrl.csv.train=b.csv', 'ctrl.csv.test=c.csv'],
     'ctrl.csv.table and ctrl.csv.train / ctrl.csv.test are two ways'),
    (['ctrl.csv.train=b.csv', 'ctrl.csv.test=c.csv', 'ctrl.test_fold=2'],
     'ctrl.test_fold 2 needs one table of every clip with a fold column'),
    (['ctrl.csv.table=a.csv', 'ctrl.train_data=noisy'],
     "ctrl.train_data 'noisy' does not apply to ctrl.dataset csv; valid: all, verified, "
     'unverified'),
])
def test_csv_config_mistakes(make_cfg, tmp_path, overrides, message):
    cfg = make_cfg('ctrl.dataset=csv', f'ctrl.dataset_path={tmp_path}', 'ctrl.train_data=all',
                   *overrides)
    with pytest.raises(ConfigError, match='^' + message.replace('(', r'\(').replace(')', r'\)')):
        datasets.check(cfg)


def test_test_fold_is_refused_outside_csv(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match='ctrl.test_fold applies to ctrl.dataset csv'):
        datasets.check(make_cfg('ctrl.test_fold=1'))


def test_csv_classes_vocabulary_names_closest_class(make_cfg, layouts, tmp_path):
    root, path = _broken(layouts, tmp_path, _set('labels', 0, 'Clapp'))
    vocabulary = 'ctrl.classes=[Acoustic_guitar, Bass_guitar, Clapping]'
    fname = pd.read_csv(path).fname.iloc[0]
    with pytest.raises(ConfigError) as err:
        _load(_csv_cfg(make_cfg, root, vocabulary))
    assert str(err.value) == (f"{path} line 2 (fname {fname}): label 'Clapp' is not in "
                              f"ctrl.classes (did you mean Clapping?)")


# ----------------------------------------------------------------------------- fsd50k

def test_fsd50k_dev_split_is_the_validation_split(make_cfg, layouts):
    root = layouts['fsd50k']
    meta = root / 'FSD50K.ground_truth'
    dev, evaluation = pd.read_csv(meta / 'dev.csv'), pd.read_csv(meta / 'eval.csv')
    vocabulary = pd.read_csv(meta / 'vocabulary.csv', header=None)
    table, classes = _load(make_cfg('ctrl.dataset=fsd50k', f'ctrl.dataset_path={root}',
                                    'ctrl.train_data=all', 'learn.n_classes=null'))
    assert set(classes) <= set(vocabulary[1])
    for subset, expected, folder in [('train', dev[dev.split == 'train'], 'FSD50K.dev_audio'),
                                     ('val', dev[dev.split == 'val'], 'FSD50K.dev_audio'),
                                     ('test', evaluation, 'FSD50K.eval_audio')]:
        part = table[table.subset == subset]
        assert sorted(part.fname) == sorted(expected.fname.astype(str)), subset
        assert all(p == str(root / folder / f'{f}.wav') for p, f in zip(part.path, part.fname))
        labels = dict(zip(expected.fname.astype(str), expected.labels))
        assert [','.join(ls) for ls in part['labels']] == \
            [','.join(sorted(labels[f].split(','))) for f in part.fname]
    assert datasets.is_multi_label(table) and (table.verified == 1).all()
    # Training rows are the train split only; the val clips are validated on.
    assert datasets.train_rows(table, 'all').size == int((dev.split == 'train').sum())
    length = np.ones(len(table), int)
    np.testing.assert_array_equal(datasets.readable_val_rows(table, length),
                                  np.flatnonzero(table.subset == 'val'))


def test_fsd50k_label_outside_vocabulary_and_bad_split(make_cfg, layouts, tmp_path):
    root = _copy(layouts, 'fsd50k', tmp_path)
    path = root / 'FSD50K.ground_truth' / 'dev.csv'
    dev = pd.read_csv(path)
    cfg = make_cfg('ctrl.dataset=fsd50k', f'ctrl.dataset_path={root}', 'ctrl.train_data=all',
                   'learn.n_classes=null')
    bad = dev.copy()
    bad.loc[2, 'split'] = 'validation'
    bad.to_csv(path, index=False)
    with pytest.raises(ConfigError, match=r"dev.csv line 4: split 'validation' must be train "
                                          r'or val'):
        datasets.load(cfg)
    bad = dev.copy()
    row = int(np.flatnonzero(dev.split == 'train')[0])
    bad.loc[row, 'labels'] = 'Acoustic guitar'
    bad.to_csv(path, index=False)
    with pytest.raises(ConfigError) as err:
        datasets.load(cfg)
    vocabulary = root / 'FSD50K.ground_truth' / 'vocabulary.csv'
    assert str(err.value) == (f"{path} line {row + 2} (fname {dev.fname.iloc[row]}): label "
                              f"'Acoustic guitar' is not in {vocabulary} (did you mean "
                              f"Acoustic_guitar?)")


def test_fsd50k_is_multi_label_before_loading(make_cfg):
    cfg = make_cfg('ctrl.dataset=fsd50k', 'ctrl.train_data=all', 'ctrl.inject_noise.rate=0.2')
    with pytest.raises(ConfigError, match='applies to single-label datasets, not to fsd50k'):
        datasets.check(cfg)


# ----------------------------------------------------------------------------- arca23k

@pytest.mark.parametrize('train_data, csvs', [
    ('noisy', ['ARCA23K.ground_truth/train.csv']),
    ('clean', ['ARCA23K-FSD.ground_truth/train.csv']),
    ('all', ['ARCA23K.ground_truth/train.csv', 'ARCA23K-FSD.ground_truth/train.csv'])])
def test_arca23k_train_sets_and_shared_val_test(make_cfg, layouts, train_data, csvs):
    root = layouts['arca23k']
    table, classes = _load(make_cfg('ctrl.dataset=arca23k', f'ctrl.dataset_path={root}',
                                    f'ctrl.train_data={train_data}', 'learn.n_classes=null'))
    train = pd.concat([pd.read_csv(root / c) for c in csvs])
    assert sorted(table[table.subset == 'train'].fname) == sorted(train.fname.astype(str))
    assert classes == sorted(set(train.label))
    for subset in ('val', 'test'):
        expected = pd.read_csv(root / 'ARCA23K-FSD.ground_truth' / f'{subset}.csv')
        assert sorted(table[table.subset == subset].fname) == sorted(expected.fname.astype(str))
    noisy = table.path.str.contains('ARCA23K.audio').to_numpy()
    assert (table.verified.to_numpy()[noisy] == 0).all()
    assert (table.verified.to_numpy()[~noisy] == 1).all()
    assert table[table.subset == 'test'].path.str.contains('FSD50K.eval_audio').all()
    assert table[table.subset == 'val'].path.str.contains('FSD50K.dev_audio').all()
    assert not datasets.is_multi_label(table)


def test_arca23k_missing_fsd50k_folder_is_named(make_cfg, layouts, tmp_path):
    cfg = make_cfg('ctrl.dataset=arca23k', f'ctrl.dataset_path={layouts["arca23k"]}',
                   f'ctrl.fsd50k_path={tmp_path / "nowhere"}')
    with pytest.raises(ConfigError, match='FSD50K folder .*nowhere does not exist '
                                          r'\(ctrl.fsd50k_path\)'):
        datasets.load(cfg)


# ----------------------------------------------------------------------------- through main.py
# One tiny run per new layout (1 epoch): the layout reaches the report, and a dataset's own
# validation split is the one validated on, as the log says.

def _main(layouts, name, data, overrides):
    import main
    from conftest import write_tiny_config
    root = data.parent
    path = write_tiny_config(root / f'{name}.yaml', data, root,
                             {'ctrl': {'workers': 1, 'run_name': name, 'tensorboard': False},
                              'learn': {'n_classes': None, 'n_epochs': 1, 'batch_size': 8}})
    code = main.main(['-p', str(path), *[arg for o in overrides for arg in ('-o', o)]])
    out = root / 'logs' / f'{name}.out'
    return code, out.read_text() if out.exists() else ''


def test_csv_test_fold_run(layouts):
    data = layouts['csv']
    clips = pd.read_csv(data / 'clips.csv')
    code, log = _main(layouts, 'csv_fold2', data, ['ctrl.dataset=csv', 'ctrl.csv.table=clips.csv',
                                                  'ctrl.test_fold=2'])
    assert code == 0, log[-2000:]
    n = int((clips.fold == 2).sum())
    assert re.search(rf'^ACCURACY - MICRO: [\d.]+ % \({n}/{n} test files, train_data=all\)$',
                     log, re.M), log[-2000:]
    assert "the dataset's own split" not in log  # no val rows: learn.val_split draws one


@pytest.mark.parametrize('name, overrides, n_test, n_val, line', [
    ('fsd50k', ['learn.head=sigmoid_sparsemax', 'loss.type=bce'], 6, 3, 'LWLRAP'),
    ('arca23k', ['ctrl.train_data=clean'], 3, 3, 'ACCURACY - MICRO')])
def test_own_validation_split_run(layouts, name, overrides, n_test, n_val, line):
    code, log = _main(layouts, f'{name}_run', layouts[name], [f'ctrl.dataset={name}', *overrides])
    assert code == 0, log[-2000:]
    assert re.search(rf'^{line}: .*\({n_test}/{n_test} test files', log, re.M), log[-2000:]
    assert (f"validation: the dataset's own split, {n_val} clips (learn.val_split 0.15 is not "
            f"used)") in log


def test_csv_multi_label_is_known_before_loading(make_cfg, layouts):
    """The checks of metrics and modes run before the table is loaded: a csv table with a
    cell of several labels is multi-label for them too (default metric lwlrap, accuracy
    refused), and ctrl.csv.multi_label false overrides it."""
    import eval as evaluation
    root = layouts['csv_multi']
    cfg = _csv_cfg(make_cfg, root)
    assert datasets.multi_label(cfg) and evaluation.metric_names(cfg) == ['lwlrap']
    assert not datasets.multi_label(_csv_cfg(make_cfg, root, 'ctrl.csv.multi_label=false'))
    single = _csv_cfg(make_cfg, layouts['csv'])
    assert not datasets.multi_label(single) and evaluation.metric_names(single) == ['accuracy']
    with pytest.raises(ConfigError, match="recognizer.metrics 'accuracy' needs single-label"):
        evaluation.check_metrics(_csv_cfg(make_cfg, root, 'recognizer.metrics=[accuracy]'))


def test_csv_test_folds_share_one_feature_cache(make_cfg, layouts):
    """The rows keep the table's order whichever fold is tested: one cache for every fold."""
    import feat_extract
    root = layouts['csv']
    clips = pd.read_csv(root / 'clips.csv')
    dirs = set()
    for fold in (1, 2):
        cfg = _csv_cfg(make_cfg, root, f'ctrl.test_fold={fold}')
        table, _ = _load(cfg)
        assert table.fname.tolist() == clips.fname.tolist()
        dirs.add(feat_extract.cache_dir(cfg, table))
    assert len(dirs) == 1
