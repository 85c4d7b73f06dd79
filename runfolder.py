"""The run folder logs/<run>/ and its log logs/<run>.out: file names, lock, refusal, clean start.

A run holds an exclusive lock (fcntl.flock on logs/<run>/.lock) while it lives; the
operating system releases it when the process ends in any way, kill -9 included, so a
killed run never leaves a stale lock behind. A finished run (results.json written, with
"status" "finished", "diverged" or "collapsed") is never modified: running its name again is refused
unless ctrl.overwrite is true, which clears it and starts afresh. An unfinished run of the
same name and config is continued (resumed) instead. The folder and the .out are created
only when the run starts; an error found before training removes what this run created.
"""
import fcntl
import json
import shutil
from pathlib import Path

import yaml

import config
from config import ConfigError
from utils import atomic_write_json, atomic_write_text, start_log

# What a run folder holds, by the name the code asks for. {tag} is '' for a run of one
# split and _<fold> for fold <fold> of k-fold training; snapshots and self-verification
# models are named by their fold and their cycle / round.
FILES = {
    'config': 'config.yaml',            # the resolved config (a resumed run must match it)
    'lock': '.lock',                    # flock of the running process
    'backup': 'backup/state.pkl',       # resume state; backup/ is removed once finished
    'history': 'history{tag}.csv',      # one row per epoch
    'tensorboard': 'tb{tag}',           # TensorBoard scalars (a folder)
    'model': 'model{tag}.keras',        # the selected weights
    'snapshot': 'snapshot_{fold}_{cycle}.keras',
    'self_verify': 'sv_{fold}_{round}.keras',
    'pruned': 'pruned{tag}.csv',        # mode 3's pruned clips
    'scaler': 'scaler.npz',             # per-band mean and std of the training patches
    'oof': 'oof.csv',                   # out-of-fold scores of the training clips
    'cl_scores': 'cl_oof_{fold}.npz',   # confident_learning: one fold's out-of-fold scores
    'cl_flagged': 'cl_flagged.csv',     # confident_learning: the flagged clips
    'predictions': 'predictions.csv',
    'confusion': 'confusion.csv',
    'curves': 'curves{tag}.png',
    'confusion_plot': 'confusion.png',
    'per_class_plot': 'per_class.png',
    'results': 'results.json',          # written last: marks a run that ended
}


def path(run_dir, name, fold=None, **numbers):
    """run_dir / FILES[name]; fold (1-based; None for a single split) gives the _<fold>
    tag and the fold of the per-fold names, numbers the cycle or round they hold."""
    tag = '' if fold is None else f'_{fold}'
    return Path(run_dir) / FILES[name].format(tag=tag, fold=fold, **numbers)


def per_fold(run_dir, name):
    """[(fold, path)] of the files FILES[name] (a name with a {tag}) in run_dir, fold None
    for the single split's file."""
    before, after = FILES[name].split('{tag}')
    found = []
    for item in sorted(Path(run_dir).glob(f'{before}*{after}')):
        tag = item.name[len(before):len(item.name) - len(after)]
        if not tag or (tag[0] == '_' and tag[1:].isdigit()):
            found.append((int(tag[1:]) if tag else None, item))
    return found


# Keys that may differ between the run that was interrupted and the one that continues it:
# they change how a run is carried out or shown, not its result.
RESUME_FREE = {('ctrl', k) for k in ('verbose', 'workers', 'overwrite', 'feat_ext')}


def status(run_dir):
    """'finished' / 'diverged' / 'collapsed' for a run that ended, None otherwise."""
    try:
        return json.loads(path(run_dir, 'results').read_text()).get('status', 'finished')
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError):
        return 'finished'  # an unreadable results.json still marks a run that ended


def config_changes(saved, cfg):
    """section.key names whose values differ between a saved config and cfg."""
    return [f'{s}.{k}' for s, keys in cfg.items() if isinstance(keys, dict)
            for k, v in keys.items()
            if (s, k) not in RESUME_FREE and (saved.get(s) or {}).get(k, v) != v]


