"""Self-verification (self_verify.py, and its 4 folds in splits.py) units against numpy
written here: the folds, which clips a fold model fine-tunes on, its fine-tuning rates, and
the excerpt posteriors it judges by."""
from types import SimpleNamespace

import keras
import numpy as np
import pandas as pd
import pytest

import data
import self_verify
import splits
from config import ConfigError

LEARN = {'sv_epochs': 30, 'sv_lr': 2e-4}


class _TuneExp:
    """Stands in for a fold's Experiment in Fold.fine_tune: records the table rows the
    plan is made of and the LR callbacks of the fit."""

    def __init__(self, epoch=7):
        self.epoch, self.rows, self.callbacks = epoch, None, None
        self.trainer = SimpleNamespace(reset_optimizer=lambda: None)
        self.selection = SimpleNamespace(restart=lambda: None, finish=lambda trainer: None)
        self.patches = SimpleNamespace(of_clips=self._of_clips)
        self.plans = SimpleNamespace(epoch=self._epoch)
        self.marks = []
        self.mark = self.marks.append

    def _of_clips(self, rows):
        self.rows = np.asarray(rows)
        return self.rows

    def _epoch(self, idx, mixup=True):
        assert mixup is False  # fine-tuning without mixup, as the released code
        return idx

    def fit(self, epochs, plan, early_stopping=True, lr_callbacks=()):
        assert epochs == LEARN['sv_epochs'] and early_stopping is False
        self.callbacks = lr_callbacks


def test_a_fold_never_fine_tunes_on_clips_of_its_own_held_out_part():
    """Each clip has the fold that validates it (verified) or judges it (unverified);
    fold f fine-tunes on the verified clips of other folds and on the accepted clips of
    other folds, never on an accepted clip it judged itself."""
    rng = np.random.default_rng(4)
    n = 300
    verified = rng.random(n) < 0.3
    fold_of = rng.integers(0, 4, n)
    accepted = np.flatnonzero(~verified & (rng.random(n) < 0.5))
    accepted_set = set(accepted.tolist())
    for f in range(4):
        exp = _TuneExp()
        own = np.flatnonzero(~verified & (fold_of == f))
        fold = self_verify.Fold(exp, np.flatnonzero(verified & (fold_of != f)), own)
        fold.fine_tune(accepted, LEARN, 1)
        assert exp.marks == ['self-verification round 1']  # curves.png's mark
        expected = [r for r in range(n)
                    if fold_of[r] != f and (verified[r] or r in accepted_set)]
        assert exp.rows.tolist() == expected
        assert np.intersect1d(exp.rows, own).size == 0
        assert np.intersect1d(exp.rows, accepted).size > 0  # other folds' clips do train it


def test_fine_tuning_rates_are_the_released_codes():
    """The released code (Network.fit with get_linear(5, lr, 25)) sets the rate before
    epoch 1 and, after each epoch n >= 5, lowers it by lr / 25: epochs 1-5 at lr, epoch 6
    at 24/25 lr, ..., epoch 30 at 0. Replayed here as its loop does it."""
    lr, epochs = LEARN['sv_lr'], LEARN['sv_epochs']
    rate, released = lr, []
    for n in range(1, epochs + 1):
        released.append(rate)
        if n >= 5:
            rate = max(0.0, rate - lr / (epochs - 5))
    exp = _TuneExp(epoch=7)  # fine-tuning starts after 7 epochs of earlier training
    self_verify.Fold(exp, np.arange(3), np.arange(3, 5)).fine_tune(np.zeros(0, int), LEARN, 2)
    (schedule,) = exp.callbacks
    got = [schedule.schedule(7 + e) for e in range(epochs)]  # Keras's epoch numbers
    np.testing.assert_allclose(got, released, rtol=0, atol=1e-12)
    assert got[4] == lr and got[5] == pytest.approx(lr * 24 / 25) and got[-1] == 0.0


class _Offsets:
    """Stands in for the Generator: records the bounds of the excerpt starts and
    returns known starts below them."""

    def integers(self, low, high):
        self.low, self.high = low, np.asarray(high)
        return (np.arange(self.high.size) * 3 + 2) % self.high


