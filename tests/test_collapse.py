"""Issue 19, case 3: a collapsed run (finite loss stuck, one score vector for every clip)
ends as `collapsed` (exit 1) instead of being reported as a result; a learning run is not
flagged. Runs go through main.main on a tiny synthetic dataset."""
import json

import numpy as np
import pytest

import callbacks
import main
from conftest import tiny_dataset, write_tiny_config

SMALLER = {'ctrl': {'workers': 1}, 'extract': {'n_mels': 16},
           'learn': {'n_classes': 3, 'batch_size': 16, 'n_epochs': 4, 'patience': 4,
                     'predict_batch_size': 128}}


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp('collapse')
    data = tiny_dataset(root / 'tiny', n_classes=3, train_per_class=10, test_per_class=3,
                        seed=5)
    return root, write_tiny_config(root / 'exp.yaml', data, root, SMALLER)


def run(tiny, name, *overrides):
    root, params = tiny
    args = ['-p', str(params), '-o', f'ctrl.run_name={name}']
    for o in overrides:
        args += ['-o', o]
    return main.main(args), root / 'logs' / name


def test_a_collapsed_run_ends_as_collapsed(tiny, capsys):
    code, run_dir = run(tiny, 'huge_lr', 'learn.lr=1e4')
    assert code == 1
    err = capsys.readouterr().err
    results = json.loads((run_dir / 'results.json').read_text())
    assert results['status'] == 'collapsed' and results['epoch'] == 3, results
    assert results['message'].startswith('training collapsed: at epoch 3 the training loss')
    assert f'run huge_lr failed: {results["message"]}' in err
    assert 'ACCURACY' not in (run_dir.parent / 'huge_lr.out').read_text()
    assert not (run_dir / 'predictions.csv').exists()


def test_a_learning_run_is_not_flagged(tiny):
    code, run_dir = run(tiny, 'healthy')
    assert code == 0
    assert json.loads((run_dir / 'results.json').read_text())['status'] == 'finished'


def test_constant_scores():
    rng = np.random.default_rng(0)
    one_hot = np.tile([0.0, 1.0, 0.0], (20, 1))
    assert callbacks.constant_scores(one_hot)
    assert callbacks.constant_scores(one_hot + rng.normal(0, 1e-5, one_hot.shape))
    # An untrained model's near-uniform scores still differ between clips.
    uniform = rng.dirichlet(np.full(3, 300.0), size=20)
    assert not callbacks.constant_scores(uniform)
    assert not callbacks.constant_scores(one_hot[:1])  # one clip says nothing
