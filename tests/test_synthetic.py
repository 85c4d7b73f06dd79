import hashlib

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

import synth_audio
import synthetic
import vocabularies
from config import ConfigError

SMALL = dict(n_classes=3, train_per_class=10, test_per_class=2, clean_fraction=0.2,
             noise_rate=0.4, min_dur=0.2, max_dur=0.5, sr=16000, seed=7)


def _digests(root):
    return {p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def syn_dataset(tmp_path_factory):
    return synthetic.make_dataset(tmp_path_factory.mktemp('syn') / 'data', **SMALL)


def _tables(root):
    return (pd.read_csv(root / synthetic.META_DIR / 'train.csv'),
            pd.read_csv(root / synthetic.META_DIR / 'test.csv'))


def test_same_seed_gives_identical_bytes(syn_dataset, tmp_path):
    again = synthetic.make_dataset(tmp_path / 'again', **SMALL)
    assert _digests(again) == _digests(syn_dataset)
    other = synthetic.make_dataset(tmp_path / 'other', **{**SMALL, 'seed': 8})
    assert _digests(other) != _digests(syn_dataset)


def test_csv_columns_counts_and_files(syn_dataset):
    train, test = _tables(syn_dataset)
    assert list(train.columns) == ['fname', 'label', 'aso_id', 'manually_verified',
                                   'noisy_small', 'true_label']
    assert list(test.columns) == ['fname', 'label', 'aso_id']
    assert len(train) == 30 and len(test) == 6
    fnames = pd.concat([train.fname, test.fname])
    assert fnames.is_unique and fnames.str.fullmatch(r'\d+\.wav').all()
    for folder, table in [(synthetic.TRAIN_DIR, train), (synthetic.TEST_DIR, test)]:
        assert sorted(p.name for p in (syn_dataset / folder).iterdir()) == sorted(table.fname)
    names = synthetic.FSDNOISY18K_CLASSES[:3]
    assert sorted(set(train.true_label)) == sorted(names)
    assert (test.label.value_counts() == 2).all() and set(test.label) == set(names)
    aso = dict(zip(train.label, train.aso_id))
    assert len(set(aso.values())) == 3 and all(test.aso_id == test.label.map(aso))


def test_clean_and_noisy_labels(syn_dataset):
    train, _ = _tables(syn_dataset)
    clean, noisy = train[train.manually_verified == 1], train[train.manually_verified == 0]
    assert (clean.groupby('true_label').size() == round(0.2 * 10)).all()
    assert (clean.label == clean.true_label).all() and (clean.noisy_small == 0).all()
    assert (noisy.label != noisy.true_label).sum() == round(0.4 * len(noisy))
    assert noisy.noisy_small.sum() == len(noisy) // 2


def test_audio_is_mono_pcm16_within_durations(syn_dataset):
    for path in sorted(syn_dataset.rglob('*.wav')):
        info = sf.info(path)
        assert (info.channels, info.subtype, info.samplerate) == (1, 'PCM_16', 16000)
        assert 0.2 <= info.frames / info.samplerate <= 0.5
        audio, _ = sf.read(path)
        assert 0.05 < np.max(np.abs(audio)) <= 0.9


def test_class_names_and_disjoint_ranges():
    names = synthetic.class_names(22)
    assert names[:20] == synthetic.FSDNOISY18K_CLASSES and names[20:] == ['class_20', 'class_21']
    recipes = synth_audio.class_recipes(22)
    for family in synth_audio.FAMILIES:
        bands = sorted(band for fam, band, _ in recipes if fam == family)
        assert all(low < high for low, high in bands)
        assert all(a[1] < b[0] for a, b in zip(bands, bands[1:]))


def test_tonal_clip_peaks_inside_its_class_band():
    rng = np.random.default_rng(0)
    sr, n = 16000, 16000
    for recipe in synth_audio.class_recipes(20):
        if recipe[0] != 'tonal':
            continue
        spectrum = np.abs(np.fft.rfft(synth_audio.synth_clip(rng, recipe, n, sr)))
        peak = np.fft.rfftfreq(n, 1 / sr)[np.argmax(spectrum)]
        assert recipe[1][0] - 1 <= peak <= recipe[1][1] + 1


def test_refuses_existing_dataset_and_bad_arguments(syn_dataset, tmp_path):
    with pytest.raises(ConfigError, match='already holds'):
        synthetic.make_dataset(syn_dataset, **SMALL)
    with pytest.raises(ConfigError, match='noise_rate'):
        synthetic.make_dataset(tmp_path / 'x', **{**SMALL, 'noise_rate': 1.5})
    with pytest.raises(ConfigError, match='min_dur'):
        synthetic.make_dataset(tmp_path / 'x', **{**SMALL, 'min_dur': 0.6})


def test_command_line(tmp_path, capsys):
    args = ['--out', str(tmp_path / 'cli'), '--n-classes', '2', '--train-per-class', '4',
            '--test-per-class', '1', '--min-dur', '0.1', '--max-dur', '0.2', '--sr', '16000']
    assert synthetic.main(args) == 0
    assert '2 classes, 8 train clips' in capsys.readouterr().out
    assert synthetic.main(args) == 2
    assert 'already holds' in capsys.readouterr().err


# ----------------------------------------------------------------------------- layouts

def test_fsdnoisy18k_output_is_unchanged_by_layouts(syn_dataset):
    # Figures of the dataset that SMALL gave before layouts and mixing existed: the CSV
    # bytes, every file's length (both platform-independent: integer draws) and the total
    # absolute PCM (any change of the drawing order changes it by far more than the 1-LSB
    # rounding differences another CPU's floating point could cause).
    meta = syn_dataset / synthetic.META_DIR
    assert hashlib.sha1((meta / 'train.csv').read_bytes()).hexdigest() == \
        '4ab61abb138ecc012d3ca5efd2932ecb57dec28b'
    assert hashlib.sha1((meta / 'test.csv').read_bytes()).hexdigest() == \
        'c6ebac4b351be1e8b931b90d755cb0fd499b6b42'
    wavs = sorted(syn_dataset.rglob('*.wav'))
    frames = ''.join(f'{p.relative_to(syn_dataset).as_posix()}:{sf.info(p).frames}\n'
                     for p in wavs)
    assert hashlib.sha1(frames.encode()).hexdigest() == 'e2c0056e845e3674313b1331169cff7b8946d0a0'
    total = sum(int(np.abs(sf.read(p, dtype='int16')[0].astype(np.int64)).sum()) for p in wavs)
    assert abs(total - 920724415) <= 1000


KAGGLE = dict(n_classes=6, train_per_class=12, test_per_class=3, clean_fraction=0.25,
              noise_rate=0.3, min_dur=0.2, max_dur=0.3, sr=16000, seed=3)


@pytest.fixture(scope='module')
def kaggle2018(tmp_path_factory):
    return synthetic.make_dataset(tmp_path_factory.mktemp('k18') / 'data',
                                  layout='fsdkaggle2018', **KAGGLE)


@pytest.fixture(scope='module')
def kaggle2019(tmp_path_factory):
    return synthetic.make_dataset(tmp_path_factory.mktemp('k19') / 'data',
                                  layout='fsdkaggle2019', max_labels=3, **KAGGLE)


def _split(column):
    return [set(value.split(',')) for value in column]


def test_fsdkaggle2018_files_columns_and_noise(kaggle2018):
    meta = kaggle2018 / 'FSDKaggle2018.meta'
    train = pd.read_csv(meta / 'train_post_competition.csv')
    test = pd.read_csv(meta / 'test_post_competition_scoring_clips.csv')
    assert list(train.columns) == ['fname', 'label', 'manually_verified', 'freesound_id',
                                   'license', 'true_label']
    assert list(test.columns) == ['fname', 'label', 'usage', 'freesound_id', 'license']
    assert len(train) == 72 and len(test) == 18
    assert set(test.usage) <= {'Public', 'Private'}
    assert (train.freesound_id.astype(str) + '.wav' == train.fname).all()
    for folder, table in [('FSDKaggle2018.audio_train', train), ('FSDKaggle2018.audio_test', test)]:
        assert sorted(p.name for p in (kaggle2018 / folder).iterdir()) == sorted(table.fname)
    verified, noisy = train[train.manually_verified == 1], train[train.manually_verified == 0]
    assert (verified.groupby('true_label').size() == 3).all()
    assert (verified.label == verified.true_label).all()
    assert (noisy.label != noisy.true_label).sum() == round(0.3 * len(noisy))
    # Issue 19: official names, FSDnoisy18k's shared ones first.
    assert set(train.label) | set(test.label) == {'Acoustic_guitar', 'Fart', 'Fireworks',
                                                  'Hi-hat', 'Squeak', 'Tearing'}
    assert set(train.label) <= set(vocabularies.FSDKAGGLE2018)


def test_fsdkaggle2019_files_columns_and_label_counts(kaggle2019):
    meta = kaggle2019 / 'FSDKaggle2019.meta'
    files = ['train_curated_post_competition.csv', 'train_noisy_post_competition.csv',
             'test_post_competition.csv']
    curated, noisy, test = (pd.read_csv(meta / name) for name in files)
    for table in (curated, noisy):
        assert list(table.columns) == ['fname', 'labels', 'freesound_id', 'license', 'true_labels']
    assert list(test.columns) == ['fname', 'labels', 'usage', 'freesound_id', 'license']
    assert (len(curated), len(noisy), len(test)) == (6 * 3, 6 * 9, 18)
    for folder, table in [('audio_train_curated', curated), ('audio_train_noisy', noisy),
                          ('audio_test', test)]:
        wavs = sorted(p.name for p in (kaggle2019 / f'FSDKaggle2019.{folder}').iterdir())
        assert wavs == sorted(table.fname)
    names = {'Acoustic_guitar', 'Bass_guitar', 'Clapping', 'Dishes_and_pots_and_pans', 'Fart',
             'Hi-hat'}
    assert names <= set(vocabularies.FSDKAGGLE2019)
    for name, table in zip(files, (curated, noisy, test)):
        assert {len(s) for s in _split(table.labels)} == {1, 2, 3}  # 1..M, each drawn
        assert all(s <= names for s in _split(table.labels))
        assert all(v == ','.join(sorted(v.split(','))) for v in table.labels)
        # Round trip: the writer quoted each list that holds a comma, pandas unquoted it.
        raw = (meta / name).read_text()
        assert all(f'"{v}"' in raw for v in table.labels if ',' in v)
    assert (curated.labels == curated.true_labels).all()


def test_fsdkaggle2019_noise_changes_one_label_of_the_asked_share(kaggle2019):
    noisy = pd.read_csv(kaggle2019 / 'FSDKaggle2019.meta' / 'train_noisy_post_competition.csv')
    labels, true = _split(noisy.labels), _split(noisy.true_labels)
    changed = [(l, t) for l, t in zip(labels, true) if l != t]
    assert len(changed) == round(0.3 * len(noisy))
    for label, truth in changed:
        assert len(label) == len(truth)
        assert len(label - truth) == 1 and len(truth - label) == 1  # one label swapped
    # max_labels 1 in the 2019 layout: single labels, same noise rule.
    single = synthetic.make_dataset(kaggle2019.parent / 'single', layout='fsdkaggle2019',
                                    **{**KAGGLE, 'train_per_class': 4, 'test_per_class': 1})
    table = pd.read_csv(single / 'FSDKaggle2019.meta' / 'train_noisy_post_competition.csv')
    assert not table.labels.str.contains(',').any()
    assert (table.labels != table.true_labels).sum() == round(0.3 * len(table))


def test_mixed_clip_holds_each_source():
    # Two tonal classes (family members 0 and 2 of 20 classes): the spectrum of their mix
    # peaks inside both class bands.
    recipes = synth_audio.class_recipes(20)
    tonal = [r for r in recipes if r[0] == 'tonal']
    low, high = tonal[0], tonal[2]
    sr, n = 16000, 16000
    clip = synth_audio.synth_mix(np.random.default_rng(1), [low, high], n, sr)
    spectrum, freqs = np.abs(np.fft.rfft(clip)), np.fft.rfftfreq(n, 1 / sr)
    for _, (a, b), _ in (low, high):
        band = (freqs >= a - 1) & (freqs <= b + 1)
        assert spectrum[band].max() > 0.2 * spectrum.max()


def test_layout_arguments_are_checked(tmp_path, capsys):
    with pytest.raises(ConfigError, match="layout 'audioset' is unknown; valid: fsdnoisy18k, "
                                          "fsdkaggle2018, fsdkaggle2019, fsd50k, arca23k, csv"):
        synthetic.make_dataset(tmp_path / 'x', layout='audioset', **SMALL)
    with pytest.raises(ConfigError, match='layout fsdkaggle2018 has 41 classes, got n_classes 42'):
        synthetic.make_dataset(tmp_path / 'x', layout='fsdkaggle2018', **{**SMALL,
                                                                         'n_classes': 42})
    with pytest.raises(ConfigError,
                       match='needs a multi-label layout: fsdkaggle2019, fsd50k, csv'):
        synthetic.make_dataset(tmp_path / 'x', layout='fsdkaggle2018', max_labels=2, **SMALL)
    with pytest.raises(ConfigError, match='max_labels must be in'):
        synthetic.make_dataset(tmp_path / 'x', layout='fsdkaggle2019', max_labels=3, **SMALL)
    args = ['--out', str(tmp_path / 'cli'), '--layout', 'fsdkaggle2019', '--max-labels', '2',
            '--n-classes', '3', '--train-per-class', '2', '--test-per-class', '1',
            '--min-dur', '0.1', '--max-dur', '0.2', '--sr', '16000']
    assert synthetic.main(args) == 0
    assert '(fsdkaggle2019): 3 classes, 6 train clips' in capsys.readouterr().out
    assert synthetic.main(args) == 2
    assert 'already holds' in capsys.readouterr().err


@pytest.mark.parametrize('n', [15, 16, 17, 375, 1000])
def test_noise_has_the_asked_length_for_odd_fast_fft_sizes(n):
    # 15 and 375 are odd lengths that are fast FFT sizes themselves: irfft's default
    # output length (one short) used to break the clip synthesis for some seeds.
    from scipy.fft import next_fast_len
    assert (next_fast_len(15, real=True), next_fast_len(375, real=True)) == (15, 375)
    rng = np.random.default_rng(0)
    assert synth_audio._pink_noise(rng, n, 16000).shape == (n,)

