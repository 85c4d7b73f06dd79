"""datasets.py: the FSDKaggle2018 and FSDKaggle2019 adapters and the multi-hot targets."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import datasets
from config import ConfigError

K19 = 'FSDKaggle2019.meta'
CURATED = [('c1.wav', 'Bark,Raindrop'), ('c2.wav', 'Raindrop'), ('c3.wav', 'Applause')]
NOISY = [('n1.wav', 'Bark', 'Raindrop'), ('n2.wav', 'Applause,Bark', None)]
TEST19 = [('t1.wav', 'Raindrop,Applause'), ('t2.wav', 'Bark')]


def _write19(root, curated=CURATED, noisy=NOISY, test=TEST19):
    meta = Path(root) / K19
    meta.mkdir(parents=True, exist_ok=True)
    for folder in ('audio_train_curated', 'audio_train_noisy', 'audio_test'):
        (Path(root) / f'FSDKaggle2019.{folder}').mkdir(exist_ok=True)
    pd.DataFrame(curated, columns=['fname', 'labels']).to_csv(
        meta / 'train_curated_post_competition.csv', index=False)
    pd.DataFrame(noisy, columns=['fname', 'labels', 'true_labels']).to_csv(
        meta / 'train_noisy_post_competition.csv', index=False)
    frame = pd.DataFrame(test, columns=['fname', 'labels'])
    frame['usage'] = 'Private'
    frame.to_csv(meta / 'test_post_competition.csv', index=False)
    return meta


def _cfg(make_cfg, root, dataset='fsdkaggle2019', *more):
    return make_cfg(f'ctrl.dataset_path={root}', f'ctrl.dataset={dataset}', *more)


def test_fsdkaggle2019_table(make_cfg, tmp_path):
    _write19(tmp_path)
    table, classes = datasets.load(_cfg(make_cfg, tmp_path))
    assert classes == ['Applause', 'Bark', 'Raindrop']
    assert table.fname.tolist() == ['c1.wav', 'c2.wav', 'c3.wav', 'n1.wav', 'n2.wav',
                                    't1.wav', 't2.wav']
    assert table.subset.tolist() == ['train'] * 5 + ['test'] * 2
    assert table.verified.tolist() == [1, 1, 1, 0, 0, 1, 1]
    assert table.path.iloc[0] == str(tmp_path / 'FSDKaggle2019.audio_train_curated' / 'c1.wav')
    assert table.path.iloc[3] == str(tmp_path / 'FSDKaggle2019.audio_train_noisy' / 'n1.wav')
    assert table.path.iloc[5] == str(tmp_path / 'FSDKaggle2019.audio_test' / 't1.wav')
    assert table['labels'].tolist()[5] == ('Applause', 'Raindrop')
    assert table.label.tolist()[0] == 'Bark,Raindrop'
    expected = np.array([[0, 1, 1], [0, 0, 1], [1, 0, 0], [0, 1, 0], [1, 1, 0], [1, 0, 1],
                         [0, 1, 0]], np.float32)
    np.testing.assert_array_equal(datasets.targets(table, 3), expected)
    assert datasets.is_multi_label(table)
    # Truth: n1's given Bark is really Raindrop; n2 and the curated clips keep their labels.
    assert table.true_labels.tolist()[3:5] == [('Raindrop',), ('Applause', 'Bark')]
    assert table.true_labels.tolist()[0] == ('Bark', 'Raindrop')


@pytest.mark.parametrize('subset, expected', [('curated', [0, 1, 2]), ('noisy', [3, 4]),
                                              ('all', [0, 1, 2, 3, 4])])
def test_fsdkaggle2019_subsets(make_cfg, tmp_path, subset, expected):
    _write19(tmp_path)
    table, _ = datasets.load(_cfg(make_cfg, tmp_path))
    np.testing.assert_array_equal(datasets.train_rows(table, subset), expected)


def test_fsdkaggle2018_table_and_subsets(make_cfg, tmp_path):
    meta = tmp_path / 'FSDKaggle2018.meta'
    meta.mkdir()
    for folder in ('audio_train', 'audio_test'):
        (tmp_path / f'FSDKaggle2018.{folder}').mkdir()
    pd.DataFrame([('a.wav', 'Bus', 1, 'Bus'), ('b.wav', 'Cello', 0, 'Bus'),
                  ('c.wav', 'Bus', 0, None)],
                 columns=['fname', 'label', 'manually_verified', 'true_label']).to_csv(
        meta / 'train_post_competition.csv', index=False)
    pd.DataFrame([('t.wav', 'Cello', 'Public')], columns=['fname', 'label', 'usage']).to_csv(
        meta / 'test_post_competition_scoring_clips.csv', index=False)
    table, classes = datasets.load(_cfg(make_cfg, tmp_path, 'fsdkaggle2018',
                                        'ctrl.train_data=clean'))
    assert classes == ['Bus', 'Cello']
    assert table.label_idx.tolist() == [0, 1, 0, 1]
    assert table.true_idx.tolist() == [0, 0, 0, 1]
    assert not datasets.is_multi_label(table)
    np.testing.assert_array_equal(datasets.targets(table, 2), np.eye(2)[[0, 1, 0, 1]])
    np.testing.assert_array_equal(datasets.train_rows(table, 'clean'), [0])
    np.testing.assert_array_equal(datasets.train_rows(table, 'noisy'), [1, 2])
    assert table.path.iloc[3] == str(tmp_path / 'FSDKaggle2018.audio_test' / 't.wav')


def test_n_classes_null_is_taken_from_the_data_and_a_wrong_one_refused(make_cfg, tmp_path):
    _write19(tmp_path)
    assert len(datasets.load(_cfg(make_cfg, tmp_path, 'fsdkaggle2019',
                                  'learn.n_classes=null'))[1]) == 3
    with pytest.raises(ConfigError, match='learn.n_classes is 80 but .* has 3 classes'):
        datasets.load(_cfg(make_cfg, tmp_path, 'fsdkaggle2019', 'learn.n_classes=80'))


def test_empty_label_names_file_and_line(make_cfg, tmp_path):
    _write19(tmp_path, curated=CURATED + [('c4.wav', None)])
    with pytest.raises(ConfigError, match=r'train_curated_post_competition.csv line 5 '
                                          r'\(fname c4.wav\): empty label'):
        datasets.load(_cfg(make_cfg, tmp_path))


def test_unknown_test_label_names_file_and_line(make_cfg, tmp_path):
    _write19(tmp_path, test=TEST19 + [('t3.wav', 'Bark,Bus')])
    with pytest.raises(ConfigError, match=r'test_post_competition.csv line 4 \(fname t3.wav\) '
                                          r'has labels absent .*Bus'):
        datasets.load(_cfg(make_cfg, tmp_path))


@pytest.mark.parametrize('name', ['train_curated_post_competition.csv',
                                  'train_noisy_post_competition.csv',
                                  'test_post_competition.csv'])
def test_missing_file_or_column(make_cfg, tmp_path, name):
    meta = _write19(tmp_path)
    pd.read_csv(meta / name).drop(columns='labels').to_csv(meta / name, index=False)
    with pytest.raises(ConfigError, match=f'{name} lacks the column.*labels'):
        datasets.load(_cfg(make_cfg, tmp_path))
    (meta / name).unlink()
    with pytest.raises(ConfigError, match=f'missing dataset file .*{name}'):
        datasets.load(_cfg(make_cfg, tmp_path))


def test_subset_of_another_dataset_is_refused(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match='valid: noisy, clean, all'):
        datasets.check(_cfg(make_cfg, tmp_path, 'fsdkaggle2018', 'ctrl.train_data=curated'))


def test_injected_noise_changes_the_targets_and_keeps_the_truth(make_cfg, dataset):
    import data
    root, _, _ = dataset
    cfg = make_cfg(f'ctrl.dataset_path={root}', 'ctrl.inject_noise.rate=1.0',
                   'ctrl.inject_noise.subset=all')
    before, classes = datasets.DATASETS['fsdnoisy18k'](cfg)
    after, _ = datasets.load(cfg)
    train = (after.subset == 'train').to_numpy()
    y = datasets.targets(after, len(classes))
    # The targets follow the new labels; the truth columns hold the old ones.
    np.testing.assert_array_equal(y.argmax(axis=1), after.label_idx)
    assert (y.argmax(axis=1)[train] != before.label_idx[train]).all()
    assert after.true_labels_idx.tolist() == before.labels_idx.tolist()
    np.testing.assert_array_equal(data.wrong_labels(after), train)


def test_injected_noise_on_a_multi_label_dataset_is_refused(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match='ctrl.inject_noise .* not to fsdkaggle2019'):
        datasets.check(_cfg(make_cfg, tmp_path, 'fsdkaggle2019', 'ctrl.train_data=all',
                            'ctrl.inject_noise.rate=0.2'))


@pytest.mark.parametrize('folder', ['audio_train_curated', 'audio_train_noisy', 'audio_test'])
def test_fsdkaggle2019_missing_audio_folder_is_named(make_cfg, tmp_path, folder):
    _write19(tmp_path)
    (tmp_path / f'FSDKaggle2019.{folder}').rmdir()
    with pytest.raises(ConfigError, match=f'audio folder .*FSDKaggle2019.{folder} does not '
                                          f'exist'):
        datasets.load(_cfg(make_cfg, tmp_path))


# ----------------------------------------------------------------------------- through main.py
# Issue 19: data mistakes end main.py with one line (exit 2); these runs stop before
# training (ctrl.learn false), most of them before extraction.

@pytest.fixture(scope='module')
def tiny19(tmp_path_factory):
    """A tiny synthetic FSDnoisy18k dataset (3 classes) under a module-wide folder."""
    from conftest import tiny_dataset
    root = tmp_path_factory.mktemp('datasets')
    return root, tiny_dataset(root / 'tiny', n_classes=3, train_per_class=4, test_per_class=2,
                              seed=3)


def _layout(tiny19, layout, name, **more):
    """A tiny synthetic dataset of another layout, next to tiny19's."""
    import synthetic
    root, _ = tiny19
    return synthetic.make_dataset(root / name, n_classes=3, train_per_class=4,
                                  test_per_class=2, clean_fraction=0.3, noise_rate=0.0,
                                  min_dur=0.5, max_dur=0.6, sr=16000, seed=4, layout=layout,
                                  **more)


