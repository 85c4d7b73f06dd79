"""Unit tests of the learning-mode pieces: loss masking (staged), pruning, noise detection.

References are written here with numpy, independently of learn.py.
"""
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import callbacks
import config
import learn
import losses
from masking import Masker


def _numpy_threshold_masks(batches, k, alpha):
    """eta_t = alpha eta_(t-1) + (1 - alpha) T_t, T_t the k-th largest loss; eta_1 = T_1;
    an unverified example is masked when its loss exceeds eta_t."""
    eta, out = None, []
    for losses, verified in batches:
        t = np.sort(losses)[-k]
        eta = t if eta is None else alpha * eta + (1 - alpha) * t
        out.append((eta, ((losses > eta) & (verified == 0)).astype(np.float32)))
    return out


def test_threshold_masker_follows_the_eta_recursion():
    rng = np.random.default_rng(0)
    batches = [(rng.gamma(2.0, size=16).astype(np.float32),
                (rng.random(16) < 0.5).astype(np.float32)) for _ in range(6)]
    masker = Masker('threshold', k=3, alpha=0.9)
    for (losses, verified), (eta, masked) in zip(
            batches, _numpy_threshold_masks(batches, 3, 0.9)):
        weights, figures = masker(keras.ops.convert_to_tensor(losses),
                                  keras.ops.convert_to_tensor(verified))
        np.testing.assert_allclose(float(figures['eta']), eta, rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(weights), 1.0 - masked)
        assert float(figures['masked']) == pytest.approx(masked.mean())
        # Verified examples are never masked, whatever their loss.
        assert np.all(np.asarray(weights)[verified == 1] == 1.0)


def test_threshold_masker_inside_a_compiled_step():
    losses = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.5], np.float32)
    verified = np.array([0, 1, 0, 0, 1, 0], np.float32)
    masker = Masker('threshold', k=2, alpha=0.5)
    step = tf.function(lambda l, v: masker(l, v)[0], jit_compile=True)
    first = np.asarray(step(losses, verified))   # eta = T_1 = 4: only the 5.0 (unverified)
    np.testing.assert_array_equal(first, [0, 1, 1, 1, 1, 1])
    second = np.asarray(step(losses / 4, verified))  # eta = 0.5*4 + 0.5*1 = 2.5
    np.testing.assert_array_equal(second, [1, 1, 1, 1, 1, 1])
    assert float(masker.eta.value) == pytest.approx(2.5)


def test_inactive_masker_keeps_every_example_and_one_traced_step_serves_both_stages():
    losses = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.5], np.float32)
    verified = np.array([0, 1, 0, 0, 1, 0], np.float32)
    masker = Masker('threshold', k=2, alpha=0.5, active=False)
    traces = []

    def call(l, v):
        traces.append(1)
        weights, figures = masker(l, v)
        return weights, figures['masked']
    step = tf.function(call, jit_compile=True)
    weights, masked = step(losses, verified)   # stage 1: no masking, eta not started
    np.testing.assert_array_equal(np.asarray(weights), np.ones(6))
    assert np.isnan(float(masked)) and float(masker.started.value) == 0.0
    masker.activate(True)                       # stage 2: eta = T_1 = 4 masks the 5.0
    weights, masked = step(losses, verified)
    np.testing.assert_array_equal(np.asarray(weights), [0, 1, 1, 1, 1, 1])
    assert float(masked) == pytest.approx(1 / 6) and float(masker.eta.value) == 4.0
    masker.activate(False)                      # stage 3: eta frozen, nothing masked
    weights, _ = step(losses * 10, verified)
    np.testing.assert_array_equal(np.asarray(weights), np.ones(6))
    assert float(masker.eta.value) == 4.0 and len(traces) == 1

