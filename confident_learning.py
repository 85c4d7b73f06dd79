"""Confident Learning (learn.mode confident_learning): Northcutt, Jiang & Chuang, "Confident
Learning: Estimating Uncertainty in Dataset Labels", JAIR 2021, through the cleanlab
package's cleanlab.filter.find_label_issues.

The training clips of the split are cut into learn.cl_folds stratified folds
(splits.kfold_split, as learn.folds cuts them); fold f's model trains learn.n_epochs epochs on
the other folds, validated on fold f, and scores fold f's clips: out-of-fold scores of every
training clip, which no model that scored a clip has trained on (oof.csv). cleanlab
estimates the joint distribution of given and true labels from those scores (the confident
joint) and flags the clips whose given label it finds to be an error (learn.cl_filter_by,
multi_label=True on multi-label data). Only unverified clips are ever flagged: a flagged
verified clip is kept as it is. The flagged clips are then dropped from training, or
relabelled with their out-of-fold argmax (learn.cl_action), and the final model trains
learn.n_epochs epochs on the result with the configured loss, head and schedule, validated on
the split's validation clips as any other run.

Resume: each fold's out-of-fold scores are written to cl_oof_<fold>.npz once its model has
trained, so an interrupted run trains only the folds it had not finished; the decision
(flagged clips, new labels) is kept in the backup, so a run stopped in the final training
continues it from its last epoch without scoring the folds again.
"""
import logging

import numpy as np

import datasets
import ensemble
import eval as evaluation
import experiment
import runfolder
import splits
from config import ConfigError
from utils import atomic_path, atomic_write_csv

logger = logging.getLogger(__name__)

# cleanlab.filter.find_label_issues's filter_by methods (cleanlab 2.x), learn.cl_filter_by.
FILTER_BY = ('prune_by_noise_rate', 'prune_by_class', 'both', 'confident_learning',
             'predicted_neq_given', 'low_normalized_margin', 'low_self_confidence')
# Multi-label relabelling: the classes whose out-of-fold score reaches this (else the argmax).
RELABEL_THRESHOLD = 0.5


def check(cfg):
    """What the mode's declaration cannot say: it makes its own folds, relabelling trains
    the final model apart from the run's first Experiment (whose snapshots a cyclic
    schedule's ensemble would read), and it needs cleanlab."""
    learn = cfg['learn']
    if learn['folds'] > 1:
        raise ConfigError(f'learn.mode confident_learning makes its own learn.cl_folds = '
                          f'{learn["cl_folds"]} folds of the training clips: keep learn.folds 1, '
                          f'not {learn["folds"]}')
    if learn['cl_action'] == 'relabel' and learn['lr_schedule'] == 'cyclic_cosine':
        raise ConfigError('learn.cl_action relabel trains with learn.lr_schedule plateau or '
                          'constant, not cyclic_cosine (learn.cl_action drop works with it)')
    try:
        import cleanlab.filter  # noqa: F401
    except ImportError:
        raise ConfigError('learn.mode confident_learning needs the cleanlab package: pip '
                          'install -r requirements.txt') from None


def find_issues(labels, scores, filter_by, multi_label):
    """Bool [n]: cleanlab's label issues among n clips with given labels (class indices
    [n], or lists of class indices for multi-label data) and out-of-fold scores [n, K].

    Single-label scores are renormalised to sum to 1 per clip (cleanlab reads them as the
    posterior of one class; a sigmoid head's do not sum to 1); multi-label scores are
    per-class probabilities as they are. n_jobs=1: one process, the same flags every run.
    """
    from cleanlab.filter import find_label_issues
    scores = np.asarray(scores, np.float64)
    if multi_label:
        labels = [list(map(int, ids)) for ids in labels]
    else:
        labels = np.asarray(labels, np.int64)
        scores = scores / np.maximum(scores.sum(axis=1, keepdims=True), 1e-12)
    return np.asarray(find_label_issues(labels, scores, filter_by=filter_by,
                                        multi_label=multi_label, n_jobs=1), bool)