def _copy(tiny19, name):
    root, data = tiny19
    return shutil.copytree(data, root / name)


def _main(tiny19, data, name, *overrides):
    """main.main on data with learn.n_classes null and ctrl.learn false -> exit code."""
    import main
    from conftest import write_tiny_config
    root, _ = tiny19
    path = write_tiny_config(root / f'{name}.yaml', data, root,
                             {'ctrl': {'workers': 1, 'learn': False, 'run_name': name},
                              'learn': {'n_classes': None}})
    args = ['-p', str(path)]
    for o in overrides:
        args += ['-o', o]
    return main.main(args)


def _error_line(capsys):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith('error: ')]
    assert len(lines) == 1 and 'Traceback' not in err, err
    return lines[0]


def _edit(data, csv, edit, layout_meta='FSDnoisy18k.meta'):
    """Rewrite one metadata CSV of data through edit(DataFrame) -> DataFrame."""
    path = data / layout_meta / csv
    edit(pd.read_csv(path)).to_csv(path, index=False)
    return path


@pytest.mark.parametrize('csv, what', [('train.csv', 'training'), ('test.csv', 'test')])
def test_header_only_csv_says_it_has_no_clips(tiny19, capsys, csv, what):
    """Issue 19, case 11: not "all 0 test clips failed to load from " (no folder) nor a
    test label absent from training."""
    data = _copy(tiny19, f'header_only_{what}')
    path = _edit(data, csv, lambda df: df.iloc[:0])
    assert _main(tiny19, data, f'header_only_{what}') == 2
    assert _error_line(capsys) == f'error: {path} has no {what} clips (only a header line)'


