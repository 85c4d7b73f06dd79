"""predict.py on runs that cannot be scored as they are (issue 19, cases 4 and 7): one line
and exit 2 for an unfinished run (unless --unfinished), a corrupt or empty model.keras, a
garbage scaler.npz, a dataset whose classes are not the model's, an output that cannot be
written. One tiny finished run, copied by each test that damages it."""
import shutil

import pandas as pd
import pytest
import yaml

import main
import predict
from conftest import tiny_dataset, write_tiny_config

SMALLER = {'ctrl': {'workers': 1}, 'extract': {'n_mels': 16},
           'learn': {'n_classes': 3, 'batch_size': 16, 'n_epochs': 1,
                     'predict_batch_size': 128}}


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp('predict')
    data = tiny_dataset(root / 'tiny', n_classes=3, train_per_class=6, test_per_class=2,
                        seed=2)
    params = write_tiny_config(root / 'exp.yaml', data, root, SMALLER)
    assert main.main(['-p', str(params), '-o', 'ctrl.run_name=done']) == 0
    return root, data, root / 'logs' / 'done'


def copy_run(finished, name):
    root, _, run_dir = finished
    return shutil.copytree(run_dir, root / 'logs' / name)


def error_line(capsys, argv):
    """predict.main(argv) exits 2 with one 'error: ' line and no traceback -> the line."""
    assert predict.main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith('error: ')]
    assert len(lines) == 1 and 'Traceback' not in err, err
    return lines[0]


def test_a_finished_run_is_scored(finished, tmp_path):
    _, _, run_dir = finished
    out = tmp_path / 'new' / 'scores.csv'
    assert predict.main([str(run_dir), '--clips', 'test', '--out', str(out)]) == 0
    assert len(pd.read_csv(out)) == 6


def test_an_unfinished_run_is_refused_unless_asked_for(finished, tmp_path, capsys):
    run_dir = copy_run(finished, 'unfinished')
    (run_dir / 'results.json').unlink()
    out = tmp_path / 'scores.csv'
    line = error_line(capsys, [str(run_dir), '--out', str(out)])
    assert line == (f'error: {run_dir} has not finished (no results.json): its model.keras '
                    f'is the last one it saved, not a finished run\'s; pass --unfinished to '
                    f'score it anyway')
    assert not out.exists()
    assert predict.main([str(run_dir), '--unfinished', '--clips', 'test', '--out', str(out)]) == 0
    assert (f'warning: {run_dir} has not finished (no results.json): scoring the last '
            f'model.keras it saved') in capsys.readouterr().err
    assert len(pd.read_csv(out)) == 6


@pytest.mark.parametrize('content', [b'', b'PK\x03\x04 not really a zip' * 10])
def test_a_corrupt_model_is_one_line(finished, tmp_path, capsys, content):
    run_dir = copy_run(finished, f'bad_model_{len(content)}')
    (run_dir / 'model.keras').write_bytes(content)
    line = error_line(capsys, [str(run_dir), '--out', str(tmp_path / 's.csv')])
    assert line.startswith(f'error: {run_dir}/model.keras is not a readable Keras model (')


def test_a_garbage_scaler_is_one_line(finished, tmp_path, capsys):
    run_dir = copy_run(finished, 'bad_scaler')
    (run_dir / 'scaler.npz').write_bytes(b'\x80\x04garbage' * 20)
    line = error_line(capsys, [str(run_dir), '--out', str(tmp_path / 's.csv')])
    assert line.startswith(f'error: {run_dir}/scaler.npz is not a readable scaler.npz (')


def test_a_dataset_whose_classes_changed_is_one_line(finished, tmp_path, capsys):
    """The dataset lost a class since the run (learn.n_classes null: taken from the data)."""
    root, data, _ = finished
    changed = shutil.copytree(data, root / 'changed')
    for csv in ('train.csv', 'test.csv'):
        path = changed / 'FSDnoisy18k.meta' / csv
        frame = pd.read_csv(path)
        frame[frame.label != sorted(frame.label.unique())[0]].to_csv(path, index=False)
    run_dir = copy_run(finished, 'changed')
    cfg = yaml.safe_load((run_dir / 'config.yaml').read_text())
    cfg['ctrl']['dataset_path'], cfg['learn']['n_classes'] = str(changed), None
    (run_dir / 'config.yaml').write_text(yaml.safe_dump(cfg))
    line = error_line(capsys, [str(run_dir), '--out', str(tmp_path / 's.csv')])
    assert line.startswith(f'error: the model of {run_dir} scores 3 classes but its dataset '
                           f'{changed} has 2 now (')
    assert line.endswith('): the dataset changed since the run')


def test_an_output_that_cannot_be_created_is_one_line(finished, tmp_path, capsys):
    _, _, run_dir = finished
    (tmp_path / 'file').write_text('a file, not a folder')
    out = tmp_path / 'file' / 'scores.csv'
    line = error_line(capsys, [str(run_dir), '--out', str(out)])
    assert line.startswith(f'error: --out {out}: cannot create its folder {tmp_path}/file (')
    line = error_line(capsys, [str(run_dir), '--out', str(tmp_path)])
    assert line == f'error: --out {tmp_path} is a folder: give the CSV file to write'
