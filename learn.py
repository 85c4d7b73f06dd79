"""Learning modes by number or name (config key `learn.mode`).

A mode is a short function of the Experiment (experiment.py) that calls exp.fit(...) once
per stage and says where the method changes training (model selection restarts, noise
detection). Its entry in MODES declares what it needs (a Mode: masker, noise detection,
folds, the losses and schedules it accepts, multitask); the checks and prepare() read the
declaration. run() runs the configured one and returns the predictor.
"""
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

import datasets
import confident_learning
import ensemble
import eval as evaluation
import losses
import optimizers
import sampling
import self_verify
import splits
import warmstart
from config import ConfigError, lookup
from schedules import check_schedule

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- modes

def mode_warmup_mixup(exp):
    """Mode 0: mixup_warmup_epochs without mixup, then mixup (Fonseca et al., Sec. 2.2).

    Same model and optimiser throughout; epochs are counted continuously; early stopping
    only in the second stage; model selection from the first mixup epoch on.
    """
    learn = exp.cfg['learn']
    warm = min(learn['mixup_warmup_epochs'], learn['n_epochs'])
    logger.info('mode 0: %d warm-up epochs without mixup, then mixup=%s', warm,
                learn['mixup'])
    exp.fit(warm, exp.plans.epoch(exp.train_idx, mixup=False), early_stopping=False)
    if learn['mixup']:
        exp.mark('mixup starts')
    exp.selection.restart()
    exp.fit(learn['n_epochs'] - exp.epoch, exp.plans.epoch(exp.train_idx))
    if learn['mixup']:
        exp.results.acted('mixup', exp.epoch > warm, f'training ended at epoch {exp.epoch}, '
                          f'before mixup starts (epoch {warm + 1})')


def mode_standard(exp):
    """Mode 1: standard training with LSR / mixup / loss as configured."""
    exp.fit(exp.cfg['learn']['n_epochs'], exp.plans.epoch(exp.train_idx))


def mode_time_dependent(exp):
    """Mode 2: time-dependent loss (Fonseca et al., Sec. 2.3). The loss itself switches at
    learn.stage1_epoch (an epoch variable set by its callback) and drops the examples of
    each batch above its threshold from then on; model selection from then on too."""
    switch = exp.cfg['learn']['stage1_epoch'] + 1  # 1-based
    logger.info('mode 2: %s, switching to stage 2 at epoch %d', exp.cfg['loss']['type'],
                switch)
    exp.selection.restart(from_epoch=switch)
    exp.mark('time-dependent switch', done=switch - 1)
    exp.watch_noise()
    exp.fit(exp.cfg['learn']['n_epochs'], exp.plans.epoch(exp.train_idx))
    exp.record_epoch_detection()
    exp.results.acted('time-dependent loss', exp.epoch >= switch, f'training ended at epoch '
                      f'{exp.epoch}, before the switch to stage 2 (epoch {switch})')


def score_clips(exp, rows):
    """Per-clip loss of the current model on the given table rows (given labels, no LSR):
    per-patch loss learn.prune_loss_type, aggregated with prune_aggregate_loss_clip."""
    learn = exp.cfg['learn']
    per_example = losses.per_example_by_name(learn['prune_loss_type'],
                                             learn['prune_loss_q_value'],
                                             exp.cfg['loss']['lq_target'])
    source, classifier = exp.source, exp.trainer.classifier

    def patch_loss(i):
        x, y = source.eval_batch(i)
        return per_example(y, classifier(x, training=False)['scores'])
    idx = exp.patches.of_clips(rows)
    values = evaluation.map_with_progress(patch_loss, idx, evaluation.eval_batch_size(exp.cfg),
                                          'pruning: scoring the training clips')
    return evaluation.aggregate(values, exp.patches.clip[idx],
                                learn['prune_aggregate_loss_clip'])