def test_bad_flag_value_is_printed_as_the_file_has_it(tiny19, capsys):
    """Issue 19, case 11: `got 2`, not `got np.int64(2)`."""
    data = _copy(tiny19, 'bad_flag')
    path = _edit(data, 'train.csv', lambda df: df.assign(
        manually_verified=[2] + df.manually_verified.tolist()[1:]))
    assert _main(tiny19, data, 'bad_flag') == 2
    assert _error_line(capsys) == f'error: {path} line 2: manually_verified must be 0 or 1, got 2'


def test_fsdkaggle2019_without_training_clips_names_both_csvs(make_cfg, tmp_path):
    meta = _write19(tmp_path, curated=[], noisy=[])
    with pytest.raises(ConfigError) as err:
        datasets.load(_cfg(make_cfg, tmp_path))
    assert str(err.value) == (f'{meta / "train_curated_post_competition.csv"} and '
                              f'{meta / "train_noisy_post_competition.csv"} have no training '
                              f'clips (only a header line)')


def test_missing_audio_file_is_logged_as_not_found(tiny19, capsys):
    """Issue 19, case 10: not "System error."."""
    data = _copy(tiny19, 'missing_audio')
    gone = sorted((data / 'FSDnoisy18k.audio_train').glob('*.wav'))[0]
    gone.unlink()
    assert _main(tiny19, data, 'missing_audio') == 0
    log = capsys.readouterr().out
    assert f'file not found: {gone}' in log and 'System error' not in log


