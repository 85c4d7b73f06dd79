"""predict.py: a run's whole ensemble (every fold and snapshot member, the run's rule,
-o overrides of its config), the weighted average of several runs (--runs), and runs that
cannot be scored as they are (issue 19, cases 4 and 7): one line and exit 2 for an
unfinished run (unless --unfinished), a corrupt or empty model.keras, a garbage scaler.npz,
a dataset whose classes are not the model's, an output that cannot be written, runs that
cannot be averaged. One tiny finished run, copied by each test that damages it, and one
tiny ensemble run (2 folds x 2 snapshots)."""
import shutil

import numpy as np
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


# ----------------------------------------------------------------------------- ensembles

# 2 folds x 2 snapshots of the tiny patch model.
ENSEMBLE = {'learn': {'folds': 2, 'lr_schedule': 'cyclic_cosine', 'cycles': 2,
                      'cycle_epochs': 1, 'n_epochs': 2}}


@pytest.fixture(scope='module')
def ensemble_run(finished):
    root, data, _ = finished
    changes = {s: {**SMALLER.get(s, {}), **ENSEMBLE.get(s, {})} for s in {*SMALLER, *ENSEMBLE}}
    params = write_tiny_config(root / 'ensemble.yaml', data, root, changes)
    assert main.main(['-p', str(params), '-o', 'ctrl.run_name=ens']) == 0
    return root / 'logs' / 'ens'


@pytest.fixture(scope='module')
def test_scores(finished, ensemble_run):
    """predict.py's scores of the test clips by the single-model run and the ensemble."""
    root, _, single = finished
    frames = []
    for run in (single, ensemble_run):
        out = root / f'{run.name}_test.csv'
        assert predict.main([str(run), '--clips', 'test', '--out', str(out)]) == 0
        frames.append(pd.read_csv(out))
    return frames


def member_scores(run_dir, clips, overrides=()):
    """Each recorded member's clip scores, scored one model at a time -> (rows, [M, N, K])."""
    import json

    import keras

    import config
    import data
    import datasets
    import eval as evaluation
    import feat_extract
    import pipeline
    cfg = config.load_config(run_dir / 'config.yaml', list(overrides))
    table, classes = datasets.load(cfg)
    store = feat_extract.features(cfg, table)
    patches = pipeline.patch_table(cfg, store)
    with np.load(run_dir / 'scaler.npz') as scaler:
        mean, std = scaler['mean'], scaler['std']
    source = pipeline.batch_source(cfg, store, patches, table, mean, std,
                                   data.lsr_eps(cfg['learn'], classes))
    rows = np.flatnonzero(predict.fusion.CLIPS[clips](table).to_numpy() & (store.length > 0))
    names = json.loads((run_dir / 'results.json').read_text())['ensemble']['members']
    scores = [evaluation.predict_clips(keras.saving.load_model(run_dir / n, compile=False),
                                       source, patches, rows, cfg)[1] for n in names]
    return table, classes, rows, np.stack(scores)


def test_the_whole_ensemble_is_scored_as_the_run_scored_it(ensemble_run, test_scores):
    """Every fold's snapshots (4 members), averaged with the run's rule: the mean of each
    member's scores (numpy), and the run's own predictions.csv on the test clips."""
    got = test_scores[1]
    _, classes, _, members = member_scores(ensemble_run, 'test')
    assert len(members) == 4
    np.testing.assert_allclose(got[classes].to_numpy(), members.mean(axis=0), rtol=2e-5)
    own = pd.read_csv(ensemble_run / 'predictions.csv')
    assert list(got.fname) == list(own.fname)
    np.testing.assert_allclose(got[classes].to_numpy(), own[classes].to_numpy(), rtol=2e-5)


def test_pseudo_labels_of_the_ensemble_are_what_learn_reads(ensemble_run, tmp_path, capsys):
    import data
    out = tmp_path / 'pseudo.csv'
    assert predict.main([str(ensemble_run), '--out', str(out)]) == 0
    assert '(4 models, amean)' in capsys.readouterr().out
    table, classes, rows, members = member_scores(ensemble_run, 'unverified')
    read = data.read_pseudo_labels(out, table, rows, classes)
    np.testing.assert_allclose(read[rows], members.mean(axis=0), rtol=2e-5, atol=1e-7)


