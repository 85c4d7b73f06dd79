"""Every config key once: its default, one-line doc, type, and choices or range.

KEYS mirrors the YAML sections: KEYS[section][key] is a Key, or a Group for a key whose
value is a mapping of sub-keys (ctrl.inject_noise, learn.specaugment, ...), each sub-key a
Key of its own. config.py validates every value against its Key; tests/test_config.py
checks that config/params.yaml shows every key with its default and its doc as the
comment, and that README's key table is the one keytable.py generates from KEYS
(`python keytable.py --readme` writes it between the markers in README.md). The names of a
registry (models, losses, modes, heads, aggregations, ensembles, metrics) are not listed
here: their modules check them against the registry itself (config.lookup), so that such
a list never goes stale.
"""
import copy
from dataclasses import dataclass


@dataclass(frozen=True)
class Key:
    """One config key.

    type: the type of its values (None: the default's type); choices: the only values
    allowed; at_least / above and at_most / below: the inclusive / exclusive bounds of a
    number; nullable: null is accepted too (a key whose default is null names the type of
    its other values in type); also: a second type accepted as it is, besides the
    default's (learn.mode: a name such as 'staged' besides a mode number).
    """
    default: object
    doc: str
    type: type = None
    choices: tuple = ()
    at_least: float = None
    above: float = None
    at_most: float = None
    below: float = None
    nullable: bool = False
    also: type = None

    def __post_init__(self):
        if self.type is None:
            object.__setattr__(self, 'type', type(self.default))


@dataclass(frozen=True)
class Group:
    """A key whose value is a mapping of sub-keys (set whole or one sub-key at a time)."""
    doc: str
    keys: dict

    @property
    def default(self):
        return {name: key.default for name, key in self.keys.items()}


# FSDnoisy18k classes whose labels are noisier (Fonseca et al., WASPAA 2019, Sec. 4.1):
# they get eps + delta in noise-dependent label smoothing (LSRmode GROUPS2).
FSDNOISY18K_NOISIER = ['Bass_guitar', 'Clapping', 'Crash_cymbal', 'Engine', 'Fire', 'Rain',
                       'Slam', 'Walk_or_footsteps', 'Wind']

