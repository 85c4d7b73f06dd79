"""Iterative self-verification (learn.mode self_verify): Dorfer & Widmer, "Training
General-Purpose Audio Tagging Networks with Noisy Labels and Iterative Self-Verification",
DCASE 2018 workshop (2nd place of DCASE 2018 task 2).

Verified and unverified training clips are each split into 4 stratified folds. Fold f's
model trains on the verified and unverified clips of the other folds and is validated on
fold f's verified clips; it never trains on fold f's unverified clips, so it can judge
their labels. Round 0 trains the 4 fold models; each later round r lets every fold model
predict its held-out unverified clips (posteriors averaged over random excerpts), accepts
clips by the rule of select(), and fine-tunes each fold model on its verified clips plus
every clip self-verified so far outside its own unverified fold. The round with the lowest
mean validation loss (verified validation clips) is evaluated: its 4 fold models averaged.
"""
import logging

import keras
import numpy as np

import eval as evaluation
import fastdev
import runfolder
import splits
from schedules import EpochLR, linear_decay_lr
from utils import atomic_path

logger = logging.getLogger(__name__)

FOLDS = splits.SELF_VERIFY_FOLDS
# The released code (CPJKU/dcase_task2: models/vgg_gap_spec2.py, fine_tune=True, with
# lasagne_wrapper/learn_rate_shedules.get_linear) trains epochs 1-5 at the initial rate
# and lowers it by rate / (epochs - 5) after each later epoch, so that its last epoch is
# trained at rate 0.
DECAY_FROM = 5


def fine_tune_lr(epoch, lr, epochs):
    """The rate of fine-tuning epoch `epoch` (0-based) of `epochs`, as the released code
    sets it: lr for epochs 1-5 (1-based), then lr * (1 - (n - 5) / (epochs - 5)) for epoch
    n, 0 at the last one. linear_decay_lr gets the 1-based number the code counts in."""
    return linear_decay_lr(epoch + 1, lr, DECAY_FROM, epochs)


def select(labels, posteriors, threshold, per_class):
    """Positions of the clips accepted as self-verified (Dorfer & Widmer, Sec. "Iterative
    Self-Verification Loop"): (1) the argmax of the mean posteriors equals the given
    label, (2) the mean posterior of that label exceeds threshold (None: not applied, as
    in the released code), (3) at most per_class clips per class, highest posterior first.

    labels [n] given labels; posteriors [n, K] mean posteriors. Ties in (3) keep the
    earlier clip.
    """
    labels = np.asarray(labels)
    own = posteriors[np.arange(labels.size), labels]
    ok = posteriors.argmax(axis=1) == labels
    if threshold is not None:
        ok &= own > threshold
    accepted = []
    for c in np.unique(labels[ok]):
        members = np.flatnonzero(ok & (labels == c))
        accepted += members[np.argsort(-own[members], kind='stable')][:per_class].tolist()
    return np.sort(np.asarray(accepted, np.int64))


def excerpt_posteriors(exp, rows, n_excerpts, rng):
    """Mean posteriors [len(rows), K] of the current model over n_excerpts random
    windows of the training input length per clip: a window starts at a frame drawn from
    0..length - patch_len; a clip shorter than the window is read around (wrapped) from a
    start drawn from 0..length - 1, a random cyclic shift of the wrapped clip, as the
    released code slices its tiled short clips at random (not the same excerpt 25 times)."""
    patch_len = exp.source.patch_len  # the training input length (patch or crop)
    start = np.repeat(exp.store.start[rows], n_excerpts).astype(np.int32)
    length = np.repeat(exp.store.length[rows], n_excerpts).astype(np.int32)
    offset = rng.integers(0, np.where(length < patch_len, length,
                                      length - patch_len + 1)).astype(np.int32)
    tensors = [keras.ops.convert_to_tensor(a) for a in (start, offset, length)]
    source, classifier = exp.source, exp.trainer.classifier

    def score(i):
        windows = source.windows(*(keras.ops.take(t, i) for t in tensors))
        return classifier(windows, training=False)['scores']
    scores = evaluation.map_with_progress(score, np.arange(start.size),
                                          exp.cfg['learn']['predict_batch_size'],
                                          'self-verification: excerpts')
    return scores.reshape(len(rows), n_excerpts, -1).mean(axis=1)


class Fold:
    """One fold model: its Experiment, its verified training rows and its held-out
    unverified rows (which it judges and never trains on)."""

    def __init__(self, exp, verified_train, held_out):
        self.exp, self.verified_train, self.held_out = exp, verified_train, held_out

    def tuning_rows(self, accepted):
        """The table rows it fine-tunes on: its verified training clips plus the accepted
        (self-verified) clips outside its own held-out unverified part."""
        return np.union1d(self.verified_train, np.setdiff1d(accepted, self.held_out))

    def fine_tune(self, accepted, learn, r):
        """sv_epochs from a fresh Adam state at sv_lr (the released code starts a new
        training run from the previous parameters), at the released code's rates
        (fine_tune_lr), without mixup, on tuning_rows(accepted), in round r."""
        exp = self.exp
        rows = self.tuning_rows(accepted)
        exp.trainer.reset_optimizer()
        exp.mark(f'self-verification round {r}')
        first, epochs, lr = exp.epoch, learn['sv_epochs'], learn['sv_lr']
        schedule = EpochLR(lambda e: fine_tune_lr(e - first, lr, epochs))
        exp.selection.restart()
        exp.fit(epochs, exp.plans.epoch(exp.patches.of_clips(rows), mixup=False),
                early_stopping=False, lr_callbacks=[schedule])
        exp.selection.finish(exp.trainer)


