"""Write a synthetic dataset in the FSDnoisy18k, FSDKaggle2018, FSDKaggle2019, FSD50K,
ARCA23K or csv layout, for demos and tests.

    python synthetic.py --out data/synthetic [--layout fsdkaggle2019] [--max-labels 2] ...

Layouts (--layout; the default fsdnoisy18k writes the same bytes as before layouts existed):
    fsdnoisy18k    DIR/FSDnoisy18k.audio_train/<id>.wav   DIR/FSDnoisy18k.audio_test/<id>.wav
                   DIR/FSDnoisy18k.meta/train.csv  fname,label,aso_id,manually_verified,
                                                   noisy_small,true_label
                   DIR/FSDnoisy18k.meta/test.csv   fname,label,aso_id
    fsdkaggle2018  DIR/FSDKaggle2018.audio_train/   DIR/FSDKaggle2018.audio_test/
                   DIR/FSDKaggle2018.meta/train_post_competition.csv  fname,label,
                       manually_verified,freesound_id,license,true_label
                   DIR/FSDKaggle2018.meta/test_post_competition_scoring_clips.csv  fname,
                       label,usage,freesound_id,license
    fsdkaggle2019  DIR/FSDKaggle2019.audio_train_curated/ (verified clips)
                   DIR/FSDKaggle2019.audio_train_noisy/   (unverified clips)
                   DIR/FSDKaggle2019.audio_test/
                   DIR/FSDKaggle2019.meta/train_curated_post_competition.csv and
                       train_noisy_post_competition.csv  fname,labels,freesound_id,license,
                       true_labels
                   DIR/FSDKaggle2019.meta/test_post_competition.csv  fname,labels,usage,
                       freesound_id,license
    fsd50k         DIR/FSD50K.dev_audio/  DIR/FSD50K.eval_audio/   (file <id>.wav, fname <id>)
                   DIR/FSD50K.ground_truth/dev.csv   fname,labels,mids,split,true_labels
                   DIR/FSD50K.ground_truth/eval.csv  fname,labels,mids
                   DIR/FSD50K.ground_truth/vocabulary.csv  index,name,mid (no header)
    arca23k        DIR/ARCA23K.audio/ (the unverified train clips: ARCA23K's train set)
                   DIR/FSD50K.dev_audio/ (verified train clips: ARCA23K-FSD's; val clips)
                   DIR/FSD50K.eval_audio/ (test clips)
                   DIR/ARCA23K.ground_truth/{train,val,test}.csv  fname,label,mid
                       (train.csv also true_label); DIR/ARCA23K-FSD.ground_truth/ the same
    csv            DIR/audio/<id>.wav   DIR/clips.csv  fname (audio/<id>.wav),labels,
                       verified,split (train/test),fold (1-5),true_labels
Labels are class names: the layouts with an official vocabulary (fsdkaggle2018/2019) use
its names, FSDnoisy18k's shared ones first; the others FSDnoisy18k's, then class_20, ...
In fsd50k, the validation split is the last round(0.15 n) train clips of each class (at
least one of two or more); in arca23k, the first half of each class's test clips validate
(val.csv) and the verified train clips are ARCA23K-FSD's train set; in csv, folds 1-5 are
dealt round-robin within each class, train clips first, so that each fold holds every class.
In fsdkaggle2019, fsd50k and csv (the multi-label layouts), labels and true_labels are
comma-joined class names in name order, quoted
by the CSV writer; class names hold no commas. freesound_id is the clip's numeric id, the
license one constant, and usage is Public for ids divisible by 5 (about a fifth, as in the
real test sets), else Private.

Each class is one recipe of synth_audio.py: a sound family and a class-specific range of
its key parameter, so that classes are learnable from log-mel patches but not trivially.

Labels: every class has train_per_class train clips (and test_per_class test clips) whose
primary source is of that class; with --max-labels M (multi-label layouts) a clip also mixes
sources of other distinct classes (its number of labels uniform in 1..M) and is labelled
with all of them. Per class, round(clean_fraction x train_per_class) train clips are the
clean subset (manually_verified=1, or curated; correct labels). Of all other (noisy) train
clips, exactly round(noise_rate x n_noisy) are drawn at random over the whole noisy subset
(not per class); in each, the label of the primary source is replaced by a class drawn
uniformly from those not in the clip. true_label(s) always hold the truth; noisy_small
(fsdnoisy18k) marks a random floor(n_noisy / 2) of the noisy clips. Test labels are always
correct.

The same arguments give a byte-identical dataset: one numpy Generator seeded once, a
fixed drawing order, integer PCM written by us, no timestamps. Every file is written
atomically and the CSVs last, so a folder without CSVs is an unfinished run.
"""
import argparse
import inspect
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pandas as pd
import soundfile as sf