def prune_by_rank(clip_loss, percentile):
    """The clips mode 3 prunes -> (bool [N], the smallest pruned loss or None).

    The original code (waspaa19 main.py) keeps the clips with loss <= np.percentile(loss,
    p) and prunes those strictly above: without ties that is the top n = N - 1 -
    floor(p / 100 * (N - 1)) clips (np.percentile's linear interpolation lies between
    order statistics floor and floor + 1). A bounded loss ties many clips (Lq with q 0.5
    saturates at 1/q = 2), and then nothing may lie strictly above the percentile, which
    would make pruning a no-op; so exactly those n clips of largest loss are pruned by
    rank, ties broken by a stable sort (the later table rows of a tie go first).
    """
    clip_loss = np.asarray(clip_loss, np.float64)
    n = clip_loss.size
    n_pruned = n - 1 - int(np.floor(percentile / 100 * (n - 1))) if n else 0
    order = np.argsort(clip_loss, kind='stable')
    pruned = np.zeros(n, bool)
    pruned[order[n - n_pruned:]] = True
    return pruned, (float(clip_loss[order[n - n_pruned]]) if n_pruned else None)


def mode_prune(exp):
    """Mode 3: train prune_stage1 epochs, drop the training clips with the largest loss
    (prune_by_rank), continue the same model and optimiser on the kept clips (Fonseca et
    al., Sec. 2.4). The scaler stays the one fitted before pruning."""
    learn = exp.cfg['learn']
    exp.fit(min(learn['prune_stage1'], learn['n_epochs']), exp.plans.epoch(exp.train_idx),
            early_stopping=False)
    rows, clip_loss = exp.once('prune_clip_loss', lambda: score_clips(exp, exp.train_rows))
    pruned, lowest = prune_by_rank(clip_loss, learn['prune_discard_percentile'])
    logger.info('pruning: %d of %d training clips kept, %d pruned (the largest clip losses, '
                'by rank above the %gth percentile%s)', (~pruned).sum(), rows.size,
                pruned.sum(), learn['prune_discard_percentile'],
                '' if lowest is None else f'; clip loss >= {lowest:.4f}')
    exp.write_pruned(rows[pruned], clip_loss[pruned])
    exp.record_detection('pruning', rows, pruned)
    if pruned.any():
        exp.mark('pruning')
    exp.selection.restart()  # the evaluated model is one trained on the pruned set
    kept = exp.patches.of_clips(rows[~pruned])
    pruned_at = exp.epoch
    exp.fit(learn['n_epochs'] - exp.epoch, exp.plans.epoch(kept))
    exp.results.acted('pruning', pruned.any() and exp.epoch > pruned_at,
                      'no clip pruned' if not pruned.any() else
                      f'training ended at epoch {exp.epoch}, before any epoch on the pruned '
                      f'set')


def mode_staged(exp):
    """Staged training (He et al., DCASE 2019), in optimizer steps (learn.staged_steps, the
    paper's 10k / 10k / 5k): stage 1 verified clips only; stage 2 half verified, half
    unverified per batch with loss masking of the unverified half; stage 3 verified only
    (fine-tune). Validation, the LR schedule and history rows every learn.steps_per_epoch
    steps; no early stopping; model selection restarts at each stage."""
    learn = exp.cfg['learn']
    ver, unv = sampling.verified_pools(exp.train_idx, exp.plans.verified, 'learn.mode staged')
    n1, n2, n3 = learn['staged_steps']
    logger.info('staged: %d steps verified (%d patches), %d steps masked half/half with %d '
                'unverified patches (%s), %d steps verified', n1, ver.size, n2, unv.size,
                learn['mask_method'], n3)
    exp.fit(None, exp.plans.epoch(ver), early_stopping=False, steps=n1)
    exp.mark('stage 2: masking')
    exp.set_masking(True)
    exp.selection.restart()
    exp.watch_noise()
    exp.fit(None, exp.plans.halves(ver, unv), early_stopping=False, steps=n2)
    masked = exp.figures_since_watch('masked')
    exp.results.acted('loss masking', any(m is not None and m > 0 for m in masked),
                      'no example masked in stage 2' if masked else 'stage 2 trained no step')
    exp.record_epoch_detection()
    exp.set_masking(False)
    exp.mark('stage 3: fine-tune')
    exp.selection.restart()  # the evaluated model is the fine-tuned one
    exp.fit(None, exp.plans.epoch(ver), early_stopping=False, steps=n3)


