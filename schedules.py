"""The learning-rate schedules of section `learn` (learn.lr_schedule) and their callbacks:
the per-epoch rate (EpochLR) of cyclic cosine annealing with its snapshots and of the
linear decay of self-verification, and the check that a cyclic schedule's epochs make
whole cycles. ReduceLROnPlateau (plateau) is Keras's own.
"""
import keras
import numpy as np

from config import ConfigError


def staged_epochs(learn):
    """Epochs of staged training when learn.steps_per_epoch fixes them (else None)."""
    per_epoch = learn['steps_per_epoch']
    return None if per_epoch is None else sum(-(-n // per_epoch) for n in learn['staged_steps'])


def mode_epochs(learn, steps):
    """(the key that sets the mode's epochs, its epochs): learn.n_epochs, or for a mode
    that trains in steps the epochs of learn.staged_steps / steps_per_epoch (None when
    steps_per_epoch is null: an epoch is then one pass over a stage's pool)."""
    if steps:
        return 'learn.staged_steps / learn.steps_per_epoch', staged_epochs(learn)
    return 'learn.n_epochs', learn['n_epochs']


def check_schedule(cfg, steps=False):
    """cyclic_cosine: the mode's epochs must be whole cycles (each cycle ends in a
    snapshot), the snapshot cycles must exist, and lr_min must be below lr. linear: the
    decay starts before the last epoch. steps: the mode trains in optimizer steps (its Mode
    declares it), its epochs counted from learn.staged_steps and learn.steps_per_epoch."""
    learn = cfg['learn']
    if learn['lr_schedule'] == 'linear':
        check_linear(learn, steps)
    if learn['lr_schedule'] != 'cyclic_cosine':
        return
    chosen = cfg['recognizer']['snapshot_cycles']
    if chosen != 'all' and (not chosen or not all(
            isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= learn['cycles']
            for c in chosen)):
        raise ConfigError(f'recognizer.snapshot_cycles must be all or a list of cycles '
                          f'from 1 to learn.cycles ({learn["cycles"]}), got {chosen!r}')
    if learn['lr_min'] >= learn['lr']:
        raise ConfigError(f'learn.lr_min ({learn["lr_min"]}) must be below learn.lr '
                          f'({learn["lr"]}) for lr_schedule cyclic_cosine')
    cycled = learn['cycles'] * learn['cycle_epochs']
    key, epochs = mode_epochs(learn, steps)
    if epochs is None:
        raise ConfigError(f'learn.lr_schedule cyclic_cosine with learn.mode '
                          f'{learn["mode"]} needs learn.steps_per_epoch, so that the '
                          f'stages last whole cycles')
    if epochs != cycled:
        raise ConfigError(f'learn.lr_schedule cyclic_cosine trains learn.cycles x '
                          f'learn.cycle_epochs = {cycled} epochs; set {key} to {cycled} '
                          f'epochs (now {epochs})')


def cosine_lr(epoch, lr_max, lr_min, cycle_epochs):
    """Cyclic cosine annealing (Akiyama & Sato, DCASE 2019 Sec. 2.3, 3.5; the warm-restart
    schedule of Loshchilov & Hutter, "SGDR", ICLR 2017, with cycles of equal length): each
    cycle starts at lr_max and anneals towards lr_min along half a cosine; epoch is the
    0-based epoch counted across stages."""
    t = (epoch % cycle_epochs) / cycle_epochs
    return lr_min + 0.5 * (lr_max - lr_min) * (1.0 + np.cos(np.pi * t))


def check_linear(learn, steps):
    """linear: the rate decays from learn.lr_decay_start to 0 at the mode's last epoch,
    so the decay must start before it."""
    key, epochs = mode_epochs(learn, steps)
    if epochs is None:
        raise ConfigError(f'learn.lr_schedule linear with learn.mode {learn["mode"]} needs '
                          f'learn.steps_per_epoch, so that the last epoch is known')
    if learn['lr_decay_start'] >= epochs:
        raise ConfigError(f'learn.lr_decay_start = {learn["lr_decay_start"]} must be below '
                          f'the {epochs} epochs of {key} for learn.lr_schedule linear (the '
                          f'rate decays to 0 at the last epoch)')


def linear_lr(epoch, lr, decay_start, epochs):
    """learn.lr_schedule linear at the 0-based epoch (counted across stages): the rule of
    Dorfer & Widmer's released code (CPJKU/dcase_task2, lasagne_wrapper/
    learn_rate_shedules.get_linear, applied after each epoch numbered from 1): epochs 1 ..
    decay_start at lr, then lr / (epochs - decay_start) less after each epoch, so that
    1-based epoch e > decay_start trains at lr (1 - (e - decay_start) / (epochs -
    decay_start)) and the last epoch at 0 (round 0: 500 epochs from 1e-3, decay from 100)."""
    return linear_decay_lr(epoch + 1, lr, decay_start, epochs)


def linear_decay_lr(epoch, lr, decay_from, epochs):
    """lr up to epoch decay_from, then lr * (1 - (epoch - decay_from) / (epochs -
    decay_from)), 0 at epoch `epochs` and after, counting epochs as the caller does
    (self_verify passes the released code's 1-based numbers, so its last epoch gets 0)."""
    if epoch < decay_from:
        return lr
    return lr * max(0.0, 1.0 - (epoch - decay_from) / max(1, epochs - decay_from))


class EpochLR(keras.callbacks.Callback):
    """Sets the optimizer's learning rate to schedule(epoch) at the start of each epoch.

    It must come before History in the callback list, so that history.csv logs the rate
    the epoch was trained with.
    """

    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule

    def on_epoch_begin(self, epoch, logs=None):
        self.model.optimizer.learning_rate = float(self.schedule(epoch))


class Snapshots(keras.callbacks.Callback):
    """Calls save(cycle) at the end of each of the first `cycles` cycles (1-based cycle
    numbers), the weights of Snapshot Ensembles (Huang et al., "Snapshot Ensembles: Train
    1, get M for free", ICLR 2017)."""

    def __init__(self, cycle_epochs, cycles, save):
        super().__init__()
        self.cycle_epochs, self.cycles, self.save = cycle_epochs, cycles, save

    def on_epoch_end(self, epoch, logs=None):
        cycle, within = divmod(epoch + 1, self.cycle_epochs)
        if within == 0 and 1 <= cycle <= self.cycles:
            self.save(cycle)
