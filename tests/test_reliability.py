"""Issue 11: no hang, no silent wrong result, no lost run, resume after a crash.

Runs go through main.main on a tiny synthetic dataset (3 classes); a test that damages
the data works on its own copy, in a folder of its own name (the cache namespace).
"""
import fcntl
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import callbacks
import learn
import main
import runfolder
from conftest import tiny_dataset, write_tiny_config

REPO = Path(__file__).resolve().parents[1]

# TINY (conftest.py) with 3 classes, fewer mel bands and epochs: runs of a second or two.
SMALLER = {'ctrl': {'workers': 1}, 'extract': {'n_mels': 16},
           'learn': {'n_classes': 3, 'batch_size': 16, 'n_epochs': 2, 'predict_batch_size': 128}}


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp('reliability')
    data = tiny_dataset(root / 'tiny', n_classes=3, train_per_class=10, test_per_class=3,
                        seed=5)
    return root, data


def copy_of(tiny, name):
    """A copy of the dataset that a test may damage."""
    root, data = tiny
    return shutil.copytree(data, root / name)


def config_file(tiny, dataset=None, name='exp'):
    root, data = tiny
    return write_tiny_config(root / f'{name}.yaml', dataset or data, root, SMALLER)


def run(tiny, name, *overrides, dataset=None):
    """main.main on the tiny config -> (exit code, run folder, .out path)."""
    root, _ = tiny
    args = ['-p', str(config_file(tiny, dataset)), '-o', f'ctrl.run_name={name}']
    for o in overrides:
        args += ['-o', o]
    return main.main(args), root / 'logs' / name, root / 'logs' / f'{name}.out'