def test_multi_label_cell_in_single_label_data_is_refused(tiny19, capsys):
    """Issue 19, case 4: FSDKaggle2018 has one label per clip."""
    data = _layout(tiny19, 'fsdkaggle2018', 'multi18')
    csv, fname = 'train_post_competition.csv', []

    def two_labels(df):
        fname.append(df.fname.iloc[2])
        return df.assign(label=df.label.where(df.index != 2, 'Acoustic_guitar,Clapping'))
    path = _edit(data, csv, two_labels, 'FSDKaggle2018.meta')
    assert _main(tiny19, data, 'multi18', 'ctrl.dataset=fsdkaggle2018') == 2
    assert _error_line(capsys) == (f"error: {path} line 4 (fname {fname[0]}): label "
                                   f"'Acoustic_guitar,Clapping' holds several labels, but this "
                                   f"dataset has one label per clip")


def test_duplicate_fname_rows_are_refused(tiny19, capsys):
    """Issue 19, case 4: a repeated row would count its clip twice."""
    data = _copy(tiny19, 'duplicate')
    path = _edit(data, 'train.csv', lambda df: pd.concat([df, df.iloc[[1]]], ignore_index=True))
    fname = pd.read_csv(path).fname.iloc[1]
    n = len(pd.read_csv(path))
    assert _main(tiny19, data, 'duplicate') == 2
    assert _error_line(capsys) == (f'error: {path} lines 3 and {n + 1}: fname {fname} appears '
                                   f'twice (one row per clip)')


def test_silent_and_one_sample_clips_are_warned_and_counted(tiny19, capsys):
    """Issue 19, case 4: digital silence and a one-sample clip give constant frames."""
    import soundfile as sf
    data = _copy(tiny19, 'silent')
    wavs = sorted((data / 'FSDnoisy18k.audio_train').glob('*.wav'))[:2]
    sf.write(wavs[0], np.zeros(8000), 16000)
    sf.write(wavs[1], np.array([0.5]), 16000)
    assert _main(tiny19, data, 'silent') == 0
    log = capsys.readouterr().out
    names = sorted(w.name for w in wavs)
    assert (f'2 clip(s) are digital silence or too short to vary: every frame is the same'
            in log) and all(n in log for n in names)
    manifest = next((tiny19[0] / 'features' / 'silent').glob('*/manifest.json'))
    manifest = json.loads(manifest.read_text())
    assert manifest['n_constant'] == 2 and sorted(manifest['constant']) == names


# ----------------------------------------------------------------------------- misspelt labels

@pytest.fixture(scope='module')
def tiny2019(tiny19):
    return _layout(tiny19, 'fsdkaggle2019', 'tiny2019')


def _relabel(data, csv, row, value, meta):
    """Set the label cell of one row of a metadata CSV -> (path, fname)."""
    column = 'labels' if meta.startswith('FSDKaggle2019') else 'label'
    fname = []

    def edit(df):
        fname.append(df.fname.iloc[row])
        df[column] = df[column].astype(object)
        df.loc[row, column] = value
        return df
    return _edit(data, csv, edit, meta), fname[0]


MISSPELT = [('"Clapping",Bass_guitar', '\'"Clapping"\'', 'Clapping'),
            ('Clapping;Bass_guitar', "'Clapping;Bass_guitar'", 'Clapping and Bass_guitar'),
            ('clapping', "'clapping'", 'Clapping')]


@pytest.mark.parametrize('cell, label, like', MISSPELT)
def test_misspelt_label_is_outside_the_fsdkaggle2019_vocabulary(tiny19, tiny2019, capsys, cell,
                                                                label, like):
    """Issue 19, case 1: with learn.n_classes null, a misspelling became a class of its own;
    FSDKaggle2019 has an official vocabulary, which names the class it resembles."""
    name = f'misspelt19_{MISSPELT.index((cell, label, like))}'
    data = shutil.copytree(tiny2019, tiny19[0] / name)
    path, fname = _relabel(data, 'train_noisy_post_competition.csv', 1, cell,
                           'FSDKaggle2019.meta')
    assert _main(tiny19, data, name, 'ctrl.dataset=fsdkaggle2019') == 2
    assert _error_line(capsys) == (f'error: {path} line 3 (fname {fname}): label {label} is '
                                   f'not in the FSDKaggle2019 vocabulary (did you mean {like}?)')