def test_excerpt_posteriors_average_the_model_over_random_excerpts(clips):
    """K excerpts of the training input length per clip, each starting at 0..length - L
    (clips shorter than L at 0..length - 1 and wrapping around: random cyclic shifts, as
    np.roll of the clip repeated), standardised, scored by a model computing
    softmax(W x + b), averaged per clip: against numpy."""
    L, K, n_classes = clips['patch_len'], 4, 3
    n_mels = clips['n_mels']
    mean, std = np.full(n_mels, 1.5, np.float32), np.full(n_mels, 2.0, np.float32)
    p = data.make_clips(clips['starts'], clips['lengths'])
    table = pd.DataFrame({'label_idx': np.arange(len(clips['lengths'])) % n_classes,
                          'verified': 0})
    table['labels_idx'] = [(k,) for k in table.label_idx]
    source = data.PatchSource(clips['frames'], p, table, mean, std,
                              np.zeros(n_classes, np.float32), L, False)
    rng = np.random.default_rng(0)
    w = rng.normal(size=(L * n_mels, n_classes)).astype(np.float32) * 0.3
    b = rng.normal(size=n_classes).astype(np.float32)
    inputs = keras.Input((L, n_mels, 1))
    model = keras.Model(inputs, {'scores': keras.layers.Dense(n_classes, activation='softmax')(
        keras.layers.Flatten()(inputs))})
    model.layers[-1].set_weights([w, b])
    exp = SimpleNamespace(source=source, trainer=SimpleNamespace(classifier=model),
                          store=SimpleNamespace(start=clips['starts'],
                                                length=clips['lengths']),
                          cfg={'learn': {'predict_batch_size': 6}})  # 20 windows: padded
    rows = np.array([2, 0, 5, 4, 1])  # lengths 20, 5, 1, 14, 8: L = 8 fits 13, 1, 1, 7, 1
    # ways; the clips of 5 and 1 frames are shorter than L: 5 and 1 cyclic shifts
    offsets = _Offsets()
    got = self_verify.excerpt_posteriors(exp, rows, K, offsets)

    lengths, starts = clips['lengths'][rows], clips['starts'][rows]
    bounds = np.repeat([13, 5, 1, 7, 1], K)
    assert offsets.low == 0 and offsets.high.tolist() == bounds.tolist()
    begin = (np.arange(rows.size * K) * 3 + 2) % bounds
    assert len(set(begin[K:2 * K])) > 1  # the 5-frame clip: not the same excerpt K times
    expected = np.zeros((rows.size, n_classes))
    for i in range(rows.size):
        own = clips['frames'][starts[i]:starts[i] + lengths[i]]
        for k in range(K):
            s = begin[i * K + k]
            window = (np.resize(np.roll(own, -s, axis=0), (L, n_mels)) if lengths[i] < L
                      else own[s:s + L])
            x = ((window - mean) / std).reshape(-1)
            z = x @ w + b
            expected[i] += np.exp(z - z.max()) / np.exp(z - z.max()).sum() / K
    assert got.shape == (rows.size, n_classes)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_self_verification_folds_keep_each_folds_unverified_clips_out():
    """Counted here from the folds' training and validation rows: every unverified clip
    is missing from exactly one fold's training rows (that fold judges it, the other
    three train on it), every verified clip validates exactly one fold and trains the
    other three; the Folds of make_folds hold out exactly the clips assigned to them and
    fine-tune on no clip assigned to them."""
    rng = np.random.default_rng(0)
    n = 160
    table = pd.DataFrame({'label_idx': rng.integers(0, 4, n),
                          'verified': (rng.random(n) < 0.3).astype(int)})
    rows = np.arange(n)
    folds = splits.self_verify_folds(table, rows, seed=1)
    assert len(folds) == 4
    verified = table.verified.to_numpy() == 1
    labels = table.label_idx.to_numpy()
    in_train = np.array([[r in set(train.tolist()) for r in rows] for train, _ in folds])
    in_val = np.array([[r in set(val.tolist()) for r in rows] for _, val in folds])
    assert (in_train.sum(axis=0) == 3).all()  # each clip trains three of the four models
    assert (in_val.sum(axis=0)[verified] == 1).all() and not in_val[:, ~verified].any()
    assert not (in_train & in_val).any()
    fold_of = np.argmin(in_train, axis=0)  # the one fold that does not train on the clip
    for f in range(4):
        # stratified: each class's unverified clips assigned to fold f are within one
        # clip of a quarter of that class's unverified clips
        for c in range(4):
            total = np.sum(~verified & (labels == c))
            assert abs(np.sum(~verified & (labels == c) & (fold_of == f)) - total / 4) <= 1
    exp = SimpleNamespace(table=table, splits=folds,
                          for_fold=lambda f: SimpleNamespace(fold=f))
    fold_models = self_verify.make_folds(exp)
    accepted = rows[~verified]  # even if every unverified clip were accepted
    for f, fold in enumerate(fold_models):
        assert fold.held_out.tolist() == rows[~verified & (fold_of == f)].tolist()
        assert fold.verified_train.tolist() == rows[verified & (fold_of != f)].tolist()
        tuned = fold.tuning_rows(accepted)
        assert not np.isin(tuned, rows[~verified & (fold_of == f)]).any()
        assert tuned.tolist() == rows[fold_of != f].tolist()
    with pytest.raises(ConfigError, match='needs verified and unverified'):
        splits.self_verify_folds(table.assign(verified=0), rows, seed=1)
