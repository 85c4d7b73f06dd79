"""K-fold training and snapshot ensembles (learn.folds, learn.lr_schedule cyclic_cosine,
recognizer.ensemble, recognizer.snapshot_cycles).

Akiyama & Sato, DCASE 2019, Sec. 2.3: "K-fold CV averaging" averages the test predictions of
the K fold models; "Snapshot Ensembles" average the weights saved at each cycle's end of a
cyclic cosine schedule; both together average every fold's snapshots. Each fold model is
trained by the configured learning mode on the other K - 1 folds and validated on its own,
so its predictions on its own fold are out-of-fold (oof.csv).
"""
import logging

import numpy as np
import pandas as pd

import eval as evaluation
import runfolder
from utils import atomic_write_csv

logger = logging.getLogger(__name__)


def snapshot_cycles(cfg):
    """The cycles whose snapshots are averaged: recognizer.snapshot_cycles, 'all' = every
    cycle; a single snapshot (the selected model) when the schedule has no cycles."""
    if cfg['learn']['lr_schedule'] != 'cyclic_cosine':
        return None
    chosen = cfg['recognizer']['snapshot_cycles']
    return list(range(1, cfg['learn']['cycles'] + 1)) if chosen == 'all' else sorted(set(chosen))


def member_paths(exp):
    """The saved models of one fold: its snapshots, or its selected model."""
    cycles = snapshot_cycles(exp.cfg)
    return [exp.selection.path] if cycles is None else [exp.snapshot_path(c) for c in cycles]


def write_oof(exp, rows, scores):
    """oof.csv: fname, given label, per-class scores of each training clip, predicted by
    the fold model(s) that did not train on it (the columns of predictions.csv)."""
    frame = pd.DataFrame(scores, columns=exp.classes)
    frame.insert(0, 'label', exp.table.label.to_numpy()[rows])
    frame.insert(0, 'fname', exp.table.fname.to_numpy()[rows])
    atomic_write_csv(runfolder.path(exp.run_dir, 'oof'), frame, index=False,
                     float_format='%.6g')


def run_folds(exp, mode, finish):
    """Train every fold with `mode` and `finish` it (model selection); return the Ensemble
    of all folds' members. exp is the first fold's Experiment (prepare() made it); the
    others share its data and scaler."""
    cfg, splits = exp.cfg, exp.splits
    method = cfg['recognizer']['ensemble']
    paths, oof_rows, oof_scores, per_fold = [], [], [], []
    for fold, (train_rows, val_rows) in enumerate(splits, 1):
        fold_exp = exp if fold == 1 else exp.for_fold(fold)
        if len(splits) > 1:
            logger.info('fold %d of %d: %d training clips, %d validation clips', fold,
                        len(splits), train_rows.size, val_rows.size)
        mode(fold_exp)
        finish(fold_exp)
        members = member_paths(fold_exp)
        paths += members
        if len(splits) > 1:
            fold_ensemble = evaluation.Ensemble(members, 1, len(members), method)
            rows, scores = evaluation.predict(fold_ensemble, exp.source, exp.patches,
                                              val_rows, cfg)
            oof_rows.append(rows)
            oof_scores.append(scores)
            per_fold.append({**fold_exp.results.to_json(), 'fold': fold})
    if len(splits) > 1:
        write_oof(exp, np.concatenate(oof_rows), np.concatenate(oof_scores))
        # The mode's figures (model selection, noise detection, ...) per fold.
        exp.results.fold_results(per_fold)
    ensemble = evaluation.Ensemble(paths, len(splits), len(paths) // len(splits), method)
    exp.results.ensembled(ensemble.summary())
    logger.info('%s', evaluation.ensemble_line(ensemble.summary()))
    return ensemble