def test_topk_masker_masks_the_k_largest_unverified_losses():
    losses = np.array([9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0], np.float32)
    verified = np.array([1, 0, 1, 0, 0, 0, 1], np.float32)
    weights, figures = Masker('topk', k=2, alpha=0.9)(losses, verified)
    unverified = np.flatnonzero(verified == 0)
    largest = unverified[np.argsort(losses[unverified])[-2:]]
    expected = np.ones(7, np.float32)
    expected[largest] = 0.0
    np.testing.assert_array_equal(np.asarray(weights), expected)
    assert float(figures['masked']) == pytest.approx(2 / 7)


def test_topk_masker_with_fewer_unverified_than_k_masks_them_all():
    losses = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    verified = np.array([1, 0, 1, 1], np.float32)
    weights, _ = Masker('topk', k=3, alpha=0.9)(losses, verified)
    np.testing.assert_array_equal(np.asarray(weights), [1, 0, 1, 1])


@pytest.mark.parametrize('percentile', [50, 80, 90, 97.5])
def test_prune_by_rank_drops_what_the_original_percentile_rule_drops(percentile):
    """Without ties: exactly the clips strictly above numpy's percentile (the original
    code's `loss <= threshold` kept)."""
    clip_loss = np.random.default_rng(1).exponential(size=203)
    pruned, lowest = learn.prune_by_rank(clip_loss, percentile)
    order = np.sort(clip_loss)
    pos = (clip_loss.size - 1) * percentile / 100  # linear interpolation, written out
    lo = int(np.floor(pos))
    threshold = order[lo] + (pos - lo) * (order[min(lo + 1, order.size - 1)] - order[lo])
    np.testing.assert_array_equal(pruned, clip_loss > threshold)
    assert lowest == clip_loss[pruned].min()


def test_prune_by_rank_prunes_the_top_share_when_clips_tie_at_the_bound():
    """Lq with q 0.5 saturates at 1/q = 2: with a quarter of the clips tied there,
    nothing lies strictly above the 97.75th percentile, yet the top share is pruned,
    the later rows of the tie first."""
    rng = np.random.default_rng(3)
    clip_loss = rng.uniform(0, 1.9, size=679)
    tied = np.sort(rng.choice(679, size=170, replace=False))
    clip_loss[tied] = 2.0
    assert not (clip_loss > np.percentile(clip_loss, 97.75)).any()  # the no-op it avoids
    pruned, lowest = learn.prune_by_rank(clip_loss, 97.75)
    n = 679 - 1 - int(np.floor(0.9775 * 678))
    assert n == 16 and pruned.sum() == n and lowest == 2.0
    np.testing.assert_array_equal(np.flatnonzero(pruned), tied[-n:])


def test_prune_by_rank_keeps_all_at_the_100th_percentile():
    pruned, lowest = learn.prune_by_rank(np.ones(5), 100)
    assert not pruned.any() and lowest is None


def test_detection_figures_count_precision_and_recall():
    flagged = np.array([1, 1, 1, 0, 0, 0, 1, 0], bool)
    wrong = np.array([1, 0, 1, 1, 0, 0, 1, 0], bool)
    figures = callbacks.detection_figures(flagged, wrong)
    assert figures == {'precision': 75.0, 'recall': 75.0, 'n_flagged': 4, 'n_wrong': 4}
    none = callbacks.detection_figures(np.zeros(4, bool), np.zeros(4, bool))
    assert np.isnan(none['precision']) and np.isnan(none['recall'])


def test_noise_detection_from_summed_step_counts():
    row = {'nd_flagged': 10.0, 'nd_hit': 7.0, 'nd_wrong': 14.0}
    assert callbacks.noise_detection(row) == {'nd_precision': pytest.approx(70.0),
                                              'nd_recall': 50.0}
    assert callbacks.noise_detection({'loss': 1.0}) == {}


def test_unknown_mode_is_refused():
    cfg = config.load_config(None, ['learn.mode=7'])
    with pytest.raises(config.ConfigError, match="valid: 0, 1, 2, 3, staged"):
        learn.check(cfg)


