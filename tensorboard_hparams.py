"""TensorBoard's HParams view of a sweep: logs/sweeps/NAME/tensorboard/, written by sweep.py.

    tensorboard --logdir logs/sweeps/NAME/tensorboard     # the HPARAMS tab

One session per finished run, named by its run folder (<point>_seed<k>), holding the run's
grid values and seed as hyperparameters and its final headline metrics (those of the
summary) as scalars; the folder's root holds the experiment (which hyperparameters and
metrics there are). The folder is written anew from runs.csv's rows on every call, so a
rerun that adds runs shows them all.

The records are those of TensorBoard's hparams plugin (tensorboard/plugins/hparams:
plugin_data.proto, api.proto: HParamsPluginData with an Experiment, a SessionStartInfo
or a SessionEndInfo, in a summary of plugin "hparams" under the tags below). The
tensorboard package is not a dependency of the framework (it is needed only to view the
files), so its generated message classes are not at hand: the few messages are encoded
here in protobuf's wire format, the hyperparameter values with protobuf's own
google.protobuf.Value (struct_pb2), and written with tf.summary.write.
"""
import contextlib
import shutil
import struct
import time
from pathlib import Path

from google.protobuf import struct_pb2

import metrics

EXPERIMENT_TAG = '_hparams_/experiment'
SESSION_START_TAG = '_hparams_/session_start_info'
SESSION_END_TAG = '_hparams_/session_end_info'
PLUGIN = 'hparams'
# api.proto's enums: DataType STRING 1, BOOL 2, FLOAT64 3; Status SUCCESS 1.
DATA_TYPE = {str: 1, bool: 2, float: 3}
STATUS_SUCCESS = 1


# ----------------------------------------------------------------------------- wire format

def _varint(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _len_field(number, payload):
    """A length-delimited field (wire type 2): a string, bytes or an embedded message."""
    payload = payload.encode() if isinstance(payload, str) else payload
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int_field(number, value):
    """A varint field (wire type 0): an int32 or an enum."""
    return _varint(number << 3) + _varint(value)


def _double_field(number, value):
    """A 64-bit field (wire type 1): a double."""
    return _varint(number << 3 | 1) + struct.pack('<d', value)


# ----------------------------------------------------------------------------- messages

def hparam_value(value):
    """A grid value or seed as TensorBoard shows it: a number, a bool or a string (lists
    and anything else as their text)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return value if isinstance(value, str) else str(value)


def _value(value):
    """google.protobuf.Value of an hparam_value."""
    if isinstance(value, bool):
        return struct_pb2.Value(bool_value=value).SerializeToString()
    if isinstance(value, float):
        return struct_pb2.Value(number_value=value).SerializeToString()
    return struct_pb2.Value(string_value=value).SerializeToString()


def experiment(hparams, metric_names):
    """HParamsPluginData{experiment}: hparams {name: [values]}, each with its type and its
    values as the discrete domain (TensorBoard's filters need a domain); metrics by tag."""
    body = b''
    for name, values in hparams.items():
        kind = DATA_TYPE[type(values[0])]
        domain = struct_pb2.ListValue()
        for v in sorted(set(values)):
            domain.values.add().ParseFromString(_value(v))
        body += _len_field(4, _len_field(1, name) + _int_field(4, kind) +
                           _len_field(5, domain.SerializeToString()))
    for tag in metric_names:
        body += _len_field(5, _len_field(1, _len_field(2, tag)))  # MetricName{group '', tag}
    return _len_field(2, body)


def session_start(values, group, start_time):
    """HParamsPluginData{session_start_info}: the run's hparams (a map: entries of key 1,
    value 2), its group (the grid point: the seeds of one point are one group) and time."""
    body = b''.join(_len_field(1, _len_field(1, k) + _len_field(2, _value(v)))
                    for k, v in values.items())
    return _len_field(3, body + _len_field(4, group) + _double_field(5, start_time))


def session_end(end_time):
    """HParamsPluginData{session_end_info}: a finished run."""
    return _len_field(4, _int_field(1, STATUS_SUCCESS) + _double_field(2, end_time))


# ----------------------------------------------------------------------------- files

def sessions(runs, frame):
    """[(run, {hparam: value}, {metric: value})] of the finished runs, in runs' order:
    hparams are the grid values and the seed, metrics the headline figures of results.json."""
    keys = metrics.headline_keys()
    done = frame[frame.status == 'finished'].set_index('run')
    found = []
    for run in runs:
        if run.name not in done.index:
            continue
        row = done.loc[run.name]
        values = {k: hparam_value(v) for k, v in run.values.items()}
        values['seed'] = float(run.seed)
        figures = {k: float(row[k]) for k in done.columns if k in keys and row[k] == row[k]}
        found.append((run, values, figures))
    # One type per hyperparameter (TensorBoard's domain is typed): an axis of numbers and
    # words (learn.mode=1,3,self_verify) is shown as text throughout.
    for name in {k for _, values, _ in found for k in values}:
        kinds = {type(values[name]) for _, values, _ in found if name in values}
        if len(kinds) > 1:
            for _, values, _ in found:
                if name in values:
                    values[name] = _text(values[name])
    return found


def _text(value):
    """A number as the grid wrote it (3.0 -> '3'), anything else as its text."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def write(folder, runs, frame):
    """The HParams view of the sweep's finished runs under folder (replaced)."""
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2  # the data class of a scalar
    found = sessions(runs, frame)
    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    if not found:
        return
    meta = tf.compat.v1.SummaryMetadata

    def record(tag, content, step=0):
        plugin = meta.PluginData(plugin_name=PLUGIN, content=content)
        tf.summary.write(tag, tf.constant(0.0), step=step, metadata=meta(plugin_data=plugin))

    scalar = meta(plugin_data=meta.PluginData(plugin_name='scalars'),
                  data_class=summary_pb2.DATA_CLASS_SCALAR)
    hparams = {k: [v[k] for _, v, _ in found] for k in found[0][1]}
    metric_names = list(dict.fromkeys(m for _, _, figures in found for m in figures))
    now = time.time()
    with _writer(tf, folder):
        record(EXPERIMENT_TAG, experiment(hparams, metric_names))
    for run, values, figures in found:
        with _writer(tf, folder / Path(run.name).name):
            record(SESSION_START_TAG, session_start(values, run.point, now))
            for name, value in figures.items():
                tf.summary.write(name, tf.constant(value, tf.float32), step=0, metadata=scalar)
            record(SESSION_END_TAG, session_end(now))


@contextlib.contextmanager
def _writer(tf, folder):
    """A summary writer of folder as the default one; closed (flushed) at the end."""
    writer = tf.summary.create_file_writer(str(folder))
    try:
        with writer.as_default():
            yield
    finally:
        writer.close()