def one_error_line(capsys):
    """The one error line (progress bars may precede it on stderr), no traceback."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith('error: ')]
    assert len(lines) == 1 and 'Traceback' not in err, err
    return lines[0]


def nothing_left(run_dir, out):
    return not run_dir.exists() and not out.exists()


def _audio(data, subset):
    return sorted((data / f'FSDnoisy18k.audio_{subset}').glob('*.wav'))


# ----------------------------------------------------------------------------- hangs

def test_misnamed_audio_folder_stops_before_anything(tiny, capsys):
    """Cases 1 and 11: one line naming the folder, exit 2, nothing left in logs/."""
    data = copy_of(tiny, 'misnamed')
    (data / 'FSDnoisy18k.audio_train').rename(data / 'audio_train')
    code, run_dir, out = run(tiny, 'misnamed', dataset=data)
    assert code == 2
    assert f'{data}/FSDnoisy18k.audio_train does not exist' in one_error_line(capsys)
    assert nothing_left(run_dir, out)


def test_class_without_readable_training_clip(tiny, capsys):
    data = copy_of(tiny, 'lost_class')
    train = pd.read_csv(data / 'FSDnoisy18k.meta' / 'train.csv')
    lost = sorted(train.label.unique())[1]
    for fname in train.fname[train.label == lost]:
        (data / 'FSDnoisy18k.audio_train' / fname).write_bytes(b'')
    code, run_dir, out = run(tiny, 'lost_class', dataset=data)
    assert code == 2
    assert f'class(es) {lost} have no readable training clip' in one_error_line(capsys)
    assert nothing_left(run_dir, out)


def test_empty_validation_split(tiny, capsys):
    code, run_dir, out = run(tiny, 'no_val', 'learn.val_split=0.01')
    assert code == 2
    assert 'learn.val_split 0.01 leaves no validation clip' in one_error_line(capsys)
    assert nothing_left(run_dir, out)


@pytest.mark.parametrize('subset, what', [('train', 'training'), ('test', 'test')])
def test_no_readable_clip_stops_before_training(tiny, capsys, monkeypatch, subset, what):
    """Cases 1 and 6: every training (test) file unreadable -> one line naming the folder,
    exit 2, before training (no NaN scaler, no IndexError after the training)."""
    data = copy_of(tiny, f'unreadable_{subset}')
    for path in _audio(data, subset):
        path.write_bytes(b'not audio')
    monkeypatch.setattr(learn, 'run', lambda exp: pytest.fail('training started'))
    code, run_dir, out = run(tiny, f'unreadable_{subset}', dataset=data)
    assert code == 2
    line = one_error_line(capsys)
    assert f'no readable {what} clip' in line and f'{data}/FSDnoisy18k.audio_{subset}' in line
    assert nothing_left(run_dir, out)


def test_divergence_stops_at_the_first_non_finite_loss(tiny, capsys):
    """Case 2: exit 1, the epoch and step named, status "diverged", no report."""
    code, run_dir, out = run(tiny, 'diverged', 'learn.lr=1e30', 'learn.n_epochs=3')
    assert code == 1
    err = capsys.readouterr().err
    results = json.loads((run_dir / 'results.json').read_text())
    assert results['status'] == 'diverged'
    epoch, step = results['epoch'], results['step']
    assert f'training diverged: the loss is nan at epoch {epoch}, step {step}' in err
    assert f'run diverged failed: training diverged' in out.read_text()
    assert 'ACCURACY' not in out.read_text() and not (run_dir / 'predictions.csv').exists()
    if (run_dir / 'history.csv').exists():  # only epochs that ended with a finite loss
        history = pd.read_csv(run_dir / 'history.csv')
        assert len(history) == epoch - 1 and np.isfinite(history.loss).all()


# ----------------------------------------------------------------------------- runs

def test_a_locked_run_is_refused(tiny, capsys):
    """Case 4: a second run of a name that is running refuses with one line."""
    root, _ = tiny
    run_dir = root / 'logs' / 'busy'
    run_dir.mkdir(parents=True)
    with open(run_dir / '.lock', 'a') as held:  # what the other process holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, _, out = run(tiny, 'busy')
    assert code == 2 and 'run busy is running in another process' in one_error_line(capsys)
    assert not out.exists() and sorted(p.name for p in run_dir.iterdir()) == ['.lock']


def test_finished_run_is_never_modified_unless_overwrite(tiny, capsys):
    """Case 5 (and the status of a finished run)."""
    code, run_dir, out = run(tiny, 'done', 'learn.n_epochs=1')
    assert code == 0
    assert json.loads((run_dir / 'results.json').read_text())['status'] == 'finished'
    before = {p.name: p.read_bytes() for p in [out, *run_dir.iterdir()] if p.is_file()}
    capsys.readouterr()
    code, _, _ = run(tiny, 'done', 'learn.n_epochs=1')
    assert code == 2 and 'run done has finished' in one_error_line(capsys)
    assert before == {p.name: p.read_bytes() for p in [out, *run_dir.iterdir()] if p.is_file()}
    code, _, _ = run(tiny, 'done', 'learn.n_epochs=1', 'ctrl.overwrite=true')
    assert code == 0 and out.read_text().count('ACCURACY - MICRO') == 1


def test_a_run_that_finishes_before_the_lock_is_taken_is_not_modified(tmp_path, make_cfg,
                                                                       monkeypatch):
    """Cases 4 and 5 together: the other run of this name writes results.json and ends
    (releasing the lock) just before this run takes the lock. Checked under the lock, the
    finished run is refused and left as it was (not resumed, no .out, no new config)."""
    import config
    cfg = make_cfg(f'ctrl.logs_dir={tmp_path}/logs', 'ctrl.run_name=race')
    run_dir, saved = tmp_path / 'logs' / 'race', config.config_to_yaml(cfg)
    run_dir.mkdir(parents=True)
    (run_dir / 'config.yaml').write_text(saved)  # the other run's, same config
    take_lock = fcntl.flock

    def other_run_finishes_first(fd, operation):
        if not (run_dir / 'results.json').exists():
            (run_dir / 'results.json').write_text('{"status": "finished"}\n')
        return take_lock(fd, operation)
    monkeypatch.setattr(runfolder.fcntl, 'flock', other_run_finishes_first)
    folder = runfolder.RunFolder(cfg)
    with pytest.raises(config.ConfigError, match='run race has finished'):
        folder.open()
    folder.close(discard=True)
    assert sorted(p.name for p in run_dir.iterdir()) == ['.lock', 'config.yaml', 'results.json']
    assert (run_dir / 'config.yaml').read_text() == saved
    assert not (tmp_path / 'logs' / 'race.out').exists()


def test_unexpected_error_reaches_the_log(tiny, monkeypatch):
    """Case 12: the traceback and a line saying the run failed are in the .out."""
    def boom(exp):
        raise RuntimeError('boom in training')
    monkeypatch.setattr(learn, 'run', boom)
    code, _, out = run(tiny, 'boom')
    assert code == 1
    log = out.read_text()
    assert 'Traceback (most recent call last)' in log
    assert log.rstrip().endswith('run boom failed: RuntimeError: boom in training')


def test_a_crash_while_plotting_leaves_the_run_unfinished(tiny, monkeypatch):
    """results.json marks a finished run, so it is the last file written: a crash in the
    plots leaves no results.json and keeps the backup; the same command then finishes the
    run, with its plots, without training again."""
    import plots

    def boom(*args, **kwargs):
        raise RuntimeError('plotting failed')
    with monkeypatch.context() as patch:
        patch.setattr(plots, 'per_class', boom)
        code, run_dir, out = run(tiny, 'plot_crash', 'learn.n_epochs=2')
    assert code == 1
    assert 'run plot_crash failed: RuntimeError: plotting failed' in out.read_text()
    assert not (run_dir / 'results.json').exists()
    assert (run_dir / 'backup' / 'state.pkl').is_file()
    code, _, _ = run(tiny, 'plot_crash', 'learn.n_epochs=2')
    assert code == 0 and 'resumed at epoch 3' in out.read_text()
    assert json.loads((run_dir / 'results.json').read_text())['status'] == 'finished'
    assert all((run_dir / f'{name}.png').is_file() for name in ('curves', 'per_class'))
    assert list(pd.read_csv(run_dir / 'history.csv').epoch) == [1, 2]
    assert not (run_dir / 'backup').exists()


def test_leftover_temp_files_are_removed(tiny):
    """Case 14: a kill -9 during a save leaves .<name>.<random>.tmp<suffix>."""
    root, _ = tiny
    run_dir = root / 'logs' / 'leftover'
    run_dir.mkdir(parents=True)
    (run_dir / '.model.keras.k2j3.tmp.keras').write_bytes(b'half a model')
    code, _, _ = run(tiny, 'leftover', 'learn.n_epochs=1')
    assert code == 0 and not list(run_dir.rglob('.*.tmp*'))


def test_the_run_folder_names_its_files():
    """runfolder.path: one name per file; per-fold files tagged _<fold>, and README gives
    every name so spelled."""
    run = Path('logs/r')
    assert runfolder.path(run, 'history') == run / 'history.csv'
    assert runfolder.path(run, 'history', 2) == run / 'history_2.csv'
    assert runfolder.path(run, 'model', 3) == run / 'model_3.keras'
    assert runfolder.path(run, 'tensorboard', 1) == run / 'tb_1'
    assert runfolder.path(run, 'snapshot', 1, cycle=4) == run / 'snapshot_1_4.keras'
    assert runfolder.path(run, 'self_verify', 2, round=0) == run / 'sv_2_0.keras'
    assert runfolder.path(run, 'backup') == run / 'backup' / 'state.pkl'
    assert len(set(runfolder.FILES.values())) == len(runfolder.FILES)
    readme = (REPO / 'README.md').read_text()
    for name in runfolder.FILES.values():
        spelled = name.format(tag='', fold='<fold>', cycle='<cycle>', round='<round>')
        assert spelled in readme, spelled


def test_per_fold_files_are_found_with_their_fold(tmp_path):
    for name in ('history.csv', 'history_1.csv', 'history_10.csv', 'history_x.csv'):
        (tmp_path / name).write_text('epoch\n')
    assert runfolder.per_fold(tmp_path, 'history') == [
        (None, tmp_path / 'history.csv'), (1, tmp_path / 'history_1.csv'),
        (10, tmp_path / 'history_10.csv')]


# ----------------------------------------------------------------------------- resume

def _interrupt_after(monkeypatch, epochs):
    """Stop the run (KeyboardInterrupt) right after the backup of epoch `epochs`."""
    real = callbacks.Backup.on_epoch_end

    def stop(self, epoch, logs=None):
        real(self, epoch, logs)
        if epoch + 1 == epochs:
            raise KeyboardInterrupt
    monkeypatch.setattr(callbacks.Backup, 'on_epoch_end', stop)


# Mode 0: two stages in epochs; staged: three stages in steps, 2 steps an epoch (the cut
# falls inside a plan), the loss-masking threshold in the state; mode 3: pruning between
# two stages. Each is cut inside its second stage.
RESUME = {
    'mode0': (('learn.mode=0', 'learn.mixup=true', 'learn.mixup_warmup_epochs=1',
               'learn.n_epochs=3', 'learn.LSR=true', 'learn.model_selection=best_val'), 2),
    'staged': (('learn.mode=staged', 'learn.staged_steps=[4,6,3]', 'learn.steps_per_epoch=2',
                'learn.mixup=true'), 4),
    # The clips pruned after stage 1 come from the backup, not from the restored weights.
    'mode3': (('learn.mode=3', 'learn.prune_stage1=2', 'learn.n_epochs=4',
               'learn.prune_discard_percentile=80'), 3),
}


def _same_run(run_a, run_b):
    history = [pd.read_csv(d / 'history.csv').drop(columns='seconds') for d in (run_a, run_b)]
    pd.testing.assert_frame_equal(*history)
    for name in ('predictions.csv', 'pruned.csv'):
        if (run_a / name).exists() or (run_b / name).exists():
            pd.testing.assert_frame_equal(*[pd.read_csv(d / name) for d in (run_a, run_b)])
    results = [json.loads((d / 'results.json').read_text()) for d in (run_a, run_b)]
    for key in ('accuracy_micro', 'evaluated_epoch', 'noise_detection'):
        assert results[0].get(key) == results[1].get(key), key


@pytest.mark.slow
@pytest.mark.parametrize('mode', RESUME)
def test_resumed_run_equals_an_uninterrupted_one(tiny, monkeypatch, mode):
    """Interrupted inside a later stage, right after an epoch's backup: the resumed run
    ends with the same history, predictions and accuracy as an uninterrupted one (CPU)."""
    overrides, cut = RESUME[mode]
    code, whole, _ = run(tiny, f'whole_{mode}', *overrides)
    assert code == 0
    with monkeypatch.context() as patch:
        _interrupt_after(patch, cut)
        code, resumed, out = run(tiny, f'resumed_{mode}', *overrides)
    assert code == 130 and not (resumed / 'results.json').exists()
    assert len(pd.read_csv(resumed / 'history.csv')) == cut
    code, _, _ = run(tiny, f'resumed_{mode}', *overrides)
    assert code == 0 and f'resumed at epoch {cut + 1} (stage 2' in out.read_text()
    epochs = list(pd.read_csv(resumed / 'history.csv').epoch)
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) > cut
    _same_run(whole, resumed)
    assert not (resumed / 'backup').exists()  # a finished run is never resumed


def test_resume_keeps_the_early_stopping_and_plateau_counters(tiny, monkeypatch):
    """A tiny rate keeps the validation accuracy flat: ReduceLROnPlateau (patience 5,
    experiment.py) halves the rate after epoch 6 and early stopping (learn.patience 7)
    ends the run after epoch 8 of 10. Cut after epoch 4, both are counting; a resumed run
    that lost their counters would halve the rate and stop later."""
    overrides = ('learn.n_epochs=10', 'learn.patience=7', 'learn.lr=1e-6')
    code, whole, _ = run(tiny, 'whole_counters', *overrides)
    assert code == 0
    lr = pd.read_csv(whole / 'history.csv').lr  # the rate each epoch trained with
    assert len(lr) == 8  # early stopping fired
    assert list(lr) == pytest.approx([1e-6] * 6 + [5e-7] * 2, rel=1e-5)  # so did the plateau
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 4)
        code, resumed, out = run(tiny, 'resumed_counters', *overrides)
    assert code == 130
    code, _, _ = run(tiny, 'resumed_counters', *overrides)
    assert code == 0 and 'resumed at epoch 5' in out.read_text()
    _same_run(whole, resumed)


def test_resume_with_another_config_is_refused(tiny, monkeypatch, capsys):
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 1)
        code, run_dir, _ = run(tiny, 'changed', 'learn.n_epochs=2')
    assert code == 130
    code, _, _ = run(tiny, 'changed', 'learn.n_epochs=2', 'learn.lr=0.01')
    assert code == 2 and 'with another value of learn.lr' in one_error_line(capsys)
    assert (run_dir / 'backup' / 'state.pkl').is_file()


@pytest.mark.slow
def test_killed_training_subprocess_continues(tiny):
    """SIGKILL a real `python main.py` after its 2nd epoch; the same command continues it:
    each epoch once in history.csv, the log says where it resumed, the run completes."""
    root, _ = tiny
    args = [sys.executable, 'main.py', '-p', str(config_file(tiny, name='killed')),
            '-o', 'ctrl.run_name=killed', '-o', 'learn.n_epochs=6']
    run_dir = root / 'logs' / 'killed'
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None and not (
                (run_dir / 'history.csv').exists() and
                len(pd.read_csv(run_dir / 'history.csv')) >= 2):
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, 'the run ended before it was killed'
    assert not (run_dir / 'results.json').exists()
    again = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert list(pd.read_csv(run_dir / 'history.csv').epoch) == [1, 2, 3, 4, 5, 6]
    resumed = re.search(r'resumed at epoch (\d+)', (root / 'logs' / 'killed.out').read_text())
    assert resumed and int(resumed[1]) in (2, 3)  # 2: killed before epoch 2's backup
    assert json.loads((run_dir / 'results.json').read_text())['status'] == 'finished'


def test_run_name_with_a_folder_level_leaves_nothing_after_an_error(tmp_path, make_cfg):
    """The sweeps name runs NAME/point_seed0: discarding removes the folders it made."""
    cfg = make_cfg(f'ctrl.logs_dir={tmp_path}/logs')
    cfg['ctrl']['run_name'] = 'sweep_x/point_seed0'  # (config.py refuses '/' until then)
    folder = runfolder.RunFolder(cfg)
    folder.open()
    print('a line of the log')
    assert (tmp_path / 'logs' / 'sweep_x' / 'point_seed0' / 'config.yaml').is_file()
    assert (tmp_path / 'logs' / 'sweep_x' / 'point_seed0.out').is_file()
    folder.close(discard=True)
    assert not (tmp_path / 'logs').exists()


# ----------------------------------------------------------------------------- issue 19

def test_a_read_only_logs_folder_is_one_line(tiny, capsys, monkeypatch):
    """Issue 19, case 8: exit 2 and one line naming the folder, as for ctrl.features_dir.
    (Tests run as root, which chmod does not stop: the refusal is simulated.)"""
    import os
    root, _ = tiny
    logs, real_mkdir = str(root / 'logs'), os.mkdir

    def read_only(path, *args, **kwargs):
        if str(path).startswith(logs):
            raise PermissionError(13, 'Permission denied', str(path))
        return real_mkdir(path, *args, **kwargs)
    monkeypatch.setattr(os, 'mkdir', read_only)
    code, run_dir, out = run(tiny, 'read_only_logs')
    assert code == 2
    assert one_error_line(capsys) == (f'error: cannot write the run folder {run_dir}: '
                                      f'Permission denied ({run_dir}; ctrl.logs_dir)')
    assert nothing_left(run_dir, out)


def test_an_unreadable_backup_is_one_line(tiny, capsys, monkeypatch):
    """Issue 19, case 8: a truncated backup (UnpicklingError / EOFError) or one of another
    layout (a part missing: KeyError) stops the rerun with one line saying so and how to
    start again (exit 2); the backup and the .out of the interrupted run stay as they
    were; ctrl.overwrite true then starts the run again."""
    import pickle
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 1)
        code, run_dir, out = run(tiny, 'bad_backup')
    assert code == 130
    backup = run_dir / 'backup' / 'state.pkl'
    saved, log = backup.read_bytes(), out.read_text()
    damaged = {'is unreadable (UnpicklingError: pickle data was truncated)':
               saved[:len(saved) // 2],
               'lacks experiment, trainer': pickle.dumps({'run': {}, 'history': {}})}
    for message, data in damaged.items():
        backup.write_bytes(data)
        code, _, _ = run(tiny, 'bad_backup')
        line = one_error_line(capsys)
        assert code == 2 and line.startswith(f'error: the backup {backup} {message}'), line
        assert line.endswith('so the run cannot continue; set ctrl.overwrite true to start '
                             'it again')
        assert backup.read_bytes() == data and out.read_text() == log
    code, _, _ = run(tiny, 'bad_backup', 'ctrl.overwrite=true', 'learn.n_epochs=1')
    assert code == 0 and json.loads((run_dir / 'results.json').read_text())['status'] == \
        'finished'


def _diverge_at(monkeypatch, epoch, step):
    """The loss of (epoch, step) (1-based) reads NaN to StopOnNonFinite."""
    real = callbacks.StopOnNonFinite.on_train_batch_end

    def nan_there(self, batch, logs=None):
        if (self.epoch + 1, batch + 1) == (epoch, step):
            logs = {**(logs or {}), 'loss': float('nan')}
        real(self, batch, logs)
    monkeypatch.setattr(callbacks.StopOnNonFinite, 'on_train_batch_end', nan_there)


@pytest.mark.parametrize('epoch, kept', [(1, 'nothing was saved yet'),
                                         (2, 'kept: history.csv, model.keras')])
def test_a_diverged_run_says_what_it_kept(tiny, capsys, monkeypatch, epoch, kept):
    """Issue 19, case 12: diverging at epoch 1, step 2 nothing is on disk yet; at epoch 2
    the history and the model of epoch 1 are."""
    _diverge_at(monkeypatch, epoch, 2)
    code, run_dir, out = run(tiny, f'diverged_at_{epoch}', 'learn.n_epochs=3')
    assert code == 1
    message = (f'training diverged: the loss is nan at epoch {epoch}, step 2 (try a lower '
               f'learn.lr); {kept}')
    assert f'run diverged_at_{epoch} failed: {message}' in capsys.readouterr().err
    assert json.loads((run_dir / 'results.json').read_text())['message'] == message
    assert (run_dir / 'history.csv').exists() == (run_dir / 'model.keras').exists() == \
        (epoch > 1)


def test_the_log_holds_one_evaluation_block_once_the_run_is_finished(tiny, monkeypatch):
    """Issue 19, case 14: a run stopped after its prediction (here in the plots, as a kill
    would) has no accuracy in its .out yet; continued, it holds exactly one block."""
    import plots

    def boom(*args, **kwargs):
        raise RuntimeError('plotting failed')
    with monkeypatch.context() as patch:
        patch.setattr(plots, 'curves', boom)
        code, run_dir, out = run(tiny, 'one_block')
    assert code == 1 and not (run_dir / 'results.json').exists()
    assert 'EVALUATION' not in out.read_text() and 'ACCURACY - MICRO' not in out.read_text()
    code, _, _ = run(tiny, 'one_block')
    assert code == 0
    log = out.read_text()
    assert log.count('ACCURACY - MICRO') == log.count('EVALUATION') == 1
    accuracy = json.loads((run_dir / 'results.json').read_text())['accuracy_micro']
    assert f'ACCURACY - MICRO: {accuracy:.2f} %' in log


def test_ctrl_c_waits_for_a_safe_point(monkeypatch):
    """Issue 19, case 6: inside the block a first SIGINT only marks the interrupt, raised
    at the next interrupt_point (or the block's end); a second one interrupts at once."""
    import os
    import utils
    # The handler in force before: Python's default, or SIG_IGN where the tests run in a
    # background job of a non-interactive shell.
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with utils.interrupts_at_safe_points():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler has run: nothing was raised
            reached = True
            utils.interrupt_point()
    assert reached
    with pytest.raises(KeyboardInterrupt):
        with utils.interrupts_at_safe_points():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    with pytest.raises(KeyboardInterrupt):
        with utils.interrupts_at_safe_points():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            pytest.fail('the second Ctrl-C did not interrupt at once')
    assert signal.getsignal(signal.SIGINT) is before  # the block put it back


@pytest.mark.slow
def test_ctrl_c_at_the_stage_switch_exits_130(tiny):
    """Issue 19, case 6: SIGINT to a real `python main.py` right after the mixup warm-up
    stage (its first epoch) ends it with exit 130 and the message, the backup intact."""
    root, _ = tiny
    args = [sys.executable, 'main.py', '-p', str(config_file(tiny, name='ctrl_c')),
            '-o', 'ctrl.run_name=ctrl_c', '-o', 'learn.mode=0', '-o', 'learn.mixup=true',
            '-o', 'learn.mixup_warmup_epochs=1', '-o', 'learn.n_epochs=6']
    run_dir = root / 'logs' / 'ctrl_c'
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        while proc.poll() is None and not (run_dir / 'history.csv').exists():
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert 'interrupted: run the same command again to continue from the last epoch' in err
    assert 'Traceback' not in err
    assert (run_dir / 'backup' / 'state.pkl').is_file()
    assert not (run_dir / 'results.json').exists()