def new_labels(scores, multi_label):
    """The labels a relabelled clip gets from its out-of-fold scores [n, K]: the argmax, or
    on multi-label data every class scored >= RELABEL_THRESHOLD (the argmax if none is)
    -> a tuple of class indices per clip."""
    scores = np.asarray(scores)
    top = scores.argmax(axis=1)
    if not multi_label:
        return [(int(k),) for k in top]
    return [tuple(np.flatnonzero(s >= RELABEL_THRESHOLD).tolist()) or (int(k),)
            for s, k in zip(scores, top)]


def relabelled(table, classes, rows, labels):
    """A copy of the table whose clips `rows` have the given label tuples (sorted, as the
    datasets give them); true labels, verification and subsets unchanged."""
    table = table.copy()
    ids, names = table['labels_idx'].tolist(), table['labels'].tolist()
    for row, label in zip(rows, labels):
        label = tuple(sorted(label))
        ids[row] = label
        names[row] = tuple(sorted(classes[k] for k in label))
    table['labels_idx'], table['labels'] = ids, names
    table['label_idx'] = [i[0] for i in ids]
    table['label'] = [','.join(n) for n in names]
    return table


def fold_scores(exp, folds, f, rng):
    """Out-of-fold clip scores of fold f (1-based) -> (rows, scores [rows, K]): read back
    from cl_oof_<f>.npz if an earlier attempt of this run finished the fold, else from a
    new model trained on the other folds (its history_<f>.csv, model_<f>.keras)."""
    path = runfolder.path(exp.run_dir, 'cl_scores', f)
    val_rows = folds[f - 1][1]
    if path.exists():
        with np.load(path) as saved:
            if np.array_equal(saved['rows'], val_rows):
                logger.info('confident learning: fold %d of %d read back from %s', f,
                            len(folds), path.name)
                return saved['rows'], saved['scores']
    trainer = experiment.build_trainer(exp.cfg, exp.mode, exp.table, exp.classes, exp.source)
    fold = experiment.Experiment(exp.cfg, exp.mode, exp.table, exp.classes, exp.store,
                                 exp.patches, exp.source, trainer, exp.run_dir, rng, folds, f)
    logger.info('confident learning: fold %d of %d, %d training clips, %d scored', f,
                len(folds), fold.train_rows.size, val_rows.size)
    fold.fit(exp.cfg['learn']['n_epochs'], fold.plans.epoch(fold.train_idx))
    fold.selection.finish(fold.trainer)
    rows, scores = evaluation.predict_clips(fold.trainer.classifier, exp.source, exp.patches,
                                            val_rows, exp.cfg)
    with atomic_path(path) as tmp, open(tmp, 'wb') as out:
        np.savez(out, rows=rows, scores=scores)
    return rows, scores


def decide(exp, rngs):
    """Train the folds, score every training clip out of fold, ask cleanlab -> the decision:
    {'rows': training rows [n], 'flagged': bool [n] (unverified clips only), 'labels':
    relabelled label tuples of every row, 'n_flagged_verified': flags left on verified
    clips}."""
    learn = exp.cfg['learn']
    rows = exp.train_rows
    multi = datasets.is_multi_label(exp.table)
    y = datasets.targets(exp.table, len(exp.classes))[rows]
    folds = splits.kfold_split(rows, y if multi else exp.table.label_idx.to_numpy()[rows],
                               learn['cl_folds'], exp.cfg['ctrl']['seed'], 'learn.cl_folds')
    parts = [fold_scores(exp, folds, f, rng) for f, rng in enumerate(rngs, 1)]
    scored = np.concatenate([r for r, _ in parts])
    order = np.argsort(scored)
    scored, scores = scored[order], np.concatenate([s for _, s in parts])[order]
    ensemble.write_oof(exp, scored, scores)
    given = exp.table.labels_idx.to_numpy()[scored] if multi else \
        exp.table.label_idx.to_numpy()[scored]
    issues = find_issues(given, scores, learn['cl_filter_by'], multi)
    unverified = exp.table.verified.to_numpy()[scored] == 0
    return {'rows': scored, 'flagged': issues & unverified, 'labels': new_labels(scores, multi),
            'n_flagged_verified': int((issues & ~unverified).sum())}


