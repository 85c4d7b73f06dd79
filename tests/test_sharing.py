"""Results that a lab can share and trace (issue 20): file modes under the umask, the code
version, the console's config summary, TensorBoard's HParams view of a sweep."""
import json
import os
import shutil
import stat
import subprocess
import struct
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import config
import utils

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- file modes

@pytest.mark.parametrize('mask, mode', [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_honour_the_umask(tmp_path, mask, mode):
    previous = os.umask(mask)
    try:
        assert utils.umask() == mask
        utils.atomic_write_text(tmp_path / 'a.txt', 'x')
        utils.atomic_write_json(tmp_path / 'results.json', {'a': 1})
        utils.atomic_write_csv(tmp_path / 'runs.csv', pd.DataFrame({'a': [1]}))
        with utils.atomic_path(tmp_path / 'scaler.npz') as tmp:
            np.savez(tmp, mean=np.zeros(2))  # a writer that opens the path itself
        with utils.atomic_path(tmp_path / 'replaced.bin') as tmp:
            tmp.unlink()  # a writer that replaces the temporary file with its own
            tmp.write_bytes(b'x')
    finally:
        os.umask(previous)
    for name in ('a.txt', 'results.json', 'runs.csv', 'scaler.npz', 'replaced.bin'):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


# ----------------------------------------------------------------------------- code version

def _version_in(folder):
    """utils.code_version() as computed by a copy of utils.py in folder (its own process)."""
    shutil.copy(ROOT / 'utils.py', folder / 'utils.py')
    done = subprocess.run([sys.executable, '-c', 'import json, utils; '
                           'print(json.dumps(utils.code_version()))'], cwd=folder,
                          capture_output=True, text=True, check=True,
                          env={**os.environ, 'PYTHONPATH': str(folder)})
    return json.loads(done.stdout)


def _git(folder, *args):
    return subprocess.run(['git', '-C', str(folder), '-c', 'user.name=t', '-c',
                           'user.email=t@t', *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_code_version_outside_a_git_checkout(tmp_path):
    if subprocess.run(['git', '-C', str(tmp_path), 'rev-parse'], capture_output=True).returncode == 0:
        pytest.skip('the temporary folder lies inside a git checkout')
    version = _version_in(tmp_path)
    assert version['commit'] is None and version['dirty'] is None
    from importlib import metadata
    assert version['packages'] == {name: metadata.version(name) for name in
                                   ('tensorflow', 'keras', 'librosa', 'numpy')}


def test_code_version_of_a_git_checkout_clean_and_dirty(tmp_path):
    _git(tmp_path, 'init', '-q')
    shutil.copy(ROOT / 'utils.py', tmp_path / 'utils.py')
    _git(tmp_path, 'add', 'utils.py')
    _git(tmp_path, 'commit', '-q', '-m', 'code')
    head = _git(tmp_path, 'rev-parse', 'HEAD')
    (tmp_path / 'notes.txt').write_text('untracked files do not make the code dirty')
    clean = _version_in(tmp_path)  # copies the same utils.py again: still clean
    assert clean['commit'] == head and clean['dirty'] is False
    with open(tmp_path / 'utils.py', 'a') as f:
        f.write('\n# a local change\n')
    changed = subprocess.run([sys.executable, '-c', 'import json, utils; '
                              'print(json.dumps(utils.code_version()))'], cwd=tmp_path,
                             capture_output=True, text=True, check=True)
    dirty = json.loads(changed.stdout)
    assert dirty['commit'] == head and dirty['dirty'] is True
    assert utils.code_version_line(dirty).startswith(
        f'code version: commit {head[:12]} with uncommitted changes; tensorflow ')


# ----------------------------------------------------------------------------- console

def test_only_keys_that_differ_from_the_defaults_are_shown():
    cfg = config.load_config(None, ['learn.n_epochs=3', 'ctrl.inject_noise.rate=0.2',
                                    'loss.type=CCE', 'ctrl.run_name=x'])
    defaults = config.load_config(None, ['ctrl.run_name=x'])
    assert config.changed_from_defaults(defaults) == {'ctrl': {'run_name': 'x'}}
    assert config.changed_from_defaults(cfg) == {
        'ctrl': {'inject_noise': {'rate': 0.2}, 'run_name': 'x'},
        'learn': {'n_epochs': 3}, 'loss': {'type': 'CCE'}}


def test_log_only_text_goes_to_the_log_and_not_the_console(tmp_path, capsys):
    stop = utils.start_log(tmp_path / 'run.out')
    try:
        print('both')
        utils.log_only('resolved config:\n  a: 1')
        print('both again')
    finally:
        stop()
    assert capsys.readouterr().out == 'both\nboth again\n'
    assert (tmp_path / 'run.out').read_text() == 'both\nresolved config:\n  a: 1\nboth again\n'
    utils.log_only('no log: nothing written, no error')


# ----------------------------------------------------------------------------- TensorBoard

def _fields(data):
    """Protobuf wire format -> [(field number, value)]: bytes for length-delimited fields,
    int for varints, float for 64-bit ones (an independent reader of what TensorBoard
    parses)."""
    out, i = [], 0

    def varint():
        nonlocal i
        shift = value = 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value
    while i < len(data):
        key = varint()
        number, kind = key >> 3, key & 7
        if kind == 0:
            out.append((number, varint()))
        elif kind == 1:
            out.append((number, struct.unpack('<d', data[i:i + 8])[0]))
            i += 8
        else:
            size = varint()
            out.append((number, data[i:i + size]))
            i += size
    return out


def _events(folder):
    import tensorflow as tf
    found = {}
    for path in Path(folder).glob('events.out.tfevents.*'):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                found[value.tag] = value
    return found


def test_sweep_runs_are_hparams_sessions_with_their_final_metrics(tmp_path):
    from google.protobuf import struct_pb2

    import sweep
    import tensorboard_hparams
    runs = [sweep.Run(f'demo/loss.type={loss}_seed{seed}', f'loss.type={loss}',
                      {'loss.type': loss, 'learn.lr': 0.001}, seed, [])
            for loss in ('CCE', 'lq_loss') for seed in (0, 1)]
    frame = pd.DataFrame({'run': [r.name for r in runs],
                          'status': ['finished', 'finished', 'finished', 'failed'],
                          'accuracy_micro': [70.0, 72.5, 75.0, np.nan],
                          'wall_time_s': [1.0, 2.0, 3.0, np.nan]})
    folder = tmp_path / 'tensorboard'
    tensorboard_hparams.write(folder, runs, frame)
    root = _events(folder)
    plugin = root['_hparams_/experiment'].metadata.plugin_data
    assert plugin.plugin_name == 'hparams'
    (number, body), = _fields(plugin.content)  # HParamsPluginData.experiment
    assert number == 2
    infos = [dict(_fields(v)) for n, v in _fields(body) if n == 4]
    # name and DataType (STRING 1, FLOAT64 3) of each hyperparameter, in the runs' order
    assert [(i[1], i[4]) for i in infos] == [(b'loss.type', 1), (b'learn.lr', 3), (b'seed', 3)]
    metrics_ = [dict(_fields(dict(_fields(v))[1]))[2] for n, v in _fields(body) if n == 5]
    assert metrics_ == [b'accuracy_micro']  # headline figures only, not the wall time
    sessions = sorted(p.name for p in folder.iterdir() if p.is_dir())
    assert sessions == ['loss.type=CCE_seed0', 'loss.type=CCE_seed1', 'loss.type=lq_loss_seed0']
    import tensorflow as tf
    for name, accuracy, loss, seed in [('loss.type=CCE_seed1', 72.5, 'CCE', 1),
                                       ('loss.type=lq_loss_seed0', 75.0, 'lq_loss', 0)]:
        events = _events(folder / name)
        (number, start), = _fields(events['_hparams_/session_start_info']
                                   .metadata.plugin_data.content)
        assert number == 3
        entries = {}
        for n, entry in _fields(start):
            if n == 1:
                item = dict(_fields(entry))
                value = struct_pb2.Value()
                value.ParseFromString(item[2])
                entries[item[1].decode()] = value
        assert entries['loss.type'].string_value == loss
        assert entries['learn.lr'].number_value == 0.001
        assert entries['seed'].number_value == seed
        assert dict(_fields(start))[4] == f'loss.type={loss}'.encode()  # the group
        (number, end), = _fields(events['_hparams_/session_end_info']
                                 .metadata.plugin_data.content)
        assert number == 4 and dict(_fields(end))[1] == 1  # STATUS_SUCCESS
        value = tf.make_ndarray(events['accuracy_micro'].tensor)
        assert float(value) == pytest.approx(accuracy)
    tensorboard_hparams.write(folder, runs, frame.assign(status='failed'))
    assert not folder.exists()  # rewritten from the rows: no finished run, no view


def test_an_axis_of_numbers_and_words_is_one_string_hparam(tmp_path):
    """learn.mode=1,3,self_verify: TensorBoard's domain is typed, so the axis is text in
    every session ('1', '3', 'self_verify'), and the view is written (it raised before)."""
    from google.protobuf import struct_pb2

    import sweep
    import tensorboard_hparams
    runs = [sweep.Run(f'det/learn.mode={mode}_seed0', f'learn.mode={mode}',
                      {'learn.mode': mode}, 0, []) for mode in (1, 3, 'self_verify')]
    frame = pd.DataFrame({'run': [r.name for r in runs], 'status': ['finished'] * 3,
                          'accuracy_micro': [70.0, 71.0, 72.0]})
    folder = tmp_path / 'tensorboard'
    tensorboard_hparams.write(folder, runs, frame)
    (_, body), = _fields(_events(folder)['_hparams_/experiment'].metadata.plugin_data.content)
    infos = [dict(_fields(v)) for n, v in _fields(body) if n == 4]
    assert [(i[1], i[4]) for i in infos] == [(b'learn.mode', 1), (b'seed', 3)]
    domain = struct_pb2.ListValue()
    domain.ParseFromString(infos[0][5])
    assert sorted(v.string_value for v in domain.values) == ['1', '3', 'self_verify']
    for mode in ('1', '3', 'self_verify'):
        events = _events(folder / f'learn.mode={mode}_seed0')
        (_, start), = _fields(events['_hparams_/session_start_info'].metadata.plugin_data.content)
        items = [dict(_fields(entry)) for n, entry in _fields(start) if n == 1]
        item, = [i for i in items if i[1] == b'learn.mode']
        value = struct_pb2.Value()
        value.ParseFromString(item[2])
        assert value.string_value == mode


def test_a_run_shows_its_changed_keys_and_logs_the_whole_config(tmp_path, capsys):
    from types import SimpleNamespace

    import main
    cfg = config.load_config(None, ['learn.n_epochs=3', 'ctrl.run_name=x'])
    folder = SimpleNamespace(name='x', out=tmp_path / 'x.out')
    version = {'commit': None, 'dirty': None, 'packages': {'numpy': '2'}}
    stop = utils.start_log(folder.out)
    try:
        main.announce(cfg, folder, 'exp.yaml', ['learn.n_epochs=3'], version)
    finally:
        stop()
    console, log = capsys.readouterr().out, folder.out.read_text()
    assert console.startswith('run x: -p exp.yaml -o learn.n_epochs=3\nconfig keys that '
                              'differ from the defaults')
    assert 'learn:\n  n_epochs: 3\n' in console and 'patch_hop' not in console
    assert 'code version: not a git checkout; numpy 2' in console
    assert log.startswith(console)  # the console's lines, then the whole resolved config
    full = log[len(console):]
    assert full.startswith('resolved config:\n')
    assert config.config_to_yaml(cfg) in full


def test_rays_token_notice_is_dropped_and_its_other_warnings_kept():
    import logging

    import sweep

    def record(message):
        return logging.LogRecord('ray', logging.WARNING, __file__, 1, message, None, None)
    notice = sweep._NO_TOKEN_NOTICE
    assert not notice.filter(record('Token authentication is enabled for this Ray cluster. '
                                    'Set RAY_AUTH_MODE=disabled to opt out.'))
    assert notice.filter(record('Token authentication is disabled for this Ray cluster.'))


def test_predict_py_keeps_tensorflows_start_up_lines_out(tmp_path):
    """`python predict.py` on a folder that is no run: its one error line, without
    TensorFlow's start-up lines (cudart_stub "Could not find cuda drivers", cuInit)."""
    done = subprocess.run([sys.executable, str(ROOT / 'predict.py'), str(tmp_path), '--out',
                           str(tmp_path / 'x.csv')], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith('error: ') and done.stderr.count('\n') == 1, done.stderr
