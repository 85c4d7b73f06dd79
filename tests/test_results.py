"""results.py and the report built from it: the evaluation block's exact text for one
model, an ensemble and k folds; results.json and the backup state round trips; a metric
added to metrics.METRICS alone reaches the report, results.json and the sweep summary."""
import json

import numpy as np
import pandas as pd
import pytest

import eval as evaluation
import metrics
import sweep
import sweep_summary
from results import Evaluation, Results

RULE = '=' * 72
NOISE = {'rate': 0.3, 'kind': 'symmetric', 'subset': 'train', 'share_changed': 0.25}
ENSEMBLE = {'n_models': 6, 'folds': 3, 'snapshots': 2, 'method': 'amean',
            'members': [f'snapshot_{f}_{c}.keras' for f in (1, 2, 3) for c in (1, 2)]}


def _accuracy_evaluation():
    return Evaluation('r1', ['accuracy'], {'accuracy_micro': 75.0, 'precision_macro': 0.5,
                                           'recall_macro': 0.75, 'f1_macro': 0.6},
                      {'n_files': np.array([2, 2]), 'accuracy': np.array([50.0, 100.0])},
                      ['a', 'bb'], 4, 5, 'noisy', 12.34)


ACCURACY_BLOCK = ['',
                  'per-class accuracy, class order:',
                  '  a   n =     2  accuracy =  50.00 %',
                  '  bb  n =     2  accuracy = 100.00 %',
                  '',
                  'per-class accuracy, best first:',
                  '  bb  n =     2  accuracy = 100.00 %',
                  '  a   n =     2  accuracy =  50.00 %']


def test_lines_of_one_model():
    results = Results(label_noise=NOISE)
    results.selected('best_val', 7)
    results.evaluated(_accuracy_evaluation())
    assert evaluation.evaluation_lines(results) == [
        '', RULE, 'EVALUATION',
        'ACCURACY - MICRO: 75.00 % (4/5 test files, train_data=noisy)',
        'model evaluated: learn.model_selection best_val, epoch 7',
        *ACCURACY_BLOCK,
        '', 'wall time of the job: 12.3 s', RULE]


def test_lines_of_an_ensemble_of_one_folds_snapshots():
    results = Results()
    results.snapshots([1, 2])
    results.ensembled(dict(ENSEMBLE, n_models=2, folds=1, members=ENSEMBLE['members'][:2]))
    results.evaluated(_accuracy_evaluation())
    assert evaluation.evaluation_lines(results) == [
        '', RULE, 'EVALUATION',
        'ACCURACY - MICRO: 75.00 % (4/5 test files, train_data=noisy)',
        'ensemble: 2 models (1 folds x 2 snapshots), amean',
        *ACCURACY_BLOCK,
        '', 'wall time of the job: 12.3 s', RULE]
    saved = results.to_json()
    assert saved['model_selection'] == 'ensemble' and 'evaluated_epoch' not in saved
    assert saved['snapshot_cycles'] == [1, 2]


def _k_fold_results():
    """Three folds whose members are snapshots; what run_folds records."""
    results = Results(label_noise=NOISE)
    per_fold = []
    for fold in (1, 2, 3):
        fold_results = Results(label_noise=NOISE)
        fold_results.noise_detected({'precision': 0.5, 'recall': 0.25, 'n_flagged': 4,
                                     'n_wrong': 8})
        fold_results.snapshots([1, 2])
        per_fold.append({**fold_results.to_json(), 'fold': fold})
    results.selected('last', 9)  # fold 1's own selection: it moves under folds
    results.fold_results(per_fold)
    results.ensembled(ENSEMBLE)
    return results


