"""Train/validation split and k folds of the training clips (learn.val_split, learn.folds,
and the 4 folds of learn.mode self_verify).

Every split depends only on its seed, so repeats with the same ctrl.seed validate on the
same clips, and a sweep over seeds also varies the split.
"""
import logging
import warnings

import numpy as np

from config import ConfigError

logger = logging.getLogger(__name__)


def split_train_val(rows, labels, val_split, seed):
    """Stratified split of clip rows: round(val_split * n_c) clips of each class go to val.

    A class keeps at least one training clip. The split depends only on the seed.
    labels: one class per clip (strata() of multi-label targets).

    Why not scikit-learn's train_test_split(stratify=...): it refuses a class with a
    single clip and rounds the validation share over all classes at once, so it cannot
    keep "round(val_split * n_c) per class, at least one clip left to train", which small
    classes of FSDnoisy18k's noisy subset need.
    """
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels):
        members = rows[labels == c]
        n_val = min(int(round(val_split * members.size)), members.size - 1)
        val.extend(rng.choice(members, size=n_val, replace=False).tolist())
    val = np.sort(np.asarray(val, dtype=np.int64))
    return np.setdiff1d(rows, val), val


def kfold_split(rows, y, k, seed, what='learn.folds'):
    """K stratified folds of clip rows, shuffled with the seed -> [(train_rows, val_rows)]
    for fold 1..K; fold f validates on the f-th part.

    y: one class per clip ([N], sklearn's StratifiedKFold), or multi-hot targets ([N, K]
    of a multi-label dataset): iterative stratification (Sechidis, Tsoumakas & Vlahavas,
    "On the stratification of multi-label data", ECML PKDD 2011) through the
    iterative-stratification package's MultilabelStratifiedKFold, which keeps each label's
    share in every fold, co-occurring labels included.
    """
    from sklearn.model_selection import StratifiedKFold
    rows, y = np.asarray(rows), np.asarray(y)
    if rows.size < k:
        raise ConfigError(f'{what} = {k} folds need at least {k} training clips, got '
                          f'{rows.size}')
    if y.ndim == 2:
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
        folds = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    else:
        folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    # A class with fewer clips than folds is spread over as many folds as it has clips
    # (sklearn warns; the other classes are unaffected).
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        parts = [rows[val] for _, val in folds.split(rows, y)]
    return [(np.sort(np.setdiff1d(rows, val)), np.sort(val)) for val in parts]


def fold_split(rows, y, verified, k, subset, seed):
    """learn.folds K > 1 -> [(train_rows, val_rows)] of fold 1..K (kfold_split). subset
    (learn.fold_subset) 'all': the folds split every training row; 'verified' (Akiyama &
    Sato's released code, which splits the curated clips into 5 folds and trains every
    fold on all noisy clips): they split the verified rows only, each fold validates on
    verified clips alone and trains on its other verified rows and every unverified row.
    verified [rows] bool. A subset of one kind has nothing to keep apart: all rows verified
    give the same folds either way; with no verified row the folds split every row, and
    the log says so."""
    if subset == 'all' or verified.all():
        return kfold_split(rows, y, k, seed)
    if not verified.any():
        logger.info('learn.fold_subset verified: the training subset has no verified clip; '
                    'the %d folds split all %d training clips', k, rows.size)
        return kfold_split(rows, y, k, seed)
    folds = kfold_split(rows[verified], y[verified], k, seed,
                        'learn.folds (of the verified clips: learn.fold_subset verified)')
    logger.info('learn.fold_subset verified: %d folds of the %d verified training clips, '
                'each fold also training on all %d unverified clips', k, verified.sum(),
                (~verified).sum())
    return [(np.union1d(train, rows[~verified]), val) for train, val in folds]


def strata(y):
    """The class each clip is stratified by in split_train_val, from [N, K] multi-hot
    targets: its only label (single-label), or its rarest label among these clips
    (multi-label), so that every class, rare ones included, keeps training clips.

    Why not an iterative stratification here as in kfold_split: it keeps label
    proportions but not the guarantee that every class keeps a training clip, which a
    15 % hold-out of rare classes needs.
    """
    counts = y.sum(axis=0)
    return np.argmin(np.where(y > 0, counts, np.inf), axis=1)


# learn.mode self_verify (Dorfer & Widmer, DCASE 2018 task 2): 4 folds.
SELF_VERIFY_FOLDS = 4


def self_verify_folds(table, rows, seed):
    """The 4 folds' (training rows, validation rows) of learn.mode self_verify: verified
    and unverified clips are each split into 4 folds stratified by the given label; fold f
    validates on its verified part and trains on the other folds' verified and unverified
    parts, so that it never trains on the unverified clips it judges."""
    verified = table.verified.to_numpy()[rows] == 1
    if verified.all() or not verified.any():
        raise ConfigError('learn.mode self_verify needs verified and unverified training '
                          'clips (FSDnoisy18k: ctrl.train_data all)')
    labels = table.label_idx.to_numpy()
    split = [kfold_split(part, labels[part], SELF_VERIFY_FOLDS, seed, 'learn.mode self_verify')
             for part in (rows[verified], rows[~verified])]
    return [(np.union1d(ver_train, unv_train), ver_val)
            for (ver_train, ver_val), (unv_train, _) in zip(*split)]