@dataclass(frozen=True)
class Mode:
    """A learning mode and what it needs, read by the checks below and by prepare().

    run: the mode, run(exp) -> a predictor, or None for the selected model. loss: the
    attribute (losses.StepLoss) its loss.type must have, e.g. 'time_dependent'. masker:
    it trains with the staged loss masker (masking.Masker). detects: it drops or masks
    examples in the step, so the step counts them (noise detection). folds, split: the
    number of folds it makes and the function making them, (table, rows, seed) ->
    [(training rows, validation rows)] (then learn.folds must stay 1). schedules: the
    learn.lr_schedule values it accepts. multitask: learn.multitask may be on. steps: it
    trains in optimizer steps (learn.staged_steps, learn.steps_per_epoch), not epochs.
    scores_clips: it ranks clips by learn.prune_loss_type, which must fit learn.head.
    verified_stages: it trains whole batches of the verified training patches and batches
    half verified, half unverified (the pools learn.batch_size must fit).
    single_label: why it refuses multi-label datasets (None: it does not).
    first_stage: the learn key giving the epochs of its first stage, counted within
    learn.n_epochs; stage_epochs: learn keys that each give the epochs of another stage
    (both read by fastdev.fast_dev_config, which cuts every stage to 2 epochs);
    scorings: learn keys counting how often it scores each clip (cut to 2 too).
    check: its own check of the config, (cfg) -> None or a ConfigError, for what these
    fields cannot say.
    """
    run: Callable
    loss: Optional[str] = None
    masker: bool = False
    detects: bool = False
    folds: int = 0
    split: Optional[Callable] = None
    schedules: tuple = ('plateau', 'constant', 'cyclic_cosine', 'linear')
    multitask: bool = False
    steps: bool = False
    scores_clips: bool = False
    verified_stages: bool = False
    single_label: Optional[str] = None
    first_stage: Optional[str] = None
    stage_epochs: tuple = ()
    scorings: tuple = ()
    check: Optional[Callable] = None


MODES = {
    0: Mode(mode_warmup_mixup, multitask=True, first_stage='mixup_warmup_epochs'),
    1: Mode(mode_standard, multitask=True),
    2: Mode(mode_time_dependent, loss='time_dependent', detects=True,
            first_stage='stage1_epoch'),
    3: Mode(mode_prune, multitask=True, scores_clips=True, first_stage='prune_stage1'),
    'staged': Mode(mode_staged, masker=True, detects=True, steps=True, verified_stages=True),
    'self_verify': Mode(self_verify.mode_self_verify, folds=self_verify.FOLDS,
                        split=splits.self_verify_folds,
                        schedules=('plateau', 'constant', 'linear'),
                        single_label='verifies one given label per clip (Dorfer & Widmer, '
                                     'single-label)', stage_epochs=('sv_epochs',),
                        scorings=('sv_excerpts',)),
    'confident_learning': Mode(confident_learning.mode_confident_learning,
                               check=confident_learning.check),
}


def either(names):
    """'a, b or c': the names a message offers."""
    names = [str(n) for n in names]
    return names[0] if len(names) == 1 else f'{", ".join(names[:-1])} or {names[-1]}'


def check(cfg):
    """Refuse an unknown mode, or a setting the mode's declaration refuses, before any
    heavy work."""
    learn = cfg['learn']
    name = learn['mode']
    mode = lookup(MODES, name, 'learn.mode')
    check_loss(cfg)
    lookup(optimizers.OPTIMIZERS, learn['optim'], 'learn.optim')
    warmstart.check(cfg)
    check_schedule(cfg, mode.steps)
    if (mode.folds and learn['folds'] > 1) or learn['lr_schedule'] not in mode.schedules:
        own = (f'makes its own {mode.folds} folds and fine-tunes with its own schedule: keep '
               f'learn.folds 1 and ' if mode.folds else 'trains with its own schedule: keep ')
        raise ConfigError(f'learn.mode {name} {own}learn.lr_schedule '
                          f'{either(mode.schedules)}')
    if mode.single_label and datasets.multi_label(cfg):
        raise ConfigError(f'learn.mode {name} {mode.single_label}; {cfg["ctrl"]["dataset"]} '
                          f'is multi-label')
    check_multitask(cfg)
    if mode.check is not None:
        mode.check(cfg)