from config import ConfigError
from synth_audio import class_recipes, synth_mix
import vocabularies
from utils import atomic_path, atomic_write_text

FSDNOISY18K_CLASSES = [
    'Acoustic_guitar', 'Bass_guitar', 'Clapping', 'Coin_(dropping)', 'Crash_cymbal',
    'Dishes_and_pots_and_pans', 'Engine', 'Fart', 'Fire', 'Fireworks', 'Glass', 'Hi-hat',
    'Piano', 'Rain', 'Slam', 'Squeak', 'Tearing', 'Walk_or_footsteps', 'Wind', 'Writing',
]
TRAIN_DIR, TEST_DIR, META_DIR = ('FSDnoisy18k.audio_train', 'FSDnoisy18k.audio_test',
                                 'FSDnoisy18k.meta')
MIN_SR = 16000  # the highest class range (noise bands up to 6 kHz + bandwidth) needs it


def class_names(n_classes, layout='fsdnoisy18k'):
    """The first FSDnoisy18k class names, then class_20, class_21, ...; for a layout with
    an official vocabulary, its names: those FSDnoisy18k shares with it first, then the
    others in name order."""
    vocabulary = LAYOUTS[layout].vocabulary
    if vocabulary is None:
        return [FSDNOISY18K_CLASSES[k] if k < len(FSDNOISY18K_CLASSES) else f'class_{k}'
                for k in range(n_classes)]
    shared = [name for name in FSDNOISY18K_CLASSES if name in vocabulary]
    return (shared + [name for name in vocabulary if name not in shared])[:n_classes]


# ----------------------------------------------------------------------------- clips

def _length_range(min_dur, max_dur, sr):
    """Inclusive clip lengths in samples; the 1e-9 keeps 0.2 s x 16000 Hz at 3200."""
    return int(np.ceil(min_dur * sr - 1e-9)), int(np.floor(max_dur * sr + 1e-9))


def _check_args(n_classes, train_per_class, test_per_class, clean_fraction, noise_rate,
                min_dur, max_dur, sr, layout, max_labels):
    checks = [
        (n_classes >= 2, f'n_classes must be at least 2, got {n_classes}'),
        (train_per_class >= 1, f'train_per_class must be at least 1, got {train_per_class}'),
        (test_per_class >= 0, f'test_per_class must be at least 0, got {test_per_class}'),
        (0 <= clean_fraction <= 1, f'clean_fraction must be in [0, 1], got {clean_fraction}'),
        (0 <= noise_rate <= 1, f'noise_rate must be in [0, 1], got {noise_rate}'),
        (0 < min_dur <= max_dur, f'durations need 0 < min_dur <= max_dur, got '
                                 f'{min_dur} and {max_dur}'),
        (sr >= MIN_SR, f'sr must be at least {MIN_SR} Hz, got {sr}'),
        (layout in LAYOUTS, f'layout {layout!r} is unknown; valid: {", ".join(LAYOUTS)}'),
        (max_labels == 1 or layout not in LAYOUTS or LAYOUTS[layout].multi_label,
         f'max_labels {max_labels} needs a multi-label layout: '
         f'{", ".join(name for name, spec in LAYOUTS.items() if spec.multi_label)}'),
        (1 <= max_labels < n_classes, f'max_labels must be in [1, n_classes - 1] (a wrong '
                                      f'label must exist), got {max_labels}'),
    ]
    vocabulary = LAYOUTS[layout].vocabulary if layout in LAYOUTS else None
    if vocabulary is not None:
        checks.append((n_classes <= len(vocabulary), f'layout {layout} has {len(vocabulary)} '
                                                     f'classes, got n_classes {n_classes}'))
    low, high = _length_range(min_dur, max_dur, sr)
    checks.append((0 < low <= high, f'no clip length of a whole number of samples lies '
                                    f'between min_dur {min_dur} and max_dur {max_dur}'))
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _label_sets(rng, primary, n_classes, max_labels):
    """Each clip's classes: its primary class first, then other distinct classes drawn
    uniformly, the number of labels uniform in 1..max_labels. No draws for max_labels 1."""
    if max_labels == 1:
        return [[int(c)] for c in primary]
    counts = rng.integers(1, max_labels + 1, len(primary))
    return [[int(c)] + [int(o) for o in rng.choice(np.delete(np.arange(n_classes), c), k - 1,
                                                   replace=False)]
            for c, k in zip(primary, counts)]


