"""Small shared helpers: the Diverged error, atomic writes, the log tee, quiet TensorFlow
import, seeding."""
import contextlib
import json
import logging
import os
import random
import signal
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
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.',
                               suffix=f'.tmp{path.suffix}')
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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


def start_log(out_path):
    """Send everything printed (stdout, stderr, logging) to the console and to out_path.

    Returns a function that restores the streams and closes the file.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    file = open(out_path, 'a', buffering=1)
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(sys.stdout, file), _Tee(sys.stderr, file)
    configure_logging()

    def stop():
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = saved
        file.close()
        configure_logging()
    return stop


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
