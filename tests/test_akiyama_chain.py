"""Akiyama & Sato's system (config/dcase19_akiyama/, README "Akiyama & Sato's system step by
step") as a chain of dry runs (ctrl.fast_dev_run) on synthetic FSDKaggle2019 data, each step
the command README gives: model A (ResNet34, multitask, 5 folds x 8 snapshots), its whole
ensemble's pseudo labels of the noisy clips (predict.py), model B from model A's weights
with those pseudo labels, model C (8 s crops), EnvNet-v2 on waveforms, and the weighted
model averaging of the four (predict.py --runs).

ResNet34's 40 snapshots per run are each saved and scored (with length buckets and two
padding views) even in a dry run: the chain takes ~40 min on 2 CPU cores, more than CI's
budget allows beside the rest of the suite, so it runs only with NOISY_SED_LONG_DRY_RUNS=1
(README, "Tests")."""
import json
import os

import numpy as np
import pandas as pd
import pytest

import main
import predict
from test_fast_dev_run import LAYOUTS, ROOT, check_structure, evaluation_block

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    os.environ.get('NOISY_SED_LONG_DRY_RUNS') != '1',
    reason='the Akiyama & Sato chain of dry runs takes ~40 min: NOISY_SED_LONG_DRY_RUNS=1')]

RECIPES = ROOT / 'config' / 'dcase19_akiyama'


@pytest.fixture(scope='module')
def chain(tmp_path_factory):
    """(data, logs, run): run(yaml, name, *overrides) dry-runs a recipe into logs/name."""
    import synthetic
    root = tmp_path_factory.mktemp('akiyama')
    data, features, logs = root / 'data', root / 'features', root / 'logs'
    synthetic.make_dataset(data, clean_fraction=0.5, noise_rate=0.4, min_dur=2.0,
                           max_dur=4.0, sr=44100, seed=3, layout='fsdkaggle2019',
                           **LAYOUTS['fsdkaggle2019'])

    def run(yaml, name, *overrides):
        path = RECIPES / yaml
        code = main.run(path, ['ctrl.fast_dev_run=true', f'ctrl.dataset_path={data}',
                               f'ctrl.features_dir={features}', f'ctrl.logs_dir={logs}',
                               f'ctrl.run_name={name}', 'ctrl.verbose=0', 'ctrl.workers=1',
                               *overrides])
        out = (logs / f'{name}.out').read_text()
        assert code == 0, out[-3000:]
        block = evaluation_block(out)
        assert block[1].startswith('FAST DEV RUN: numbers are not results'), block
        import config
        return check_structure(logs / name, config.load_config(path)), out
    return data, logs, run


def test_the_chain_runs_step_by_step(chain, tmp_path):
    data, logs, run = chain
    results_a, _ = run('model_a.yaml', 'model_a')
    assert results_a['ensemble']['n_models'] == 5 * 8

    pseudo = tmp_path / 'model_a_unverified.csv'
    assert predict.main([str(logs / 'model_a'), '--clips', 'unverified', '--out',
                         str(pseudo)]) == 0
    noisy = pd.read_csv(data / 'FSDKaggle2019.meta' / 'train_noisy_post_competition.csv')
    scored = pd.read_csv(pseudo)
    assert sorted(scored.fname) == sorted(set(scored.fname) & set(noisy.fname))
    assert len(scored) > 0 and np.isfinite(scored.iloc[:, 2:].to_numpy(float)).all()

    results_b, out_b = run('model_b.yaml', 'model_b', f'learn.init_from={logs / "model_a"}',
                           f'learn.pseudo_labels={pseudo}')
    assert results_b['ensemble']['n_models'] == 5 * 7
    assert 'soft pseudo labels of' in out_b and 'pseudo-label stream' in out_b
    hist = pd.read_csv(logs / 'model_b' / 'history_1.csv')
    assert (hist.loss_pseudo > 0).all()

    results_c, _ = run('model_a_crop1024.yaml', 'model_c')
    assert results_c['ensemble']['n_models'] == 5 * 6
    results_e, out_e = run('envnet.yaml', 'envnet')
    assert results_e['ensemble']['n_models'] == 5 * 3
    assert 'model: envnet_v2' in out_e

    fused = tmp_path / 'fused'
    assert predict.main(['--runs', f'{logs / "model_a"}:3', f'{logs / "model_b"}:4',
                         f'{logs / "model_c"}:3', f'{logs / "envnet"}:1', '--clips', 'test',
                         '--out', str(fused)]) == 0
    results = json.loads((fused / 'results.json').read_text())
    assert [r['weight'] for r in results['fusion']['runs']] == [3, 4, 3, 1]
    assert 0 <= results['lwlrap'] <= 1
    # the fused scores are the weighted mean of each run's own scores of the same clips
    # (predict.py of one run: its whole ensemble, the same length buckets and views; a
    # run's predictions.csv holds only the dry run's cut test clips, bucketed apart)
    runs = []
    for name in ('model_a', 'model_b', 'model_c', 'envnet'):
        one = tmp_path / f'{name}.csv'
        assert predict.main([str(logs / name), '--clips', 'test', '--out', str(one)]) == 0
        runs.append(pd.read_csv(one).set_index('fname'))
    got = pd.read_csv(fused / 'predictions.csv').set_index('fname')
    classes = [c for c in got.columns if c != 'predicted']
    want = sum(w * r.loc[got.index, classes].to_numpy(float)
               for w, r in zip((3, 4, 3, 1), runs)) / 11
    np.testing.assert_allclose(got[classes].to_numpy(float), want, rtol=1e-4, atol=1e-6)
