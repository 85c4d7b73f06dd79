"""Small shared helpers: the Diverged error, atomic writes, the log tee, quiet TensorFlow
import, the code version, seeding."""
import contextlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- errors

class Diverged(RuntimeError):
    """Training (or prediction) produced non-finite numbers; epoch and step when known.
    Raised by the training callbacks and by the report; main.py reports it as a failed run,
    its results.json status the class's `status`."""

    status = 'diverged'

    def __init__(self, message, epoch=None, step=None):
        super().__init__(message)
        self.epoch, self.step = epoch, step



# ----------------------------------------------------------------------------- disk

@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path`; rename it onto `path` only on success.

    The temporary name ends with the target's suffix, for writers that check it (Keras).
    The file gets the mode a plain open() would give it (0644 under the usual umask 022).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.',
                               suffix=f'.tmp{path.suffix}')
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates the file 0600, and a writer may replace it with its own: results
        # are read by colleagues on a shared file system, so the file gets the mode of any
        # new file, 0666 less the umask, set here on whatever the writer left.
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def umask():
    """The process's umask, read from /proc on Linux; elsewhere os.umask, which can only
    read it by setting it (set back at once; not atomic against other threads)."""
    try:
        with open('/proc/self/status') as status:
            for line in status:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_csv(path, frame, **to_csv_kwargs):
    """frame.to_csv(path, **to_csv_kwargs), atomically: a reader never sees half a table."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, **to_csv_kwargs)


def atomic_write_json(path, value):
    """value as strict JSON (allow_nan=False), atomically: a figure that is NaN or infinite
    (the precision of a class never predicted, a metric without positives) is written as
    null, which every JSON reader accepts."""
    atomic_write_text(path, json.dumps(_json_ready(value), indent=2, allow_nan=False) + '\n')


def _json_ready(value):
    """value with every non-finite float (numpy's too) replaced by None, recursively."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


# ----------------------------------------------------------------------------- Ctrl-C

_pending_interrupt = False  # a Ctrl-C that waits for the next interrupt_point()


@contextlib.contextmanager
def interrupts_at_safe_points():
    """While active, a first Ctrl-C (SIGINT) only sets a flag, which interrupt_point()
    (after a training or prediction step, at the block's end) turns into
    KeyboardInterrupt; a second Ctrl-C interrupts at once. A KeyboardInterrupt raised at
    an arbitrary bytecode can land inside TensorFlow tracing the next stage's fit
    function, which once crashed the process (exit 139) instead of ending it with 130.
    Signal handlers belong to the main thread: elsewhere (a Ray worker's thread) the
    block changes nothing."""
    global _pending_interrupt
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def defer(signum, frame):
        global _pending_interrupt
        if _pending_interrupt:
            raise KeyboardInterrupt
        _pending_interrupt = True
        # os.write, not print: a handler may run in the middle of another write to stderr
        os.write(2, b'\nCtrl-C: stopping after this step (press it again to stop now)\n')

    _pending_interrupt = False
    previous = signal.signal(signal.SIGINT, defer)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    interrupt_point()


def interrupt_point():
    """Raise KeyboardInterrupt here if a Ctrl-C is waiting (interrupts_at_safe_points)."""
    global _pending_interrupt
    if _pending_interrupt:
        _pending_interrupt = False
        raise KeyboardInterrupt


# ----------------------------------------------------------------------------- logging

class _Tee:
    """Write to the console stream and to the run's .out file at once."""

    def __init__(self, stream, file):
        self.stream, self.file = stream, file

    def write(self, text):
        self.stream.write(text)
        # Progress bars redraw with carriage returns: the console shows them, the log file
        # keeps the summary line logged after them instead of every redraw.
        if not (text.startswith('\r') and '\n' not in text):
            self.file.write(text)
        return len(text)

    def flush(self):
        self.stream.flush()
        self.file.flush()

    def isatty(self):
        return False

    def __getattr__(self, name):
        return getattr(self.stream, name)


_log_files = []  # the .out files of the logs started (start_log), the current one last


def start_log(out_path):
    """Send everything printed (stdout, stderr, logging) to the console and to out_path.

    Returns a function that restores the streams and closes the file.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    file = open(out_path, 'a', buffering=1)
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(sys.stdout, file), _Tee(sys.stderr, file)
    _log_files.append(file)
    configure_logging()

    def stop():
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = saved
        _log_files.remove(file)
        file.close()
        configure_logging()
    return stop


def log_only(text):
    """Write text to the current run's .out file but not to the console (the full resolved
    config: the console shows only what differs from the defaults). Nothing without a log."""
    if _log_files:
        sys.stdout.flush()  # what was printed before comes first in the file too
        _log_files[-1].write(text if text.endswith('\n') else text + '\n')


def configure_logging(level=logging.INFO):
    """Plain messages on the current stdout (which start_log may tee to the .out file)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter('%(asctime)s %(message)s', '%H:%M:%S'))
    root.addHandler(handler)
    root.setLevel(level)


class _NoRetracingWarnings(logging.Filter):
    """Drops TensorFlow's "N out of the last M calls to <function> triggered tf.function
    retracing" warnings. The framework compiles a new function for each model it scores
    with (each fold model of a self-verification round, the loss of each pruning pass),
    each traced once per input signature; TensorFlow counts the traces of all functions
    made from the same code together and warns as if one function were retraced."""

    def filter(self, record):
        return 'triggered tf.function retracing' not in record.getMessage()


_NO_RETRACING_WARNINGS = _NoRetracingWarnings()  # one instance: addFilter adds it once


def import_tensorflow_quietly():
    """Import TensorFlow and Keras, and find its devices, with file descriptor 2 captured;
    keep TensorFlow's retracing warnings out of the log (_NoRetracingWarnings).

    TensorFlow's C++ runtime writes start-up lines (absl, oneDNN, "Could not find cuda
    drivers", and at its first look for a GPU "failed call to cuInit") straight to fd 2
    before its log level applies; they would turn a one-line user error into a
    screenful. The captured text is replayed if the import fails.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import keras  # noqa: F401
            import tensorflow
            tensorflow.config.list_physical_devices('GPU')
            tensorflow.get_logger().addFilter(_NO_RETRACING_WARNINGS)
        except BaseException:
            os.dup2(saved, 2)
            capture.seek(0)
            sys.stderr.write(capture.read().decode(errors='replace'))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


# ----------------------------------------------------------------------------- provenance

CODE_DIR = Path(__file__).resolve().parent  # the framework's folder (its modules are flat)
VERSIONED_PACKAGES = ('tensorflow', 'keras', 'librosa', 'numpy')


def _git(*args):
    """git's stdout in the code's folder, or None (no git, not a checkout, any failure)."""
    try:
        done = subprocess.run(['git', '-C', str(CODE_DIR), *args], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def code_version():
    """{commit, dirty, packages}: the git commit of the code's folder (None outside a git
    checkout), whether tracked files differ from it (None without a commit), and the
    installed versions of the packages whose behaviour the results depend on (None for
    one not installed). Recorded in results.json and the log, so that a result can be
    traced to the code that produced it."""
    from importlib import metadata
    commit = _git('rev-parse', 'HEAD')
    commit = commit.strip() if commit else None
    status = _git('status', '--porcelain', '--untracked-files=no') if commit else None
    packages = {}
    for name in VERSIONED_PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {'commit': commit, 'dirty': None if status is None else bool(status.strip()),
            'packages': packages}


def code_version_line(version):
    """The log's line of code_version()."""
    commit = version['commit']
    where = ('not a git checkout' if commit is None else
             f'commit {commit[:12]}{" with uncommitted changes" if version["dirty"] else ""}')
    packages = ', '.join(f'{k} {v or "not installed"}' for k, v in version['packages'].items())
    return f'code version: {where}; {packages}'


def n_workers(requested):
    """ctrl.workers: 0 means every available CPU core."""
    if requested and requested > 0:
        return int(requested)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def set_seed(seed):
    """Seed Python, numpy and the Keras backend; return a numpy Generator for the run."""
    random.seed(seed)
    np.random.seed(seed)
    import keras  # imported here so that config-only tools need no TensorFlow
    keras.utils.set_random_seed(seed)
    return np.random.default_rng(seed)
