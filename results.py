"""The results of a run: one object that the learning modes write and eval.py reports.

`Results` holds what results.json says about a run: the injected label noise, the noise
detection of the modes that drop or mask examples, which model was evaluated (one model's
selection rule and epoch, or an ensemble of folds and snapshots), the self-verification
rounds, each fold's own results and, once eval.report has measured the test clips, the
`Evaluation`. Modes reach it as `exp.results`; the resume backup keeps its state_dict().
"""
import copy
import logging
from dataclasses import dataclass, field, fields

import numpy as np

import metrics

logger = logging.getLogger(__name__)

@dataclass
class Evaluation:
    """What eval.report measured on the test clips."""
    run_name: str
    metrics: list      # names of the reported metrics (recognizer.metrics), report order
    figures: dict      # overall figures of the computed metrics, {key: float}, in order
    per_class: dict    # {figure: array [K]} merged over the computed metrics
    classes: list
    n_evaluated: int   # test clips that were read and scored
    n_listed: int      # test clips in the dataset's list
    train_data: str    # ctrl.train_data
    wall_time: float   # seconds since the run started
    confusion: np.ndarray = None  # [K, K] when recognizer.metrics has confusion

    @property
    def where(self):
        """What a metric line was measured on, as every evaluation line ends."""
        return (f'{self.n_evaluated}/{self.n_listed} test files, '
                f'train_data={self.train_data}')

    def to_json(self):
        """The head of results.json: name, status, the overall figures (accuracy_micro
        first, rounded to 4 places, the others to 6), counts, per-class figures, time."""
        head = {k: round(float(v), 6) for k, v in self.figures.items()}
        if 'accuracy_micro' in head:
            head = {'accuracy_micro': round(head.pop('accuracy_micro'), 4), **head}
        return {'run_name': self.run_name, 'status': 'finished', **head,
                'n_files_evaluated': self.n_evaluated, 'n_files_listed': self.n_listed,
                'train_data': self.train_data,
                'per_class': metrics.per_class_dict(self.per_class, self.classes),
                'wall_time_s': round(self.wall_time, 2)}


