"""ctrl.inject_noise.kind open_set (open_set.py): clips of held-out classes relabelled as
in-vocabulary classes, the rest of those classes removed; checked by counting."""
import numpy as np
import pandas as pd
import pytest

import config
import data
import datasets
from conftest import clip_table
import open_set
from config import ConfigError

K = 6
CLASSES = [f'class{k}' for k in range(K)]


def table(n_unverified=240, n_verified=60, n_test=60):
    return clip_table(CLASSES, n_unverified, n_verified, n_test, seed=4)


def spec(*overrides):
    return config.load_config(None, ['ctrl.inject_noise.kind=open_set', *overrides]
                              )['ctrl']['inject_noise']


def test_held_out_classes_become_noise_and_leave_the_vocabulary_and_test_set():
    before = table()
    s = spec('ctrl.inject_noise.rate=0.5', 'ctrl.inject_noise.held_out=[class1, class4]')
    rows = datasets.noise_subset_rows(before, s['subset'])
    after, vocabulary = open_set.inject(before, CLASSES, s, rows)
    assert vocabulary == ['class0', 'class2', 'class3', 'class5']
    held = before.label.isin(['class1', 'class4'])
    unverified_train = (before.subset == 'train') & (before.verified == 0)
    n_candidates = int((held & unverified_train).sum())
    n_noisy = int(round(0.5 * n_candidates))
    # counts: every clip of another class stays; of the held-out ones, n_noisy stay
    assert len(after) == int((~held).sum()) + n_noisy
    assert int(after.noise_injected.sum()) == n_noisy
    noisy = after[after.noise_injected]
    assert set(noisy.true_label) <= {'class1', 'class4'} and (noisy.true_idx == -1).all()
    assert (noisy.subset == 'train').all() and (noisy.verified == 0).all()
    assert set(noisy.label) <= set(vocabulary)
    # no held-out class anywhere in the given labels; the test set lost them entirely
    assert set(after.label) == set(vocabulary)
    assert int((after.subset == 'test').sum()) == int(((before.subset == 'test') & ~held).sum())
    # indices over the new vocabulary; the other clips keep their labels
    assert (np.asarray(vocabulary, object)[after.label_idx] == after.label).all()
    clean = after[~after.noise_injected]
    assert (clean.label == clean.true_label).all()
    # the relabelled clips are the wrong labels that noise detection counts
    np.testing.assert_array_equal(data.wrong_labels(after), after.noise_injected.to_numpy())
    assert open_set.label_noise(after) == {'held_out_classes': ['class1', 'class4']}


def test_a_share_draws_the_held_out_classes_with_the_seed():
    s = spec('ctrl.inject_noise.rate=1', 'ctrl.inject_noise.held_out_share=0.34')
    held = open_set.held_out_classes(CLASSES, s)
    assert len(held) == 2 and held == open_set.held_out_classes(CLASSES, s)
    other = open_set.held_out_classes(CLASSES, {**s, 'seed': 7})
    assert len(other) == 2
    before = table()
    after, vocabulary = open_set.inject(before, CLASSES, s,
                                        datasets.noise_subset_rows(before, 'unverified'))
    assert len(vocabulary) == K - 2
    # rate 1: every unverified training clip of the held-out classes is kept as noise
    held_rows = before.label.isin(held)
    assert int(after.noise_injected.sum()) == int(
        (held_rows & (before.subset == 'train') & (before.verified == 0)).sum())


def test_unknown_or_too_many_held_out_classes_are_one_line_errors():
    with pytest.raises(ConfigError, match='held_out: nope not a class of the dataset; valid'):
        open_set.held_out_classes(CLASSES, spec('ctrl.inject_noise.held_out=[nope]'))
    with pytest.raises(ConfigError, match='at least 2 must stay'):
        open_set.held_out_classes(CLASSES, spec(
            f'ctrl.inject_noise.held_out=[{", ".join(CLASSES[:5])}]'))


def test_load_applies_it_and_results_record_the_held_out_classes(dataset, make_cfg):
    root, _, _ = dataset
    cfg = make_cfg(f'ctrl.dataset_path={root}', 'ctrl.inject_noise.kind=open_set',
                   'ctrl.inject_noise.rate=1', 'ctrl.inject_noise.held_out=[Rain]')
    table_, classes = datasets.load(cfg)
    assert classes == ['Acoustic_guitar', 'Wind']
    # Rain: c2 and c3 unverified training clips kept as noise; c1 (verified) and t1 removed
    assert sorted(table_.fname[table_.noise_injected]) == ['c2.wav', 'c3.wav']
    assert 'c1.wav' not in set(table_.fname) and 't1.wav' not in set(table_.fname)
    entry = datasets.label_noise(cfg, table_)['label_noise']
    assert entry['held_out_classes'] == ['Rain'] and entry['kind'] == 'open_set'