KEYS = {
    'ctrl': {
        'feat_ext': Key(
            True, 'compute log-mel features if not cached (false: the cache must exist)'),
        'learn': Key(True, 'train and evaluate (false: stop after feature extraction)'),
        'dataset': Key(
            'fsdnoisy18k', 'dataset layout of ctrl.dataset_path: fsdnoisy18k, fsdkaggle2018, '
            'fsdkaggle2019, fsd50k, arca23k, csv (any audio folder with a table: ctrl.csv)'),
        'train_data': Key(
            'noisy', 'training subset: noisy | clean | noisy_small | noisy_small_clean | all '
            '(fsdkaggle2018: noisy | clean | all; fsdkaggle2019: curated | noisy | all; fsd50k: '
            'all; arca23k: noisy (ARCA23K) | clean (ARCA23K-FSD) | all; csv: verified | '
            'unverified | all)',
            choices=('noisy', 'clean', 'noisy_small', 'noisy_small_clean', 'all', 'curated',
                     'verified', 'unverified')),
        'n_noisy': Key(
            None, 'clips drawn from the unverified part of train_data, stratified by class, '
            'before the val split (null: all; Deng et al.)', at_least=0, nullable=True, type=int),
        'n_clean': Key(
            None, 'clips drawn from the verified part of train_data, stratified by class, '
            'before the val split (null: all; Deng et al.)', at_least=0, nullable=True, type=int),
        'dataset_path': Key(
            'data/FSDnoisy18k', 'folder holding FSDnoisy18k.audio_train/, .audio_test/, .meta/'),
        'classes': Key(
            None, 'class vocabulary: every label of the CSVs must be one of these names (null: '
            'none; rare near-duplicate labels are refused)', nullable=True, type=list),
        'test_fold': Key(
            None, 'csv: test on official fold K of the fold column and train on the others '
            '(null: the split column, or ctrl.csv.test)', nullable=True, type=int, at_least=1),
        'csv': Group('ctrl.dataset csv: the table(s) and their column names', {
            'table': Key(None, 'one CSV of every clip, with a split (train / val / test) or fold '
                         'column; relative to ctrl.dataset_path', nullable=True, type=str),
            'train': Key(None, 'or: the CSV of the training clips (with test)', nullable=True,
                         type=str),
            'test': Key(None, 'or: the CSV of the test clips (with train)', nullable=True,
                        type=str),
            'audio_dir': Key(None, 'folder the fname paths are relative to, under '
                             'ctrl.dataset_path (null: the CSV\'s own folder)', nullable=True,
                             type=str),
            'fname': Key('fname', 'column of the audio file paths'),
            'labels': Key('labels', 'column of the labels (several joined by separator)'),
            'separator': Key(',', 'what joins the labels of a multi-label clip'),
            'multi_label': Key(None, 'null: multi-label if a clip has several labels; true / '
                               'false: forced (false refuses a cell of several)', nullable=True,
                               type=bool),
            'verified': Key('verified', 'optional 0/1 column (missing: every clip verified)'),
            'fold': Key('fold', 'optional column of the official folds (ctrl.test_fold)'),
            'split': Key('split', 'column of train / val / test in ctrl.csv.table (val: the '
                         "dataset's own validation clips)"),
            'true_labels': Key('true_labels', 'optional column of the true labels (turns on the '
                               'noise-detection figures)'),
        }),
        'fsd50k_path': Key(
            None, 'arca23k: folder holding FSD50K.dev_audio/ and FSD50K.eval_audio/ (null: '
            'ctrl.dataset_path)', nullable=True, type=str),
        'seed': Key(
            42, 'seed of the split, batch order, mixup draws and weight init (0 .. 2**32-1)',
            at_least=0, at_most=2**32 - 1),  # numpy's SeedSequence takes no negatives
        'run_name': Key(
            None, 'null: <config stem>_<YYYYmmdd-HHMMSS>_<pid>-<8 random hex>; logs go to '
            'logs/<run_name>.out', nullable=True, type=str),
        'features_dir': Key(
            'features', 'feature cache root: features/<dataset>/<hash of parameters and clips>/'),
        'logs_dir': Key('logs', 'where <run_name>.out and the <run_name>/ artefact folder go'),
        'workers': Key(0, 'processes for feature extraction (0: every CPU core)', at_least=0),
        'verbose': Key(
            2, 'Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch',
            at_least=0, at_most=2),
        'inject_noise': Group('controlled label noise: round(rate x n) of the n clips of '
                              'subset get a wrong label', {
            'rate': Key(0.0, "share of the subset relabelled (open_set: of its held-out classes' "
                        'clips; 0: none)', at_least=0, at_most=1),
            'kind': Key('symmetric', 'symmetric (any other class), pairflip (the next class '
                        'of one seeded permutation) or open_set (clips of held-out classes)',
                        choices=('symmetric', 'pairflip', 'open_set')),
            'held_out': Key(None, 'open_set: classes held out of the vocabulary (null: drawn, '
                            'held_out_share of them)', nullable=True, type=list),
            'held_out_share': Key(0.2, 'open_set: share of the classes drawn as held out when '
                                  'held_out is null', above=0, below=1),
            'seed': Key(0, 'seed of the draw, apart from ctrl.seed (the same noisy labels for '
                        'every ctrl.seed)', at_least=0),
            'subset': Key('unverified', 'clips that may be relabelled: unverified, verified or '
                          'all', choices=('unverified', 'verified', 'all')),
        }),
        'tensorboard': Key(
            True, 'TensorBoard scalars of every history.csv figure in logs/<run>/tb/'),
        'overwrite': Key(False, 'true: a run_name that has finished is cleared and run afresh '
                         '(false: refused)'),
        'fast_dev_run': Key(
            False, 'dry run of the whole procedure: 2 steps per epoch, at most 2 epochs per '
            'stage, 8 clips per class (whole-clip recipes: 4, smaller inputs, batches of 2); '
            'numbers are not results'),
    },
    'extract': {
        'audio_len_s': Key(
            2, 'varup / zeropad: clips shorter than this are replicated / zero-padded up to it '
            '(seconds)', at_least=0),
        'eps': Key(
            2.220446049250313e-16, 'added to the signal before the STFT and inside log10',
            above=0),
        'fmax': Key(22050, 'highest mel filter frequency (Hz)', above=0),
        'fmin': Key(0, 'lowest mel filter frequency (Hz)', at_least=0),
        'fs': Key(44100, 'sampling rate; other rates are resampled to it', at_least=1),
        'hop_length_samples': Key(882, 'STFT hop (20 ms at 44.1 kHz)', at_least=1),
        'load_mode': Key(
            'varup', 'varup: replicate short clips to audio_len_s; zeropad: pad them with zeros '
            'to it (Akiyama & Sato); full: keep length', choices=('varup', 'zeropad', 'full')),
        'log': Key(True, 'log10 of the mel energies'),
        'mono': Key(True, 'mix multichannel audio to mono'),
        'n_fft': Key(2048, 'FFT size', at_least=1),
        'n_mels': Key(96, 'mel bands', at_least=1),
        'normalize_audio': Key(True, 'remove DC and peak-normalise with a head room of 0.005'),
        'patch_hop': Key(50, 'frames between consecutive patches of a clip', at_least=1),
        'patch_len': Key(100, 'frames per patch (2 s)', at_least=1),
        'spectrogram_type': Key(
            'power', 'power (|X|^2) or magnitude (|X|)', choices=('power', 'magnitude')),
        'win_length_samples': Key(
            1764, 'STFT window length in samples (40 ms at 44.1 kHz)', at_least=1),
        'window': Key(
            'hamming', 'STFT window, periodic: hamming (waspaa19), hann (the DCASE systems), '
            'blackman, bartlett, boxcar', choices=('hamming', 'hann', 'blackman', 'bartlett',
                                                   'boxcar')),
        'store_dtype': Key(
            'float32', 'dtype of the cached frames: float32 or float16 (half the memory)',
            choices=('float32', 'float16')),
        'trim_silence': Key(
            False, 'drop the silent start and end of each clip before anything else'),
        'trim_top_db': Key(
            60.0, "trim_silence: a frame is silent when its RMS is this many dB below the clip's "
            'loudest frame', above=0),
        'crop': Key(
            'patches', 'patches (fixed patches, scores aggregated per clip) or random_crop '
            '(random crops, whole clips predicted)', choices=('patches', 'random_crop')),
        'crop_frames': Key(
            512, 'random_crop: frames per training crop (He et al.: 512)', at_least=1),
        'clip_frames': Key(
            2000, 'random_crop: every clip fixed to this many frames, repeated if short, cut if '
            'long (He et al.: 2000)', at_least=1),
        'normalize': Key(
            'dataset', 'standardisation: dataset (per-band mean/std of the training set, '
            'scaler.npz) or per_clip (each input by its own mean/std; Akiyama & Sato)',
            choices=('dataset', 'per_clip')),
        'features': Key(
            'logmel', 'model input: logmel (log-mel frames) or waveform (the samples at fs, '
            'in [-1, 1]; Akiyama & Sato\'s EnvNet-v2)', choices=('logmel', 'waveform')),
        'crop_samples': Key(
            133300, 'waveform: samples per training crop (Akiyama & Sato: 66,650 / 133,300 / '
            '200,000 at 44.1 kHz)', at_least=1),
    },
    'learn': {
        'batch_size': Key(64, 'patches per training step', at_least=1),
        'lr': Key(
            0.001, 'learning rate of learn.optim (plateau: halved on val-accuracy plateaus of 5 '
            'epochs)', above=0),
        'n_classes': Key(
            None, 'must equal the number of classes in the training data (null: taken from the '
            'data)', at_least=2, nullable=True, type=int),
        'n_epochs': Key(100, 'total epochs, counted across stages', at_least=1),
        'optim': Key('Adam', 'optimiser: Adam, or SGD (learn.momentum, learn.nesterov)'),
        'momentum': Key(
            0.9, 'SGD: momentum (0.9, the released EnvNet training)', at_least=0, below=1),
        'nesterov': Key(True, 'SGD: Nesterov momentum (true, the released EnvNet training)'),
        'init_from': Key(
            None, 'weights to start from: a .keras file or an earlier run folder logs/<run> '
            '(fold k from its model_k.keras); the trunk must match, heads where shapes match',
            nullable=True, type=str),
        'patience': Key(
            15, 'early stopping patience on validation accuracy (epochs; min_delta 0.001; null: '
            'no early stopping)', at_least=1, nullable=True),
        'val_split': Key(
            0.15, 'share of the training subset held out for validation, per class',
            at_least=0, below=1),
        'LSR': Key(False, 'label smoothing regularisation of the training targets'),
        'eps_LSR_noisy': Key(0.15, 'smoothing epsilon', at_least=0, at_most=1),
        'LSRmode': Key(
            'GROUPS2', 'STANDARD: eps for all; GROUPS2: noisier classes eps+delta, others '
            'eps-delta', choices=('STANDARD', 'GROUPS2')),
        'delta_eps_LSR': Key(
            0.05, 'delta of noise-dependent smoothing (GROUPS2)', at_least=0, at_most=1),
        'noisier_classes': Key(FSDNOISY18K_NOISIER, 'GROUPS2 eps+delta classes'),
        'mixup': Key(True, 'mixup of training batches'),
        'mixup_alpha': Key(0.1, 'mixup weights lambda ~ Beta(alpha, alpha)', above=0),
        'mixup_mode': Key(
            'intra', 'intra: mix a batch with a shuffled copy; inter: with the next batch',
            choices=('intra', 'inter')),
        'mixup_p': Key(
            1.0, 'probability that a training example is mixed (1: every example; Akiyama & '
            "Sato's released code: 0.5, per example)", at_least=0, at_most=1),
        'augment_domain': Key(
            'log', 'mixup, gain and masks act on: log (the stored frames, each member '
            'standardised first) or power (mel energies; dB and per-clip standardisation after '
            'all augmentations, Akiyama & Sato)', choices=('log', 'power')),
        'mixup_warmup_epochs': Key(
            10, 'mode 0: epochs without mixup before mixup starts', at_least=0),
        'mode': Key(
            0, '0 mixup warm-up, 1 standard, 2 time-dependent loss, 3 pruning, staged, '
            'self_verify, confident_learning', also=str),
        'model': Key(
            'baseline', 'baseline (3-conv CNN), DenSE, cnn_gru, vgg_gap, resnet34 (log-mel) or '
            'envnet_v2 (waveforms)'),
        'stage1_epoch': Key(
            20, "mode 2: epoch at which the loss switches to stage 2 (20, the original code's "
            'config)', at_least=0),
        'prune_stage1': Key(20, 'mode 3: epochs before pruning the training set', at_least=0),
        'prune_loss_type': Key(
            'lq_loss', 'mode 3: per-patch loss that scores clips: lq_loss or CCE',
            choices=('lq_loss', 'CCE')),
        'prune_loss_q_value': Key(
            0.5, "mode 3: q of that Lq loss (0.5, the q of the original code's config)",
            above=0, at_most=1),
        'prune_aggregate_loss_clip': Key(
            'amean', 'mode 3: patch losses -> clip loss: amean, gmean or max',
            choices=('amean', 'gmean', 'max')),
        'prune_loss_threshold_method': Key(
            'percentile', 'mode 3: how the pruning threshold is set', choices=('percentile',)),
        'prune_discard_percentile': Key(
            97.75, 'mode 3: the clips ranked above this loss percentile are pruned (by rank); '
            'grid {99.25, 98.5, 97.75, 97, 96.25}', at_least=0, at_most=100),
        'densenet_modules': Key(3, 'DenSE: number of DenseNet+SE modules', at_least=1, at_most=8),
        'staged_steps': Key(
            [10000, 10000, 5000], 'staged: optimizer steps of stage 1 (verified), 2 (masked '
            'half/half), 3 (verified), He et al.'),
        'mask_method': Key(
            'threshold', 'staged: threshold (updatable eta) or topk (k largest losses)',
            choices=('threshold', 'topk')),
        'mask_top_k': Key(
            10, 'staged: k of the k-th largest batch loss (for batch 64)', at_least=1),
        'mask_alpha': Key(
            0.9, 'staged: eta_t = alpha eta_(t-1) + (1 - alpha) T_t', at_least=0, at_most=1),
        'jit_compile': Key(
            'auto', 'XLA-compile the training step: auto (on GPU only), true, false',
            choices=('auto', True, False), also=bool),
        'mixed_precision': Key(False, 'float16 compute on GPU (float32 variables and losses)'),
        'predict_batch_size': Key(
            1024, 'patches per call when predicting or scoring clips (random_crop: this many '
            "crops' worth of whole-clip frames)", at_least=1),
        'frames_on_device': Key(
            'auto', 'auto: frames in GPU memory when they fit; always; never (host)',
            choices=('auto', 'always', 'never')),
        'model_selection': Key(
            'last', 'weights evaluated: last (last epoch trained, the original), best_val (best '
            'val accuracy since the method acted) or best_val_loss (lowest val loss, likewise)',
            choices=('last', 'best_val', 'best_val_loss')),
        'steps_per_epoch': Key(
            None, 'staged: steps between validations/LR schedule/history rows (null: one pass '
            "over the stage's pool)", at_least=1, nullable=True, type=int),
        'specaugment': Group('SpecAugment on training inputs (Park et al.)', {
            'freq_masks': Key(0, 'frequency masks per example (0: off)', at_least=0),
            'freq_width': Key(0, 'widest frequency mask (mel bands; each width ~ U{0..widest})',
                              at_least=0),
            'time_masks': Key(0, 'time masks per example (0: off)', at_least=0),
            'time_width': Key(0, 'widest time mask (frames; each width ~ U{0..widest})',
                              at_least=0),
            'time_warp': Key(0, 'time warp W: a frame p in (W, T - 1 - W) moved by w ~ '
                             'U{-W..W} frames, linear in between (0: off)', at_least=0),
        }),
        'bn_momentum': Key(
            0.99, "momentum of every batch normalisation's moving statistics (Keras: 0.99; "
            'Lasagne alpha 0.1 = 0.9)', at_least=0, below=1),
        'bn_epsilon': Key(
            0.001, 'epsilon of every batch normalisation (Keras: 1e-3; Lasagne: 1e-4)', above=0),
        'time_pooling': Key(
            'max', 'cnn_gru: pooling over time after the GRU: max or mean',
            choices=('max', 'mean')),
        'head': Key(
            'softmax', 'output layer(s): softmax, sigmoid, sparsemax, sigmoid_softmax, '
            'sigmoid_sparsemax (non-softmax heads: loss.type bce)'),
        'lr_schedule': Key(
            'plateau', 'plateau (halve on val plateaus), constant, cyclic_cosine (snapshot per '
            'cycle), linear (to 0 at the last epoch from lr_decay_start)',
            choices=('plateau', 'constant', 'cyclic_cosine', 'linear')),
        'cycles': Key(
            8, 'cyclic_cosine: cycles (n_epochs must equal cycles x cycle_epochs)', at_least=1),
        'cycle_epochs': Key(64, 'cyclic_cosine: epochs per cycle', at_least=1),
        'lr_min': Key(1e-06, "cyclic_cosine: rate at each cycle's end (starts at lr)", at_least=0),
        'lr_decay_start': Key(
            100, 'linear: last epoch at lr (1-based); then lr/(n_epochs - it) less per epoch, 0 '
            'at the last (Dorfer & Widmer: 100 of 500)', at_least=0),
        'folds': Key(
            1, '1: one train/val split; K > 1: K stratified folds, K models averaged', at_least=1),
        'fold_subset': Key(
            'verified', 'learn.folds > 1: verified (the folds split the verified clips, every '
            'fold trains on all unverified ones; Akiyama & Sato) or all (every training clip)',
            choices=('verified', 'all')),
        'sv_excerpts': Key(
            25, 'self_verify: random excerpts per judged clip (training input length)',
            at_least=1),
        'sv_threshold': Key(
            0.95, 'self_verify: min mean posterior of the given label (null: released code, none)',
            at_least=0, below=1, nullable=True),
        'sv_per_class': Key(
            40, 'self_verify: max clips accepted per class per round (highest posterior first)',
            at_least=1),
        'sv_epochs': Key(30, 'self_verify: fine-tuning epochs per round', at_least=1),
        'sv_lr': Key(
            0.0002, 'self_verify: fine-tuning rate (constant 5 epochs, then linearly to 0)',
            above=0),
        'sv_rounds': Key(
            10, 'self_verify: verification + fine-tuning rounds after round 0', at_least=1),
        'cl_folds': Key(
            4, 'confident_learning: folds of the training clips, each scored by a model trained '
            'on the others', at_least=2),
        'cl_filter_by': Key(
            'prune_by_noise_rate', "confident_learning: cleanlab's find_label_issues filter_by",
            choices=('prune_by_noise_rate', 'prune_by_class', 'both', 'confident_learning',
                     'predicted_neq_given', 'low_normalized_margin', 'low_self_confidence')),
        'cl_action': Key(
            'drop', 'confident_learning: flagged unverified clips are dropped, or relabelled '
            'with their out-of-fold argmax', choices=('drop', 'relabel')),
        'multitask': Key(
            False, "Akiyama & Sato: two FC heads (verified / unverified clips), each example's "
            'loss from its own head; predicts with the verified head (ctrl.train_data all)'),
        'pseudo_labels': Key(
            None, 'multitask: predictions CSV (fname + class columns) of an earlier run over the '
            'unverified clips -> soft pseudo labels learned by the verified head',
            nullable=True, type=str),
        'multitask_batches': Key(
            'paper', 'multitask: paper (per step batch_size verified + batch_size unverified [+ '
            'batch_size pseudo-label stream], an epoch one pass over the verified clips) or split '
            '(batch_size halved, an epoch one pass over the unverified clips)',
            choices=('paper', 'split')),
        'freq_mask': Group('Akiyama & Sato: with probability p one frequency mask of '
                           'min..max_width bands', {
            'p': Key(0.0, 'probability per training example (paper: 0.5)', at_least=0, at_most=1),
            'min_width': Key(8, 'narrowest mask (mel bands)', at_least=0),
            'max_width': Key(32, 'widest mask (mel bands)', at_least=0),
        }),
        'gain': Group('Akiyama & Sato: with probability p the signal scaled by U(low, high) '
                      'before the log', {
            'p': Key(0.0, 'probability per mixup member (paper: 0.5)', at_least=0, at_most=1),
            'low': Key(0.8, 'smallest gain', above=0),
            'high': Key(1.2, 'largest gain', above=0),
        }),
        'extra_crop': Group('Akiyama & Sato: with probability p only min..max_frac of the '
                            'crop kept, the rest zero-padded', {
            'p': Key(0.0, 'probability per training example (paper: 0.5)', at_least=0, at_most=1),
            'min_frac': Key(0.25, 'shortest share of the crop kept', above=0, at_most=1),
            'max_frac': Key(1.0, 'longest share of the crop kept', above=0, at_most=1),
        }),
        'wave_scale': Group('waveform: with probability p the clip resampled (stretched) by '
                            'max^U(-1, 1), nearest sample, before the crop', {
            'p': Key(0.0, 'probability per mixup member (released code: 1)', at_least=0,
                     at_most=1),
            'max': Key(1.25, 'largest factor; the smallest is 1/max (paper: 0.8 - 1.25)',
                       at_least=1),
        }),
        'wave_gain': Group('waveform: with probability p the (mixed) crop multiplied by '
                           '10^(U(-db, db) / 20)', {
            'p': Key(0.0, 'probability per training example (released code: 1)', at_least=0,
                     at_most=1),
            'db': Key(6.0, 'largest gain in dB (paper: 6, factors 0.501 - 2.0)', at_least=0),
        }),
    },
    'loss': {
        'q_loss': Key(
            0.5, "q of the Lq loss and of stage 1 of mode 2 (0.5, the original code's config)",
            above=0, at_most=1),
        'q_loss2': Key(
            0.5, "mode 2: q after learn.stage1_epoch (0.5, the original code's config)",
            above=0, at_most=1),
        'm_loss2': Key(
            0.93, 'mode 2, lqmax: discard losses above m_loss2 x the batch maximum (0.93, the '
            "original code's config)", above=0, at_most=1),
        'perc_loss2': Key(
            93.0, 'mode 2, lqperc: discard losses above this batch percentile; grid {99.0, 96.0, '
            '93.0}', at_least=0, at_most=100),
        'type': Key(
            'lq_loss', 'CCE, lq_loss, lq_lqmax_time_sudden, lq_lqperc_time_sudden, adaptive_lq '
            "(softmax head); bce (each other head's own losses)"),
        'snn_temperature': Key(
            1000.0, 'adaptive_lq: temperature T of the soft nearest neighbour ratio', above=0),
        'q_min': Key(0.01, 'adaptive_lq: lower bound of the batch q', above=0, at_most=1),
        'snn_space': Key(
            'input', 'adaptive_lq: input (standardised patches) or embedding',
            choices=('input', 'embedding')),
        'lq_target': Key(
            'max', 'Lq of soft targets: max ((1 - max_k(y_k p_k)^q)/q, the original) or dot '
            '(sum_k y_k p_k)', choices=('max', 'dot')),
        'multitask_weights': Key(
            [1.0, 1.0], 'learn.multitask: loss weights [verified head, unverified head]'),
        'sharpen_T': Key(
            2.0, 'learn.pseudo_labels: sharpening temperature, p_k^T normalised to sum 1 (T > 1 '
            "sharpens; the paper's code)", above=0),
        'pseudo_weight': Key(
            20.0, 'learn.pseudo_labels: weight of the MSE between the verified head and the soft '
            'pseudo labels', at_least=0),
    },
    'recognizer': {
        'aggregate': Key('gmean', 'patch scores -> clip score: gmean, amean (or max)'),
        'metrics': Key(
            None, 'report metrics: accuracy, lwlrap, map3, map, auc, dprime, prf1, confusion '
            "(null: the dataset's default)", nullable=True, type=list),
        'ensemble': Key('amean', "k folds / snapshots: members' clip scores -> amean or gmean"),
        'snapshot_cycles': Key(
            'all', 'cyclic_cosine: cycles whose snapshots are averaged (all or a list)',
            also=list),
        'length_tolerance': Key(
            None, 'random_crop / waveform: score each whole clip at full length, clips within '
            "this length ratio batched together, zero-padded (Akiyama & Sato's patience rate; "
            '0: exact; null: fixed to clip_frames)', type=float, nullable=True, at_least=0),
        'tta_pad': Key(
            None, 'random_crop / waveform: padding TTA, one view per entry with that many frames '
            '(or, with a decimal point, that ratio of the length) of silence on both sides, '
            'averaged (null: none)', type=list, nullable=True),
    },
    'suffix': {
        'in': Key('_mel', 'suffix of the cached feature file names'),
        'out': Key('_label', 'suffix of the cached label file names'),
    },
}


# The keys of one input kind (extract.features): a value other than its default on a run
# of the other kind is refused (config.check_feature_kind), since it would do nothing.
FEATURE_KEYS = {
    'logmel': ('extract.n_mels', 'extract.n_fft', 'extract.window', 'extract.fmin',
               'extract.fmax', 'extract.log', 'extract.spectrogram_type', 'extract.eps',
               'extract.patch_len', 'extract.patch_hop', 'extract.crop', 'extract.crop_frames',
               'extract.clip_frames', 'extract.normalize', 'learn.specaugment',
               'learn.freq_mask', 'learn.gain', 'learn.extra_crop', 'learn.augment_domain'),
    'waveform': ('extract.crop_samples', 'learn.wave_scale', 'learn.wave_gain'),
}


def defaults():
    """A fresh nested dict of every default (its lists are not shared with KEYS)."""
    return {section: {name: copy.deepcopy(key.default) for name, key in keys.items()}
            for section, keys in KEYS.items()}