def test_mode2_needs_a_time_dependent_loss():
    cfg = config.load_config(None, ['learn.mode=2', 'loss.type=CCE'])
    with pytest.raises(config.ConfigError, match='lq_lqmax_time_sudden'):
        learn.check(cfg)
    learn.check(config.load_config(None, ['learn.mode=2', 'loss.type=lq_lqmax_time_sudden']))


class _ToyLoss(losses.CCE):
    """A loss registered by the test, with the attributes it declares."""
    time_dependent = True


def test_checks_read_a_new_modes_and_losses_declarations(monkeypatch):
    """A toy mode and a toy loss, registered in the registries only, are accepted or
    refused by what they declare, with the messages users see for the built-in ones."""
    monkeypatch.setitem(learn.MODES, 'toy', learn.Mode(lambda exp: None, loss='time_dependent',
                                                       schedules=('constant',)))
    monkeypatch.setitem(losses.LOSSES, 'toy_loss', _ToyLoss)
    cfg = config.load_config(None, ['loss.type=toy_loss', 'learn.lr_schedule=constant',
                                    'ctrl.train_data=all'])
    cfg['learn']['mode'] = 'toy'  # config.py knows only the shipped modes
    learn.check(cfg)  # its loss has the attribute the mode declares it needs
    cfg['loss']['type'] = 'CCE'
    with pytest.raises(config.ConfigError, match=r"learn.mode toy needs a time-dependent "
                       r"loss.type \(lq_lqmax_time_sudden, lq_lqperc_time_sudden, toy_loss\), "
                       r"got 'CCE'"):
        learn.check(cfg)
    cfg['loss']['type'], cfg['learn']['lr_schedule'] = 'toy_loss', 'plateau'
    with pytest.raises(config.ConfigError, match='learn.mode toy trains with its own schedule: '
                                                 'keep learn.lr_schedule constant'):
        learn.check(cfg)
    # learn.multitask: only modes that declare it, only losses that are not per-batch
    cfg['learn'].update(lr_schedule='constant', multitask=True)
    with pytest.raises(config.ConfigError, match=r'learn.multitask works with learn.mode 0, 1 '
                                                 r"or 3, not 'toy'"):
        learn.check(cfg)
    monkeypatch.setitem(learn.MODES, 'toy', learn.Mode(lambda exp: None, multitask=True))
    with pytest.raises(config.ConfigError, match=r'learn.mode 0, 1, 3 or toy, not 2'):
        learn.check_multitask(dict(cfg, learn=dict(cfg['learn'], mode=2)))
    learn.check(cfg)
    monkeypatch.setattr(_ToyLoss, 'per_batch', True)
    with pytest.raises(config.ConfigError, match=r"loss.type CCE, lq_loss or bce, not 'toy_loss'"):
        learn.check(cfg)


def test_registry_entries_declare_what_the_modes_need():
    """The declarations of the shipped modes, as the papers' methods need them."""
    modes = learn.MODES
    assert [n for n, m in modes.items() if m.detects] == [2, 'staged']
    assert [n for n, m in modes.items() if m.masker] == ['staged']
    assert [n for n, m in modes.items() if m.multitask] == [0, 1, 3]
    assert modes['self_verify'].folds == 4 and modes['staged'].steps
    assert [n for n, c in losses.LOSSES.items() if c.time_dependent] == [
        'lq_lqmax_time_sudden', 'lq_lqperc_time_sudden']
    assert [n for n, c in losses.LOSSES.items() if c.per_batch] == [
        'lq_lqmax_time_sudden', 'lq_lqperc_time_sudden', 'adaptive_lq']


# ----------------------------------------------------------------------------- batch size

@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    from conftest import tiny_dataset
    root = tmp_path_factory.mktemp('learn')
    return root, tiny_dataset(root / 'tiny', n_classes=3, train_per_class=8,
                              test_per_class=2, seed=3)