class RunFolder:
    """logs/<run>/ and logs/<run>.out of one run; open() starts it, close() ends it."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.name = cfg['ctrl']['run_name']
        self.logs = Path(cfg['ctrl']['logs_dir'])
        self.dir, self.out = self.logs / self.name, self.logs / f'{self.name}.out'
        self._lock = self._stop_log = None
        self.created = []       # what open() created (removed again by discard())
        self.out_size = None    # the .out's length before this run (a resumed run appends)
        self.resuming = False   # an unfinished run of this name and config exists
        self.training = False   # set once training starts: later errors keep the folder

    def open(self):
        """Lock the folder, refuse a finished or running run, start the log. A folder that
        cannot be written (a read-only ctrl.logs_dir) is a user mistake: one line, as for
        ctrl.features_dir."""
        try:
            self._open()
        except OSError as err:
            raise ConfigError(f'cannot write the run folder {self.dir}: '
                              f'{err.strerror or err} ({err.filename or self.dir}; '
                              f'ctrl.logs_dir)') from None

    def _open(self):
        overwrite = self.cfg['ctrl']['overwrite']
        # A run name may hold a folder level (sweeps: NAME/point_seed0): every missing
        # folder on the way is noted, to be removed again by discard().
        self.created = [p for p in (*reversed(self.dir.parents), self.dir) if not p.exists()]
        self.dir.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        # Checked under the lock: a run of this name that was still running a moment ago
        # may have finished since (it writes results.json last, then releases the lock).
        ended = status(self.dir)
        if ended and not overwrite:
            raise ConfigError(f'run {self.name} has {ended} ({path(self.dir, "results")}) and '
                              f'is never modified: choose another ctrl.run_name, or set '
                              f'ctrl.overwrite true to start it afresh')
        if overwrite:
            self._clear()
        self._remove_temp_files()
        self.resuming = self._check_resumable()
        self.out_size = self.out.stat().st_size if self.out.exists() else 0
        if not self.out.exists():
            self.created.append(self.out)
        self._stop_log = start_log(self.out)
        if self.resuming:
            print(f'run {self.name} exists, unfinished: continuing it (ctrl.overwrite true '
                  f'starts it afresh)', flush=True)
        atomic_write_text(path(self.dir, 'config'), config.config_to_yaml(self.cfg))

    def _take_lock(self):
        self._lock = open(path(self.dir, 'lock'), 'a')  # 'a': never truncates another run's file
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            self.created = []  # the folder is the other run's, even if both just made it
            raise ConfigError(f'run {self.name} is running in another process ({self.dir} is '
                              f'locked): choose another ctrl.run_name') from None

    def _clear(self):
        """ctrl.overwrite: the run starts afresh (the lock file stays, held by this run)."""
        for item in self.dir.iterdir():
            if item.name != FILES['lock']:
                shutil.rmtree(item) if item.is_dir() else item.unlink()
        self.out.unlink(missing_ok=True)

    def _remove_temp_files(self):
        """Temporary files of this run's atomic writes that a killed process left behind
        (utils.atomic_path names them .<name>.<random>.tmp<suffix>)."""
        for item in sorted(self.dir.rglob('.*.tmp*'), reverse=True):
            shutil.rmtree(item) if item.is_dir() else item.unlink()

    def _check_resumable(self):
        """An earlier, unfinished run of this name must have had the same config."""
        saved = path(self.dir, 'config')
        if not saved.exists():
            return False
        changed = config_changes(yaml.safe_load(saved.read_text()) or {}, self.cfg)
        if changed:
            raise ConfigError(f'run {self.name} exists, unfinished, with another value of '
                              f'{", ".join(changed)}; run it with its own config '
                              f'({saved}) to continue it, choose another ctrl.run_name, or '
                              f'set ctrl.overwrite true to start it afresh')
        return True

    def write_status(self, status_name, **fields):
        """results.json of a run that ended without a report (e.g. diverged)."""
        results = {'run_name': self.name, 'status': status_name, **fields}
        atomic_write_json(path(self.dir, 'results'), results)

    def training_files(self):
        """The names of the history and model files (per fold) that training has written
        so far: what a run that ended early keeps."""
        return [item.name for name in ('history', 'model')
                for _, item in per_fold(self.dir, name)]

    def drop_backup(self):
        """A finished run is never resumed: its backup/ is no longer needed."""
        shutil.rmtree(path(self.dir, 'backup').parent, ignore_errors=True)

    def close(self, discard=False):
        """Stop the log and release the lock; discard: remove what this run created (the
        .out back to its earlier length), for errors found before training."""
        if self._stop_log is not None:
            self._stop_log()
            self._stop_log = None
        if discard:
            self._discard()
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def _discard(self):
        if self.out_size is not None and self.out.exists() and self.out not in self.created:
            with open(self.out, 'r+') as f:
                f.truncate(self.out_size)
        for item in reversed(self.created):  # the .out, the run folder, then its parents
            if item == self.dir:
                shutil.rmtree(item, ignore_errors=True)
            elif item.is_dir():
                if not any(item.iterdir()):
                    item.rmdir()
            else:
                item.unlink(missing_ok=True)
        self.created = []