def make_folds(exp):
    """The 4 Folds; exp (prepare() made it on splits.self_verify_folds) is the first one's."""
    verified = exp.table.verified.to_numpy() == 1
    rows = np.unique(np.concatenate([np.union1d(*split) for split in exp.splits]))
    unverified = rows[~verified[rows]]
    folds = []
    for f, (train, val) in enumerate(exp.splits, 1):
        fold_exp = exp if f == 1 else exp.for_fold(f)
        folds.append(Fold(fold_exp, train[verified[train]], np.setdiff1d(unverified, train)))
    return folds


class Rounds:
    """What each round did and how its models score; picks the evaluated round."""

    def __init__(self, exp, folds):
        self.exp, self.folds, self.records = exp, folds, []
        self.best_loss, self.chosen = np.inf, None

    def paths(self, r):
        return [runfolder.path(self.exp.run_dir, 'self_verify', fold.exp.fold, round=r)
                for fold in self.folds]

    def record(self, r, accepted):
        """Save the round's fold models; log and keep its figures."""
        exp, method = self.exp, self.exp.cfg['recognizer']['ensemble']
        for fold, path in zip(self.folds, self.paths(r)):
            with atomic_path(path) as tmp:
                fold.exp.trainer.classifier.save(tmp)
        val = [fold.exp.validate() for fold in self.folds]
        # The round's test accuracy (reported, never used to choose): the fold models'
        # clip scores averaged as the evaluated ensemble averages them.
        test_rows = np.flatnonzero((exp.table.subset == 'test').to_numpy())
        members = [evaluation.predict_clips(fold.exp.trainer.classifier, exp.source,
                                            exp.patches, test_rows, exp.cfg)
                   for fold in self.folds]
        clips, scores = members[0][0], evaluation.combine([s for _, s in members], method)
        truth = exp.table.label_idx.to_numpy()
        given = truth[accepted]
        per_class = np.bincount(given, minlength=len(exp.classes))
        rec = {'round': r,
               'accepted_per_class': {c: int(n) for c, n in zip(exp.classes, per_class)},
               'accepted': int(accepted.size), 'precision': None,
               'val_loss': float(np.mean([v['loss'] for v in val])),
               'val_accuracy': 100.0 * float(np.mean([v['accuracy'] for v in val])),
               'test_accuracy': 100.0 * float(np.mean(scores.argmax(1) == truth[clips]))}
        if exp.has_truth and accepted.size:
            rec['precision'] = 100.0 * float(np.mean(given ==
                                                     exp.table.true_idx.to_numpy()[accepted]))
        self.records.append(rec)
        logger.info('self-verification round %d: %d clips accepted (precision %s), mean val '
                    'loss %.4f, mean val accuracy %.2f %%, test accuracy %.2f %%', r,
                    rec['accepted'], 'n/a' if rec['precision'] is None
                    else f'{rec["precision"]:.1f} %', rec['val_loss'], rec['val_accuracy'],
                    rec['test_accuracy'])
        if rec['val_loss'] < self.best_loss:
            self.best_loss, self.chosen = rec['val_loss'], r


def mode_self_verify(exp):
    """learn.mode self_verify -> the Ensemble of the chosen round's 4 fold models."""
    learn = exp.cfg['learn']
    folds = make_folds(exp)
    rounds = Rounds(exp, folds)
    logger.info('self-verification: %d folds, round 0 = %d epochs on all training clips',
                FOLDS, learn['n_epochs'])
    for fold in folds:
        fold.exp.fit(learn['n_epochs'], fold.exp.plans.epoch(fold.exp.train_idx))
        fold.exp.selection.finish(fold.exp.trainer)
    rounds.record(0, np.zeros(0, np.int64))
    accepted = np.zeros(0, np.int64)  # table rows self-verified so far
    rng = exp.rng.spawn(1)[0]
    labels = exp.table.label_idx.to_numpy()
    for r in range(1, learn['sv_rounds'] + 1):
        # Every fold judges its held-out unverified clips not accepted yet; the per-class
        # cap applies to the round as a whole.
        pending = [fastdev.cut_judged(exp.cfg, np.setdiff1d(fold.held_out, accepted))
                   for fold in folds]
        candidates = np.concatenate(pending)
        posteriors = np.concatenate([
            excerpt_posteriors(fold.exp, rows, learn['sv_excerpts'], rng)
            for fold, rows in zip(folds, pending) if rows.size] or [np.zeros((0, 1))])
        new = candidates[select(labels[candidates], posteriors, learn['sv_threshold'],
                                learn['sv_per_class'])] if candidates.size else candidates
        accepted = np.union1d(accepted, new)
        for fold in folds:
            fold.fine_tune(accepted, learn, r)
        rounds.record(r, new)
    exp.results.self_verified(rounds.records, rounds.chosen)
    exp.results.acted('self-verification', rounds.chosen > 0 and accepted.size > 0,
                      'no clip was accepted' if not accepted.size else
                      'round 0 (before any self-verified clip) is the evaluated one')
    logger.info('self-verification: round %d has the lowest mean validation loss (%.4f); '
                'its %d fold models are evaluated', rounds.chosen, rounds.best_loss, FOLDS)
    ensemble = evaluation.Ensemble(rounds.paths(rounds.chosen), FOLDS, 1,
                                   exp.cfg['recognizer']['ensemble'])
    exp.results.ensembled(ensemble.summary())
    return ensemble