def test_a_batch_larger_than_the_training_set_is_refused_before_heavy_work(
        tiny, capsys, monkeypatch):
    """Issue 19, case 5: one line with both numbers, exit 2, before the scaler, the batch
    source or the model exist, nothing left in logs/."""
    import experiment
    import main
    from conftest import write_tiny_config
    root, data = tiny
    params = write_tiny_config(root / 'big.yaml', data, root, {
        'ctrl': {'workers': 1}, 'extract': {'n_mels': 16}, 'learn': {'n_classes': 3}})
    monkeypatch.setattr(experiment, 'batch_source',
                        lambda *a: pytest.fail('the batch source was built'))
    code = main.main(['-p', str(params), '-o', 'learn.batch_size=100000',
                      '-o', 'ctrl.run_name=big'])
    err = capsys.readouterr().err
    assert code == 2 and 'Traceback' not in err, err
    line = err.strip().splitlines()[-1]
    n = int(re.search(r'of the (\d+) training patches', line).group(1))
    assert line == (f'error: learn.batch_size 100000 needs 100000 of the {n} training '
                    f'patches: a batch may not be larger than the data it is drawn from; '
                    f'set learn.batch_size to at most {n}')
    assert 0 < n < 1000
    assert not (root / 'logs' / 'big').exists() and not (root / 'logs' / 'big.out').exists()


def test_batch_size_is_checked_against_every_pool_a_batch_is_drawn_from():
    """Staged training draws whole batches of the verified patches and half/half batches;
    multitask half/half batches; an empty pool is verified_pools' to report."""
    import sampling
    verified = np.array([True] * 10 + [False] * 30)
    pool = np.arange(40)
    for batch in (1, 40):
        sampling.check_batch_size(batch, pool, verified)
    with pytest.raises(config.ConfigError, match='needs 41 of the 40 training patches.*'
                                                 'at most 40$'):
        sampling.check_batch_size(41, pool, verified)
    sampling.check_batch_size(10, pool, verified, verified_stages=True)
    with pytest.raises(config.ConfigError, match=r'needs 11 of the 10 verified training '
                                                 r'patches \(learn.mode staged.*at most 10$'):
        sampling.check_batch_size(11, pool, verified, verified_stages=True)
    sampling.check_batch_size(21, pool, verified, halves=True)  # 10 verified + 11 unverified
    with pytest.raises(config.ConfigError, match=r'needs 11 of the 10 verified training '
                                                 r'patches \(half of each batch\).*at most 21$'):
        sampling.check_batch_size(22, pool, verified, halves=True)
    more = np.array([True] * 35 + [False] * 30)
    with pytest.raises(config.ConfigError, match='needs 31 of the 30 unverified.*at most 60$'):
        sampling.check_batch_size(61, np.arange(65), more, halves=True)
    sampling.check_batch_size(20, pool[10:], verified, halves=True)  # no verified: not here


def test_history_writes_an_event_into_the_row_of_the_epoch_after_it(tmp_path):
    """mark(done, what): the method acted after `done` epochs, so the row of epoch done + 1
    names it; a mark of an epoch whose row exists already (a resumed run) is dropped."""
    import pandas as pd
    history = callbacks.History(tmp_path / 'history.csv')
    history.set_model(type('M', (), {'optimizer': keras.optimizers.Adam(1e-3)})())
    marks = {1: [(0, 'resumed: row 1 exists'), (1, 'stage 2')], 2: [(2, 'pruning, by rank')]}
    for epoch in range(3):
        for done, what in marks.get(epoch, []):
            history.mark(done, what)
        history.on_epoch_begin(epoch)
        history.on_epoch_end(epoch, {'loss': 1.0})
    frame = pd.read_csv(tmp_path / 'history.csv')
    assert frame.event.fillna('').tolist() == ['', 'stage 2', 'pruning; by rank']
