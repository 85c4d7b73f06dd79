"""Predicting an ensemble (eval.predict of an Ensemble): one scoring function for every
member, traced once, and the members' clip scores against numpy; TensorFlow's retracing
warnings kept out of the log."""
import logging

import keras
import numpy as np
import pandas as pd

import data
import eval as evaluation
import utils


class _CountingSource:
    """A batch source that counts the traces of the scoring function: source.inputs is
    Python code inside that tf.function, so it runs when the function is traced, never
    when a traced function runs again."""

    def __init__(self, source):
        self.source, self.traces = source, 0

    def __getattr__(self, name):
        return getattr(self.source, name)

    def inputs(self, *args, **kwargs):
        self.traces += 1
        return self.source.inputs(*args, **kwargs)


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_three_members_share_one_trace_and_average_their_numpy_scores(clips, make_cfg,
                                                                      tmp_path):
    """Three saved members softmax(W_m x + b_m) over standardised patches: the ensemble is
    the arithmetic mean of each member's clip scores (the geometric mean of its patch
    scores per clip), all written here in numpy; the scoring function traces once."""
    plen, hop, n_mels, n_classes = clips['patch_len'], clips['patch_hop'], clips['n_mels'], 3
    p = data.make_patches(clips['starts'], clips['lengths'], plen, hop)
    mean, std = np.full(n_mels, 1.5, np.float32), np.full(n_mels, 2.0, np.float32)
    table = pd.DataFrame({'label_idx': np.arange(len(clips['lengths'])) % n_classes,
                          'verified': 1})
    table['labels_idx'] = [(k,) for k in table.label_idx]
    source = _CountingSource(data.PatchSource(clips['frames'], p, table, mean, std,
                                              np.zeros(n_classes, np.float32), plen, False))
    inputs = keras.Input((plen, n_mels, 1))
    dense = keras.layers.Dense(n_classes, activation='softmax')
    model = keras.Model(inputs, {'scores': dense(keras.layers.Flatten()(inputs))})
    rng, paths, weights = np.random.default_rng(3), [], []
    for m in range(3):
        w = [rng.normal(size=(plen * n_mels, n_classes)).astype(np.float32) * 0.3,
             rng.normal(size=n_classes).astype(np.float32)]
        dense.set_weights(w)
        paths.append(tmp_path / f'member_{m}.keras')
        model.save(paths[-1])
        weights.append(w)
    rows = np.array([4, 1, 2])  # clips with patches
    # 4 patches per call: several calls per member, each of one (padded) signature.
    cfg = make_cfg(f'extract.patch_len={plen}', f'extract.patch_hop={hop}',
                   f'extract.n_mels={n_mels}', 'recognizer.aggregate=gmean',
                   'learn.predict_batch_size=4')
    ensemble = evaluation.Ensemble(paths, 1, 3, 'amean')
    got_rows, got = evaluation.predict(ensemble, source, p, rows, cfg)
    assert source.traces == 1
    np.testing.assert_array_equal(got_rows, np.sort(rows))
    members = []
    for w, b in weights:
        per_clip = []
        for row in got_rows:
            idx = p.of_clips([row])
            x = (clips['frames'][p.frame_rows(idx, plen)] - mean) / std  # [n, plen, mels]
            probs = _softmax(x.reshape(len(idx), -1).astype(np.float64) @ w + b)
            per_clip.append(np.exp(np.log(probs).mean(axis=0)))
        members.append(per_clip)
    np.testing.assert_allclose(got, np.mean(members, axis=0), rtol=1e-5, atol=1e-6)


def test_tensorflow_retracing_warnings_stay_out_of_the_log(caplog):
    utils.import_tensorflow_quietly()
    tf_logger = logging.getLogger('tensorflow')
    with caplog.at_level(logging.WARNING, logger='tensorflow'):
        tf_logger.warning('5 out of the last 15 calls to <function f at 0x1> triggered '
                          'tf.function retracing. Tracing is expensive ...')
        tf_logger.warning('another warning')
    assert [r.getMessage() for r in caplog.records] == ['another warning']