def test_lines_and_results_json_of_k_folds(tmp_path):
    results = _k_fold_results()
    results.evaluated(Evaluation(
        'kf', ['lwlrap', 'map3'], {'lwlrap': 0.123456789, 'map_at_3': 0.5,
                                   'precision_macro': float('nan'), 'recall_macro': 0.25,
                                   'f1_macro': 0.2},
        {'lwlrap': np.array([0.25, np.nan]), 'lwlrap_weight': np.array([1.0, 0.0])},
        ['dog', 'cat'], 3, 3, 'all', 2.0))
    assert evaluation.evaluation_lines(results) == [
        '', RULE, 'EVALUATION',
        'LWLRAP: 0.1235 (3/3 test files, train_data=all)',
        'MAP@3: 0.5000 (3/3 test files, train_data=all)',
        'ensemble: 6 models (3 folds x 2 snapshots), amean',
        '', 'per-class lwlrap, class order:',
        '  dog  lwlrap = 0.2500  (weight 1.0000)',
        '  cat  lwlrap = nan  (weight 0.0000)',
        '', 'wall time of the job: 2.0 s', RULE]
    evaluation.write_results(tmp_path, results)
    fold = {'label_noise': NOISE, 'model_selection': 'snapshots', 'snapshot_cycles': [1, 2],
            'noise_detection': {'precision': 0.5, 'recall': 0.25, 'n_flagged': 4, 'n_wrong': 8}}
    expected = {'run_name': 'kf', 'status': 'finished', 'lwlrap': 0.123457, 'map_at_3': 0.5,
                'precision_macro': None, 'recall_macro': 0.25, 'f1_macro': 0.2,
                'n_files_evaluated': 3, 'n_files_listed': 3, 'train_data': 'all',
                'per_class': {'dog': {'lwlrap': 0.25, 'lwlrap_weight': 1.0},
                              'cat': {'lwlrap': None, 'lwlrap_weight': 0.0}},
                'wall_time_s': 2.0, 'label_noise': NOISE,
                'folds': [dict(fold, fold=f) for f in (1, 2, 3)],
                'model_selection': 'ensemble', 'ensemble': ENSEMBLE}
    assert json.loads((tmp_path / 'results.json').read_text()) == expected


def test_results_json_and_state_round_trips(tmp_path):
    """results.json of one model, key by key in order; read back into a fresh Results it
    gives the same file. The backup's state_dict is a copy that load_state_dict restores,
    and resets what it does not name."""
    results = Results(label_noise=NOISE)
    results.noise_detected_per_epoch([3, 4], [
        {'precision': 0.5, 'recall': 0.125, 'n_flagged': 2, 'n_wrong': 8},
        {'precision': 0.75, 'recall': 0.375, 'n_flagged': 4, 'n_wrong': 8}])
    results.selected('best_val', 4)
    results.evaluated(_accuracy_evaluation())
    evaluation.write_results(tmp_path, results)
    text = (tmp_path / 'results.json').read_text()
    saved = json.loads(text)
    assert list(saved) == ['run_name', 'status', 'accuracy_micro', 'precision_macro',
                           'recall_macro', 'f1_macro', 'n_files_evaluated', 'n_files_listed',
                           'train_data', 'per_class', 'wall_time_s', 'label_noise',
                           'noise_detection', 'model_selection', 'evaluated_epoch']
    assert saved['noise_detection'] == {'precision': [0.5, 0.75], 'recall': [0.125, 0.375],
                                        'n_flagged': [2, 4], 'n_wrong': [8, 8],
                                        'epoch': [3, 4]}
    assert saved['per_class'] == {'a': {'n_files': 2, 'accuracy': 50.0},
                                  'bb': {'n_files': 2, 'accuracy': 100.0}}
    assert saved['wall_time_s'] == 12.34 and saved['evaluated_epoch'] == 4

    back = Results()
    back.load_state_dict(saved)
    back.evaluated(_accuracy_evaluation())
    evaluation.write_results(tmp_path, back)
    assert (tmp_path / 'results.json').read_text() == text

    state = results.state_dict()
    assert 'run_name' not in state and 'per_class' not in state  # training state only
    state['noise_detection']['epoch'].append(99)  # a copy: the results keep their own
    assert results.noise_detection['epoch'] == [3, 4]
    fresh = Results(self_verification_round=2)
    fresh.load_state_dict(results.state_dict())
    assert fresh.self_verification_round is None
    assert fresh.state_dict() == results.state_dict()