def record(exp, decision):
    """Log and record the decision: results.json confident_learning and, with known true
    labels, noise_detection over the training clips (as mode 3's pruning)."""
    learn = exp.cfg['learn']
    rows, flagged = decision['rows'], decision['flagged']
    changed = [tuple(sorted(new)) != tuple(old) for new, old in
               zip(decision['labels'], exp.table.labels_idx.to_numpy()[rows])]
    summary = {'folds': learn['cl_folds'], 'filter_by': learn['cl_filter_by'],
               'action': learn['cl_action'], 'n_scored': int(rows.size),
               'n_flagged': int(flagged.sum()),
               'n_flagged_verified_kept': decision['n_flagged_verified']}
    if learn['cl_action'] == 'drop':
        summary['n_dropped'] = int(flagged.sum())
    else:
        summary['n_relabelled'] = int((flagged & np.asarray(changed, bool)).sum())
    exp.results.label_issues(summary)
    changes = summary.get('n_dropped', summary.get('n_relabelled'))
    exp.results.acted('confident learning', changes > 0,
                      f'no training clip {"dropped" if "n_dropped" in summary else "relabelled"}')
    if not (exp.table.verified.to_numpy()[rows] == 0).any():
        logger.warning('confident learning: no unverified training clip, so none is flagged '
                       '(only unverified clips may be; ctrl.train_data)')
    logger.info('confident learning (cleanlab %s, %d folds): %d of %d training clips flagged '
                '(%d flags on verified clips ignored); %s', learn['cl_filter_by'],
                learn['cl_folds'], summary['n_flagged'], rows.size,
                summary['n_flagged_verified_kept'],
                f'{summary["n_dropped"]} dropped' if 'n_dropped' in summary
                else f'{summary["n_relabelled"]} relabelled with their out-of-fold argmax')
    exp.record_detection('confident learning', rows, flagged)
    write_flagged(exp, rows[flagged], [k for k, f in zip(decision['labels'], flagged) if f])


def write_flagged(exp, rows, labels):
    """cl_flagged.csv: fname, given label, verified, the out-of-fold label(s) that
    relabelling gives, and the true label where known, of every flagged clip."""
    columns = ['fname', 'label', 'verified'] + (['true_label'] if exp.has_truth else [])
    frame = exp.table.loc[rows, columns].copy()
    frame.insert(2, 'oof_label', [','.join(sorted(exp.classes[k] for k in label))
                                  for label in labels])
    atomic_write_csv(runfolder.path(exp.run_dir, 'cl_flagged'), frame, index=False)


def mode_confident_learning(exp):
    """learn.mode confident_learning -> None (the main Experiment's selected model, after
    dropping) or the final classifier (relabelling: trained in an Experiment over the
    relabelled table)."""
    learn = exp.cfg['learn']
    # Drawn first, on every attempt, so that a resumed run's later draws are the same.
    rngs = exp.rng.spawn(learn['cl_folds'])
    decision = exp.once('confident_learning', lambda: decide(exp, rngs))
    rows, flagged = decision['rows'], decision['flagged']
    if learn['cl_action'] == 'drop':
        record(exp, decision)
        exp.fit(learn['n_epochs'], exp.plans.epoch(exp.patches.of_clips(rows[~flagged])))
        return None
    final = relabelled_experiment(exp, rows[flagged],
                                  [label for label, f in zip(decision['labels'], flagged) if f])
    final.once('confident_learning', lambda: decision)  # into the backup the final run saves
    record(exp, decision)  # against the given labels (exp.table), into the shared results
    final.fit(learn['n_epochs'], final.plans.epoch(final.train_idx))
    final.selection.finish(final.trainer)
    exp.results.selected(learn['model_selection'], final.state.evaluated_epoch)
    return final.trainer.classifier


def relabelled_experiment(exp, rows, labels):
    """The Experiment of the final model on the table with the flagged clips relabelled:
    its own batch source (whose targets are the new labels) and trainer, the same split,
    files and backup as the run's, and the run's results object."""
    table = relabelled(exp.table, exp.classes, rows, labels)
    cfg = exp.cfg
    source = experiment.batch_source(cfg, table, exp.classes, exp.store, exp.patches,
                                     exp.train_rows, exp.splits, exp.run_dir)
    trainer = experiment.build_trainer(cfg, exp.mode, table, exp.classes, source)
    final = experiment.Experiment(cfg, exp.mode, table, exp.classes, exp.store, exp.patches,
                                  source, trainer, exp.run_dir, exp.rng, exp.splits)
    final.results = exp.results  # one results object: main.py reports the run's
    return final