def test_overrides_apply_to_the_runs_config(ensemble_run, test_scores, tmp_path, capsys):
    """-o recognizer.* changes how the members score (patch scores averaged arithmetically,
    the members geometrically), as numpy computes from each member's scores."""
    out = tmp_path / 'over.csv'
    overrides = ['recognizer.aggregate=amean', 'recognizer.ensemble=gmean']
    argv = [str(ensemble_run), '--clips', 'test', '--out', str(out)]
    assert predict.main([*argv, *[x for o in overrides for x in ('-o', o)]]) == 0
    assert '(4 models, gmean)' in capsys.readouterr().out
    _, classes, _, members = member_scores(ensemble_run, 'test', overrides)
    got = pd.read_csv(out)[classes].to_numpy()
    np.testing.assert_allclose(got, np.exp(np.log(members).mean(axis=0)), rtol=2e-5)
    assert not np.allclose(got, test_scores[1][classes].to_numpy(), rtol=1e-4)


def test_an_old_scripts_dash_o_output_is_one_line(finished, tmp_path, capsys):
    _, _, run_dir = finished
    line = error_line(capsys, [str(run_dir), '-o', 'scores.csv', '--out', str(tmp_path / 'x')])
    assert line == ('error: -o scores.csv is not section.key=value: -o overrides a config '
                    'key, as in main.py and sweep.py; the output is --out scores.csv')
    line = error_line(capsys, [str(run_dir), '-o', 'recognizer.bogus=1',
                               '--out', str(tmp_path / 'x.csv')])
    assert line.startswith('error: unknown config key recognizer.bogus; valid keys')


# ----------------------------------------------------------------------------- several runs

def test_runs_are_averaged_with_weights(finished, ensemble_run, test_scores, tmp_path, capsys):
    """A single-model run (weight 1) and a 4-model ensemble (weight 3): numpy's weighted
    arithmetic and geometric means of each run's own scores; results.json holds the
    dataset's metric (accuracy) of the average and what was averaged."""
    import json
    _, data, single = finished
    classes = [c for c in test_scores[0].columns if c not in ('fname', 'predicted')]
    p = np.stack([e[classes].to_numpy(np.float64) for e in test_scores])
    w = np.array([1.0, 3.0])[:, None, None] / 4
    truth = pd.read_csv(data / 'FSDnoisy18k.meta' / 'test.csv').set_index('fname')
    for method, want in (('amean', (w * p).sum(axis=0)),
                         ('gmean', np.exp((w * np.log(p)).sum(axis=0)))):
        out = tmp_path / method
        assert predict.main(['--runs', f'{single}:1', f'{ensemble_run}:3', '--clips', 'test',
                             '--average', method, '--out', str(out)]) == 0
        assert 'ACCURACY - MICRO' in capsys.readouterr().out
        fused = pd.read_csv(out / 'predictions.csv')
        np.testing.assert_allclose(fused[classes].to_numpy(), want, rtol=5e-5)
        results = json.loads((out / 'results.json').read_text())
        right = np.array(classes)[want.argmax(axis=1)] == truth.loc[fused.fname, 'label']
        assert results['accuracy_micro'] == pytest.approx(100 * right.mean(), abs=1e-3)
        assert results['fusion']['method'] == method
        assert [(r['weight'], r['n_models']) for r in results['fusion']['runs']] == \
            [(1.0, 1), (3.0, 4)]


def test_runs_of_another_dataset_or_classes_are_refused(finished, tmp_path, capsys):
    root, data, run_dir = finished
    other = shutil.copytree(data, tmp_path / 'other')
    moved = shutil.copytree(run_dir, tmp_path / 'moved')
    cfg = yaml.safe_load((moved / 'config.yaml').read_text())
    cfg['ctrl']['dataset_path'] = str(other)
    (moved / 'config.yaml').write_text(yaml.safe_dump(cfg))
    line = error_line(capsys, ['--runs', str(run_dir), str(moved), '--clips', 'test',
                               '--out', str(tmp_path / 'f')])
    assert line == (f'error: --runs {run_dir} and {moved} are of different dataset folders '
                    f'({data.resolve()} vs {other.resolve()}): their scores cannot be averaged')
    line = error_line(capsys, ['--runs', f'{run_dir}:x', '--out', str(tmp_path / 'f')])
    assert line.startswith(f'error: --runs {run_dir}:x: the weight after ":" must be a number')