def _my_metric(y_true, scores):
    """Mean score of the true labels: a metric that only this test knows."""
    truth = np.asarray(y_true) > 0
    return {'mean_true_score': float(np.asarray(scores)[truth].mean())}


def test_a_metric_added_to_metrics_alone_reaches_report_results_and_sweep(
        tmp_path, monkeypatch):
    monkeypatch.setitem(metrics.METRICS, 'mts', metrics.Metric(
        _my_metric, lambda f, where: f'MEAN TRUE SCORE: {f["mean_true_score"]:.3f} ({where})',
        headline=('mean_true_score',)))
    classes = ['a', 'b', 'c']
    table = pd.DataFrame({'fname': [f't{i}.wav' for i in range(4)], 'subset': 'test',
                          'label_idx': [0, 1, 2, 1], 'labels_idx': [(0,), (1,), (2,), (1,)]})
    scores = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.1, 0.7], [0.1, 0.2, 0.7]])
    expected = np.mean([0.8, 0.3, 0.7, 0.2])
    cfg = {'ctrl': {'run_name': 'r', 'train_data': 'all', 'dataset': 'fsdnoisy18k',
                    'logs_dir': str(tmp_path)}, 'recognizer': {'metrics': ['accuracy', 'mts']}}
    evaluation.check_metrics(cfg)  # a valid recognizer.metrics name
    runs, cfgs, out = [], [], []
    for seed, shift in enumerate((0.0, 0.1)):
        run_cfg = {**cfg, 'ctrl': {**cfg['ctrl'], 'run_name': f'sw/p_seed{seed}'}}
        run_dir = tmp_path / run_cfg['ctrl']['run_name']
        run_dir.mkdir(parents=True)
        shifted = scores + shift * np.eye(3)[[0, 1, 2, 1]]
        results = evaluation.report(run_cfg, table, classes, np.arange(4), shifted, run_dir,
                                    1.0)
        evaluation.write_results(run_dir, results)
        out += evaluation.evaluation_lines(results)
        runs.append(sweep.Run(run_cfg['ctrl']['run_name'], 'p', {'learn.lr': 0.1}, seed, []))
        cfgs.append(run_cfg)
    assert f'MEAN TRUE SCORE: {expected:.3f} (4/4 test files, train_data=all)' in out
    saved = json.loads((tmp_path / 'sw' / 'p_seed0' / 'results.json').read_text())
    assert saved['mean_true_score'] == pytest.approx(expected)

    frame = sweep.collect(runs, cfgs, {}, [])
    summary, table_md, _ = sweep_summary.write_outputs(tmp_path / 'sweeps' / 'sw', 'sw', frame,
                                            {'learn.lr': [0.1]}, {})
    assert summary.mean_true_score_mean[0] == pytest.approx(expected + 0.05)
    assert 'mean_true_score mean' in table_md.splitlines()[0]
    assert 'n_files_evaluated mean' not in table_md  # a count, not a headline


def test_method_acted_is_false_once_any_method_did_nothing_and_folds_combine(caplog):
    """results.json's method_acted: true only if every method acted; the reasons of
    those that did not are kept and warned; k folds act only if every fold did."""
    single = Results()
    assert 'method_acted' not in single.to_json()  # no method: not measured
    single.acted('pruning', True)
    assert single.to_json()['method_acted'] is True
    with caplog.at_level('WARNING'):
        single.acted('pseudo labels', False, '0 unverified training clips')
    out = single.to_json()
    assert out['method_acted'] is False
    assert out['method_inaction'] == ['pseudo labels: 0 unverified training clips']
    assert 'the method did nothing: pseudo labels' in caplog.text
    single.acted('pruning', True)  # a later method that acts does not undo it
    assert single.to_json()['method_acted'] is False
    folds = Results()
    folds.fold_results([{'fold': 1, 'method_acted': True},
                        {'fold': 2, 'method_acted': False,
                         'method_inaction': ['pruning: no clip pruned']}])
    assert folds.method_acted is False
    assert folds.method_inaction == ['fold 2: pruning: no clip pruned']