def check_loss(cfg):
    """The losses the mode declares it needs: a loss.type with its `loss` attribute (mode
    2: time-dependent), and, where it ranks clips, a learn.prune_loss_type that can score
    learn.head's outputs."""
    learn, loss_type = cfg['learn'], cfg['loss']['type']
    name = learn['mode']
    mode = lookup(MODES, name, 'learn.mode')
    if mode.loss and not getattr(lookup(losses.LOSSES, loss_type, 'loss.type'), mode.loss):
        fitting = [n for n, loss in losses.LOSSES.items() if getattr(loss, mode.loss)]
        raise ConfigError(f'learn.mode {name} needs a {mode.loss.replace("_", "-")} '
                          f'loss.type ({", ".join(fitting)}), got {loss_type!r}')
    prune, head = learn['prune_loss_type'], learn['head']
    if mode.scores_clips and head not in losses.LOSSES[prune].heads:
        raise ConfigError(f'learn.prune_loss_type {prune!r} (learn.mode {name} scores the '
                          f'clips with it) does not work with learn.head {head!r}; heads it '
                          f'supports: {", ".join(losses.LOSSES[prune].heads)}')


# Training subsets that hold verified and unverified clips, as both multitask heads need.
MIXED_SUBSETS = ('all', 'noisy_small_clean')


def check_multitask(cfg):
    """learn.multitask trains each head on its own clips in every step, so it needs a subset
    with both kinds, a loss that is a plain per-example loss (not per_batch: the
    time-dependent and adaptive losses decide per batch what to keep or which q to use,
    over examples that here belong to two heads), and a mode that declares it can
    (not one with its own treatment of the unverified clips: mode 2, staged,
    self_verify). Pseudo labels are learned beside the multitask loss only."""
    learn, loss_type = cfg['learn'], cfg['loss']['type']
    if learn['pseudo_labels'] is not None and not learn['multitask']:
        raise ConfigError('learn.pseudo_labels is learned by the verified head of '
                          'learn.multitask: set learn.multitask true')
    if learn['pseudo_labels'] is not None and not Path(learn['pseudo_labels']).is_file():
        raise ConfigError(f'learn.pseudo_labels: no file {learn["pseudo_labels"]}')
    if not learn['multitask']:
        return
    if not MODES[learn['mode']].multitask:
        raise ConfigError(f'learn.multitask works with learn.mode '
                          f'{either(n for n, m in MODES.items() if m.multitask)}, not '
                          f'{learn["mode"]!r} (its own treatment of the unverified clips)')
    if losses.LOSSES[loss_type].per_batch:
        raise ConfigError(f'learn.multitask works with loss.type '
                          f'{either(n for n, c in losses.LOSSES.items() if not c.per_batch)}, '
                          f'not {loss_type!r}')
    if cfg['ctrl']['train_data'] not in MIXED_SUBSETS:
        raise ConfigError(f'learn.multitask needs verified and unverified training clips: '
                          f'ctrl.train_data {" or ".join(MIXED_SUBSETS)}, not '
                          f'{cfg["ctrl"]["train_data"]!r}')


def finish(exp):
    """Put the selected weights (learn.model_selection) into the classifier; results.json
    names the rule and the epoch evaluated, or, where the run's members are snapshots
    (lr_schedule cyclic_cosine) rather than the selected weights, their cycles."""
    exp.selection.finish(exp.trainer)
    if exp.cfg['learn']['pseudo_labels'] is not None:
        n = int((exp.table.verified.to_numpy()[exp.train_rows] == 0).sum())
        weight = exp.cfg['loss']['pseudo_weight']
        exp.results.acted('pseudo labels', n > 0 and weight > 0 and exp.epoch > 0,
                          f'{n} unverified training clips, loss.pseudo_weight {weight:g}, '
                          f'{exp.epoch} epochs')
    cycles = ensemble.snapshot_cycles(exp.cfg)
    if cycles is None:
        exp.results.selected(exp.cfg['learn']['model_selection'], exp.state.evaluated_epoch)
    else:
        exp.results.snapshots(cycles)


def run(exp):
    """Run the configured mode -> the predictor: the classifier with the selected weights,
    or an evaluation.Ensemble (k folds, snapshots, or a mode that returns one)."""
    t0 = time.time()
    learn = exp.cfg['learn']
    mode = MODES[learn['mode']].run
    if learn['folds'] > 1 or learn['lr_schedule'] == 'cyclic_cosine':
        predictor = ensemble.run_folds(exp, mode, finish)
    else:
        predictor = mode(exp)
        if predictor is None:
            finish(exp)
            predictor = exp.trainer.classifier
    if isinstance(predictor, evaluation.Ensemble):
        logger.info('training done in %.1f s', time.time() - t0)
    else:
        logger.info('training done in %.1f s (%d epochs)', time.time() - t0, exp.epoch)
    return predictor