@pytest.mark.parametrize('cell, closest', [('Violin', 'Violin_or_fiddle'),
                                            ('Bus ', None), ('Gunshot', 'Gunshot_or_gunfire')])
def test_label_outside_the_fsdkaggle2018_vocabulary_names_the_closest_class(
        make_cfg, tmp_path, cell, closest):
    """Issue 19, case 1: every FSDKaggle2018 label is one of its 41 classes, however many
    clips carry it; the message names file, line and the closest class (difflib's, here
    checked by hand)."""
    import vocabularies
    meta = tmp_path / 'FSDKaggle2018.meta'
    meta.mkdir()
    for folder in ('audio_train', 'audio_test'):
        (tmp_path / f'FSDKaggle2018.{folder}').mkdir()
    rows = [(f'{i}.wav', 'Bus', 1) for i in range(5)] + [(f'{i}.wav', cell, 0)
                                                         for i in range(5, 10)]
    pd.DataFrame(rows, columns=['fname', 'label', 'manually_verified']).to_csv(
        meta / 'train_post_competition.csv', index=False)
    pd.DataFrame([('t.wav', 'Bus')], columns=['fname', 'label']).to_csv(
        meta / 'test_post_competition_scoring_clips.csv', index=False)
    cfg = _cfg(make_cfg, tmp_path, 'fsdkaggle2018', 'learn.n_classes=null')
    if closest is None:  # a stray space is stripped: 'Bus ' is Bus
        assert datasets.load(cfg)[1] == ['Bus']
        return
    assert closest in vocabularies.FSDKAGGLE2018 and cell not in vocabularies.FSDKAGGLE2018
    with pytest.raises(ConfigError) as err:
        datasets.load(cfg)
    assert str(err.value) == (f"{meta / 'train_post_competition.csv'} line 7 (fname 5.wav): "
                              f"label {cell!r} is not in the FSDKaggle2018 vocabulary (did you "
                              f"mean {closest}?)")


def test_quoted_label_is_refused_in_fsdnoisy18k(tiny19, capsys):
    data = _copy(tiny19, 'quoted18k')
    path, fname = _relabel(data, 'train.csv', 2, '"Clapping"', 'FSDnoisy18k.meta')
    assert _main(tiny19, data, 'quoted18k') == 2
    assert _error_line(capsys) == (
        f'error: {path} line 4 (fname {fname}): label \'"Clapping"\' (in 1 training clip(s)) '
        f'looks like a misspelling of Clapping; correct it, or list every class in '
        f'ctrl.classes if it is a class of its own')


def test_rare_class_of_a_distinct_name_is_accepted(tiny19, capsys):
    data = _copy(tiny19, 'rare')
    _relabel(data, 'train.csv', 2, 'Squeak', 'FSDnoisy18k.meta')
    assert _main(tiny19, data, 'rare') == 0
    assert 'error' not in capsys.readouterr().err


def test_labels_outside_ctrl_classes_are_refused(tiny19, capsys):
    """A vocabulary (ctrl.classes) admits its names only, and the rare classes it lists."""
    data = _copy(tiny19, 'vocabulary')
    path, fname = _relabel(data, 'test.csv', 1, 'Clapping', 'FSDnoisy18k.meta')
    _relabel(data, 'train.csv', 2, 'clapping', 'FSDnoisy18k.meta')
    vocabulary = 'ctrl.classes=[Acoustic_guitar, Bass_guitar, Clapping, clapping]'
    assert _main(tiny19, data, 'vocabulary', vocabulary) == 0
    capsys.readouterr()
    _relabel(data, 'test.csv', 1, 'bass guitar', 'FSDnoisy18k.meta')
    assert _main(tiny19, data, 'vocabulary', vocabulary) == 2
    assert _error_line(capsys) == (f"error: {path} line 3 (fname {fname}): label 'bass guitar' "
                                   f"is not in ctrl.classes (did you mean Bass_guitar?)")


def test_ctrl_classes_must_name_classes(tiny19, capsys):
    assert _main(tiny19, tiny19[1], 'bad_vocabulary', 'ctrl.classes=[1, 2]') == 2
    assert _error_line(capsys) == ('error: ctrl.classes must be a list of class names (null: '
                                   'none), got [1, 2]')