@dataclass
class Results:
    """A run's results; None is "not measured" and is left out of results.json. Fields
    appear in results.json in this order, after the Evaluation's head."""
    code_version: dict = None       # utils.code_version(): commit, dirty, packages
    fast_dev_run: bool = None       # ctrl.fast_dev_run: a dry run, its numbers no results
    model: str = None               # learn.model
    loss: str = None                # loss.type (curves.png names it)
    n_trainable_params: int = None  # of that model as built (with its heads)
    label_noise: dict = None        # ctrl.inject_noise: rate, kind, subset, share_changed
    n_noisy: int = None             # ctrl.n_noisy / n_clean: the unverified and verified
    n_clean: int = None             # training clips drawn (subsets.py), when either is set
    # noise detection of the dropped / masked examples: precision, recall, n_flagged,
    # n_wrong (one decision), or those as lists over the epochs, with 'epoch'
    noise_detection: dict = None
    self_verification: list = None  # one record per self-verification round
    self_verification_round: int = None  # the round whose fold models are evaluated
    # learn.mode confident_learning: folds, filter_by, action, n_scored, n_flagged,
    # n_flagged_verified_kept, n_dropped or n_relabelled
    confident_learning: dict = None
    folds: list = None              # each fold's own results (to_json()) with its 'fold'
    # whether the configured method (pruning, masking, the time-dependent switch,
    # self-verification, pseudo labels, Confident Learning) changed training: false with
    # the reasons in method_inaction; None where the run has no such method
    method_acted: bool = None
    method_inaction: list = None
    # what is evaluated: learn.model_selection and its epoch (one model), 'snapshots'
    # and their cycles (one fold's members), or 'ensemble' (see `ensemble`)
    model_selection: str = None
    evaluated_epoch: int = None
    snapshot_cycles: list = None
    ensemble: dict = None           # eval.Ensemble.summary(): members and how averaged
    # predict.py --runs: the runs averaged ({run, weight, features, model, n_models} each)
    # and the rule (amean or gmean)
    fusion: dict = None
    evaluation: Evaluation = field(default=None, repr=False)

    def code_ran(self, version):
        """The code that produced the run (utils.code_version())."""
        self.code_version = version

    # -- the model
    def built(self, model, n_trainable_params, loss=None):
        """learn.model, its number of trainable parameters and loss.type."""
        self.model, self.n_trainable_params = model, int(n_trainable_params)
        self.loss = loss

    def subset_drawn(self, drawn):
        """The counts of ctrl.n_noisy / n_clean's draw ({} when neither is set)."""
        self.n_noisy, self.n_clean = drawn.get('n_noisy'), drawn.get('n_clean')

    # -- what the modes record
    def noise_detected(self, figures):
        """One drop decision's precision / recall (e.g. the pruned clips of mode 3)."""
        self.noise_detection = dict(figures)

    def noise_detected_per_epoch(self, epochs, figures):
        """Per-epoch precision / recall: {figure: [per epoch]} and the epochs."""
        self.noise_detection = {key: [f[key] for f in figures]
                                for key in ('precision', 'recall', 'n_flagged', 'n_wrong')}
        self.noise_detection['epoch'] = list(epochs)

    def self_verified(self, rounds, chosen):
        self.self_verification, self.self_verification_round = rounds, chosen

    def acted(self, method, did, why=''):
        """Whether `method` changed training; a run with several methods acted only if each
        did. A method that changed nothing is logged as a warning and named, with why,
        under method_inaction (a sweep flags such runs)."""
        self.method_acted = bool(did) and self.method_acted is not False
        if not did:
            self.method_inaction = [*(self.method_inaction or []), f'{method}: {why}']
            logger.warning('the method did nothing: %s: %s', method, why)

    def label_issues(self, summary):
        """What Confident Learning flagged and did with the flagged clips."""
        self.confident_learning = dict(summary)

    # -- what is evaluated: one model, one fold's snapshots, or an ensemble
    def selected(self, rule, epoch):
        """One model: the learn.model_selection rule and the epoch it chose."""
        self.model_selection, self.evaluated_epoch = rule, epoch

    def snapshots(self, cycles):
        """The members are the snapshots of these cycles, not the selected weights."""
        self.model_selection, self.snapshot_cycles = 'snapshots', list(cycles)

    def fold_results(self, per_fold):
        """k folds: each fold's results (fold 1's included) live under `folds`; what stays
        at the top is what the folds share (the injected label noise)."""
        self.folds = [{k: v for k, v in f.items() if k != 'fast_dev_run'} for f in per_fold]
        # The method acted if it did in every fold; the reasons of the folds it did not.
        acted = [f['method_acted'] for f in self.folds if 'method_acted' in f]
        self.method_acted = all(acted) if acted else None
        self.method_inaction = [f'fold {f["fold"]}: {why}' for f in self.folds
                                for why in f.get('method_inaction', [])] or None
        self.noise_detection = self.model_selection = None
        self.evaluated_epoch = self.snapshot_cycles = None

    def ensembled(self, summary):
        """What is evaluated is an ensemble (its summary names the members), not one
        model's selected epoch."""
        self.model_selection, self.evaluated_epoch, self.ensemble = 'ensemble', None, summary

    def averaged(self, summary):
        """What is evaluated is the weighted average of several runs (predict.py --runs)."""
        self.model_selection, self.fusion = 'model averaging', summary

    # -- the test clips
    def evaluated(self, evaluation):
        self.evaluation = evaluation

    # -- files
    def to_json(self):
        """results.json's content: the Evaluation's head (once evaluated), then every
        measured field of the run."""
        out = self.evaluation.to_json() if self.evaluation is not None else {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != 'evaluation' and value is not None:
                out[f.name] = value
        return out

    def state_dict(self):
        """The run-level fields (a backup is taken during training, before any
        evaluation), as plain copies."""
        return copy.deepcopy({k: v for k, v in self.to_json().items()
                              if k in self._run_fields()})

    def load_state_dict(self, state):
        """Put back a state_dict(); fields it does not name are unmeasured."""
        for name in self._run_fields():
            setattr(self, name, copy.deepcopy(state.get(name)))

    @classmethod
    def _run_fields(cls):
        """The fields a backup carries over: not the evaluation, and not the code version,
        which is that of the process that continues (and finishes) a resumed run."""
        return [f.name for f in fields(cls) if f.name not in ('evaluation', 'code_version')]