def _wrong_class(classes, step, n_classes):
    """The step-th class after the clip's first one, counting cyclically and skipping the
    clip's classes: uniform over the classes not in the clip when step is uniform in
    1..n_classes - len(classes); for a single class c it is (c + step) mod n_classes."""
    after = [(classes[0] + j) % n_classes for j in range(1, n_classes)]
    return [c for c in after if c not in classes][step - 1]


def _train_labels(rng, n_classes, train_per_class, clean_fraction, noise_rate, max_labels):
    """-> (true, label, verified, noisy_small): true and label hold each clip's class list
    (primary first), verified and noisy_small are int arrays; class-major order."""
    primary = np.repeat(np.arange(n_classes), train_per_class)
    n_clean = round(clean_fraction * train_per_class)
    verified = np.zeros(len(primary), dtype=int)
    for c in range(n_classes):
        verified[c * train_per_class + rng.permutation(train_per_class)[:n_clean]] = 1
    true = _label_sets(rng, primary, n_classes, max_labels)
    noisy = np.flatnonzero(verified == 0)
    wrong = rng.choice(noisy, size=round(noise_rate * len(noisy)), replace=False)
    # One draw per mislabelled clip, among the classes it does not hold.
    steps = rng.integers(1, n_classes + 1 - np.array([len(true[i]) for i in wrong], dtype=int))
    label = [list(classes) for classes in true]
    for i, step in zip(wrong, steps):
        label[i][0] = _wrong_class(true[i], step, n_classes)
    noisy_small = np.zeros(len(primary), dtype=int)
    noisy_small[rng.choice(noisy, size=len(noisy) // 2, replace=False)] = 1
    return true, label, verified, noisy_small


def _write_wav(path, clip, sr):
    # Quantise here (not in libsndfile) so that the bytes depend on numpy alone.
    pcm = np.round(np.clip(clip, -1, 1) * 32767).astype(np.int16)
    with atomic_path(path) as tmp:
        sf.write(tmp, pcm, sr, format='WAV', subtype='PCM_16')


def _write_audio(rng, out, clips, recipes, min_dur, max_dur, sr):
    """clips: (folder, fname, class list) in drawing order."""
    low, high = _length_range(min_dur, max_dur, sr)
    for folder, fname, classes in clips:
        n = int(rng.integers(low, high + 1))
        _write_wav(out / folder / fname, synth_mix(rng, [recipes[c] for c in classes], n, sr), sr)


# ----------------------------------------------------------------------------- layouts
# A table builder: (train clips, test clips, class names) -> one DataFrame per metadata
# file. Clips are DataFrames: train (fname, labels, true, verified, noisy_small), test
# (fname, true), where labels / true hold class-index lists.

LICENSE = 'Creative Commons 0'


def _name(names, clips):
    """Single-label layouts: each clip's one class name."""
    return [names[classes[0]] for classes in clips]


def _joined(names, clips):
    """Multi-label layouts: each clip's class names, in name order, comma-joined."""
    return [','.join(sorted(names[c] for c in classes)) for classes in clips]


def _provenance(fnames):
    return {'freesound_id': [int(f.split('.')[0]) for f in fnames], 'license': LICENSE}


def _usage(fnames):
    return ['Public' if int(f.split('.')[0]) % 5 == 0 else 'Private' for f in fnames]


def _fsdnoisy18k_tables(train, test, names):
    aso = [f'/m/syn{k:02d}' for k in range(len(names))]
    return [
        pd.DataFrame({'fname': train.fname, 'label': _name(names, train.labels),
                      'aso_id': _name(aso, train.labels), 'manually_verified': train.verified,
                      'noisy_small': train.noisy_small, 'true_label': _name(names, train.true)}),
        pd.DataFrame({'fname': test.fname, 'label': _name(names, test.true),
                      'aso_id': _name(aso, test.true)})]


def _fsdkaggle2018_tables(train, test, names):
    return [
        pd.DataFrame({'fname': train.fname, 'label': _name(names, train.labels),
                      'manually_verified': train.verified, **_provenance(train.fname),
                      'true_label': _name(names, train.true)}),
        pd.DataFrame({'fname': test.fname, 'label': _name(names, test.true),
                      'usage': _usage(test.fname), **_provenance(test.fname)})]


def _fsdkaggle2019_tables(train, test, names):
    def train_table(clips):
        return pd.DataFrame({'fname': clips.fname, 'labels': _joined(names, clips.labels),
                             **_provenance(clips.fname), 'true_labels': _joined(names, clips.true)})
    return [train_table(train[train.verified == 1]), train_table(train[train.verified == 0]),
            pd.DataFrame({'fname': test.fname, 'labels': _joined(names, test.true),
                          'usage': _usage(test.fname), **_provenance(test.fname)})]


def _ids(fnames):
    """FSD50K / ARCA23K name a clip by its Freesound id, without the .wav."""
    return [int(f.split('.')[0]) for f in fnames]


def _fsd50k_tables(train, test, names):
    mids = [f'/m/syn{k:02d}' for k in range(len(names))]
    dev = pd.DataFrame({'fname': _ids(train.fname), 'labels': _joined(names, train.labels),
                        'mids': _joined(mids, train.labels),
                        'split': np.where(train.val, 'val', 'train'),
                        'true_labels': _joined(names, train.true)})
    vocabulary = pd.DataFrame({'index': range(len(names)), 'name': names, 'mid': mids})
    return [dev, pd.DataFrame({'fname': _ids(test.fname), 'labels': _joined(names, test.true),
                               'mids': _joined(mids, test.true)}),
            vocabulary.to_csv(index=False, header=False)]


def _arca23k_tables(train, test, names):
    mids = [f'/m/syn{k:02d}' for k in range(len(names))]

    def table(clips, labels, truth=None):
        frame = pd.DataFrame({'fname': _ids(clips.fname), 'label': _name(names, labels),
                              'mid': _name(mids, labels)})
        return frame if truth is None else frame.assign(true_label=_name(names, truth))
    noisy, clean = train[train.verified == 0], train[train.verified == 1]
    val, test = test[test.val], test[~test.val]
    shared = [table(val, val.true), table(test, test.true)]
    return [table(noisy, noisy.labels, noisy.true), *shared, table(clean, clean.true), *shared]


FOLDS = 5  # the csv layout's official folds


def _csv_tables(train, test, names):
    clips = pd.concat([train.assign(split='train'),
                       test.assign(labels=test.true, verified=1, split='test')],
                      ignore_index=True)
    # Folds dealt round-robin within each class (by the clip's first true class), train
    # clips first: every fold holds every class, as in ESC-50.
    primary = clips.true.map(lambda classes: classes[0])
    fold = clips.groupby(primary).cumcount() % FOLDS + 1
    return [pd.DataFrame({'fname': 'audio/' + clips.fname, 'labels': _joined(names, clips.labels),
                          'verified': clips.verified, 'split': clips.split, 'fold': fold,
                          'true_labels': _joined(names, clips.true)})]


class Layout(NamedTuple):
    meta: str             # metadata folder
    train_dirs: tuple     # audio folders of the (verified, unverified) train clips
    test_dir: str
    csvs: tuple           # metadata files, in the order that tables returns them
    tables: Callable
    vocabulary: tuple = None  # the official class names the dataset's labels must be in
    multi_label: bool = False  # clips may mix several classes (--max-labels)
    val_dir: str = None   # the validation clips (half of each class's test clips) go here
    val_from_train: bool = False  # the validation clips are a share of the train clips


ARCA = ('ARCA23K.ground_truth', 'ARCA23K-FSD.ground_truth')
LAYOUTS = {
    'fsdnoisy18k': Layout(META_DIR, (TRAIN_DIR, TRAIN_DIR), TEST_DIR, ('train.csv', 'test.csv'),
                          _fsdnoisy18k_tables),
    'fsdkaggle2018': Layout(
        'FSDKaggle2018.meta', ('FSDKaggle2018.audio_train',) * 2, 'FSDKaggle2018.audio_test',
        ('train_post_competition.csv', 'test_post_competition_scoring_clips.csv'),
        _fsdkaggle2018_tables, vocabularies.FSDKAGGLE2018),
    'fsdkaggle2019': Layout(
        'FSDKaggle2019.meta',
        ('FSDKaggle2019.audio_train_curated', 'FSDKaggle2019.audio_train_noisy'),
        'FSDKaggle2019.audio_test',
        ('train_curated_post_competition.csv', 'train_noisy_post_competition.csv',
         'test_post_competition.csv'),
        _fsdkaggle2019_tables, vocabularies.FSDKAGGLE2019, multi_label=True),
    'fsd50k': Layout('FSD50K.ground_truth', ('FSD50K.dev_audio',) * 2, 'FSD50K.eval_audio',
                     ('dev.csv', 'eval.csv', 'vocabulary.csv'), _fsd50k_tables,
                     multi_label=True, val_from_train=True),
    'arca23k': Layout('.', ('FSD50K.dev_audio', 'ARCA23K.audio'), 'FSD50K.eval_audio',
                      tuple(f'{meta}/{name}.csv' for meta in ARCA
                            for name in ('train', 'val', 'test')),
                      _arca23k_tables, val_dir='FSD50K.dev_audio'),
    'csv': Layout('.', ('audio', 'audio'), 'audio', ('clips.csv',), _csv_tables,
                  multi_label=True),
}

VAL_SHARE = 0.15  # fsd50k: of each class's train clips, round(share x n), at least 1 of 2+


def _val_of_train(primary):
    """fsd50k's validation clips: the last round(VAL_SHARE x n) train clips of each class
    (at least one where a class has two, never its only one); no draw, so that the other
    layouts stay as they were."""
    val = np.zeros(len(primary), bool)
    for c in np.unique(primary):
        members = np.flatnonzero(primary == c)
        n_val = min(max(1, round(VAL_SHARE * members.size)), members.size - 1)
        val[members[members.size - n_val:]] = True
    return val


def _val_of_test(primary):
    """arca23k's validation clips: the first half (rounded down) of each class's test
    clips."""
    rank = pd.Series(primary).groupby(primary).cumcount().to_numpy()
    counts = np.bincount(primary)[primary]
    return rank < counts // 2


# ----------------------------------------------------------------------------- dataset

def make_dataset(out, n_classes=20, train_per_class=40, test_per_class=10,
                 clean_fraction=0.1, noise_rate=0.4, min_dur=0.5, max_dur=4.0, sr=22050,
                 seed=0, layout='fsdnoisy18k', max_labels=1):
    """Write the dataset under `out` (see the module docstring); return out as a Path."""
    _check_args(n_classes, train_per_class, test_per_class, clean_fraction, noise_rate,
                min_dur, max_dur, sr, layout, max_labels)
    spec, out = LAYOUTS[layout], Path(out)
    meta = out / spec.meta
    if any((meta / name).exists() for name in spec.csvs):
        raise ConfigError(f'{meta} already holds a dataset; choose another --out folder '
                          f'or delete this one')
    started = time.time()
    rng = np.random.default_rng(seed)
    names, recipes = class_names(n_classes, layout), class_recipes(n_classes)
    true, label, verified, noisy_small = _train_labels(rng, n_classes, train_per_class,
                                                       clean_fraction, noise_rate, max_labels)
    test_true = _label_sets(rng, np.repeat(np.arange(n_classes), test_per_class), n_classes,
                            max_labels)
    ids = 100000 + rng.choice(900000, size=len(true) + len(test_true), replace=False)
    fnames = [f'{i}.wav' for i in ids]
    train = pd.DataFrame({'fname': fnames[:len(true)], 'labels': label, 'true': true,
                          'verified': verified, 'noisy_small': noisy_small})
    test = pd.DataFrame({'fname': fnames[len(true):], 'true': test_true})
    train['val'] = (_val_of_train(np.array([c[0] for c in true])) if spec.val_from_train
                    else False)
    test['val'] = (_val_of_test(np.array([c[0] for c in test_true], int)) if spec.val_dir
                   else False)
    for folder in {*spec.train_dirs, spec.test_dir, *([spec.val_dir] if spec.val_dir else [])}:
        (out / folder).mkdir(parents=True, exist_ok=True)
    clips = ([(spec.train_dirs[1 - v], f, c) for f, c, v in zip(train.fname, true, verified)]
             + [(spec.val_dir if v else spec.test_dir, f, c)
                for f, c, v in zip(test.fname, test_true, test.val)])
    _write_audio(rng, out, clips, recipes, min_dur, max_dur, sr)
    # Rows sorted by id, so that no consumer can rely on a class-grouped order; a table
    # given as text (FSD50K's vocabulary.csv, without a header) is written as it is.
    for name, table in zip(spec.csvs, spec.tables(train, test, names)):
        atomic_write_text(meta / name, table if isinstance(table, str) else
                          table.sort_values('fname').to_csv(index=False))
    n_noisy = int((verified == 0).sum())
    n_wrong = sum(a != b for a, b in zip(label, true))
    per_clip = f', 1-{max_labels} labels per clip' if max_labels > 1 else ''
    print(f'synthetic dataset ({layout}): {n_classes} classes, {len(true)} train clips '
          f'({len(true) - n_noisy} clean, {n_noisy} noisy of which {n_wrong} mislabelled), '
          f'{len(test_true)} test clips{per_clip}, sr {sr} Hz -> {out} '
          f'({time.time() - started:.1f} s)')
    return out


# Help for the command-line flags; their types and defaults come from make_dataset.
HELP = {
    'clean_fraction': "fraction of each class's train clips that is verified (curated)",
    'noise_rate': 'fraction of the noisy (unverified) train clips with a wrong label',
    'min_dur': 'shortest clip, seconds', 'max_dur': 'longest clip, seconds',
    'sr': 'sample rate, Hz',
    'layout': 'folders and CSVs of: ' + ', '.join(LAYOUTS),
    'max_labels': 'most labels (mixed sources) per clip; multi-label layouts only (' +
                  ', '.join(name for name, spec in LAYOUTS.items() if spec.multi_label) + ')',
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', required=True, help='dataset folder to create')
    for name, param in inspect.signature(make_dataset).parameters.items():
        if name != 'out':
            parser.add_argument('--' + name.replace('_', '-'), type=type(param.default),
                                default=param.default, help=HELP.get(name, ' ') +
                                ' (default %(default)s)')
    try:
        make_dataset(**vars(parser.parse_args(argv)))
    except ConfigError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
