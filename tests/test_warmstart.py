"""warmstart.py (learn.init_from): which saved model each fold starts from, the weights
after initialisation (trunk always, heads where shapes match), and the one-line refusals."""
import numpy as np
import pandas as pd
import pytest

import architectures
import config
import experiment
import learn
import warmstart
from config import ConfigError

LEARN = config.load_config(None, [])['learn']
SHAPE = (32, 8, 1)


def _model(n_classes=3, shape=SHAPE, seed=0):
    """A baseline model whose BN moving statistics have moved off their initial values."""
    model = architectures.build('baseline', shape, n_classes, LEARN)
    x = np.random.default_rng(seed).normal(3.0, 2.0, (4, *shape)).astype('float32')
    model(x, training=True)
    return model


def _weights(model):
    return [np.asarray(w) for w in model.weights]


def test_init_copies_every_weight_of_the_same_network(tmp_path):
    source = _model()
    source.save(tmp_path / 'a.keras')
    target = _model(seed=1)
    assert not all(np.array_equal(a, b) for a, b in zip(_weights(source), _weights(target)))
    warmstart.init_weights(target, tmp_path / 'a.keras')
    for a, b in zip(_weights(source), _weights(target)):
        np.testing.assert_array_equal(a, b)  # moving statistics included


def test_heads_of_other_shapes_keep_their_fresh_weights(tmp_path, caplog):
    source = _model(n_classes=5)
    source.save(tmp_path / 'a.keras')
    target = _model(n_classes=3, seed=1)
    head = target.layers[-1]  # the softmax layer: 3 classes here, 5 there
    fresh = [np.asarray(w) for w in head.weights]
    with caplog.at_level('INFO', logger='warmstart'):
        warmstart.init_weights(target, tmp_path / 'a.keras')
    for a, b in zip(_weights(source.get_layer('embedding')), _weights(target.get_layer('embedding'))):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(fresh, head.weights):
        np.testing.assert_array_equal(a, np.asarray(b))
    assert f'0 of 1 head layers initialised from {tmp_path / "a.keras"}; fresh: {head.name}' \
        in caplog.text


def test_a_trunk_mismatch_names_the_layer(tmp_path):
    _model(shape=(32, 12, 1)).save(tmp_path / 'a.keras')  # 12 mel bands: a wider embedding
    with pytest.raises(ConfigError) as err:
        warmstart.init_weights(_model(), tmp_path / 'a.keras')
    message = str(err.value)
    assert '\n' not in message
    # flattened: 32 / 16 frames x bands / 4 x 48 channels
    assert message.startswith(f'learn.init_from: layer embedding (Dense, weights '
                              f'[({2 * 2 * 48}, 64), (64,)]) does not match layer embedding of')
    assert message.endswith(f'a.keras (Dense, weights [({2 * 3 * 48}, 64), (64,)])')
    other = architectures.build('cnn_gru', (None, 16, 1), 3, LEARN)
    other.save(tmp_path / 'gru.keras')
    with pytest.raises(ConfigError, match='the trunk of .*gru.keras \\(cnn_gru\\) has .* layers '
                                          'with weights, that of learn.model baseline'):
        warmstart.init_weights(_model(), tmp_path / 'gru.keras')


def test_which_file_each_fold_starts_from(tmp_path):
    folds, single = tmp_path / 'kfold', tmp_path / 'single'
    folds.mkdir()
    single.mkdir()
    for name in ('model_1.keras', 'model_2.keras'):
        (folds / name).write_text('x')
    (single / 'model.keras').write_text('x')
    assert warmstart.source_path(folds, 2) == folds / 'model_2.keras'
    assert warmstart.source_path(folds, None) == folds / 'model_1.keras'
    assert warmstart.source_path(single, 3) == single / 'model.keras'
    assert warmstart.source_path(single / 'model.keras', 2) == single / 'model.keras'


def test_missing_or_unreadable_sources_are_one_line(tmp_path):
    cfg = config.load_config(None, [f'learn.init_from={tmp_path / "nope"}', 'ctrl.run_name=x'])
    with pytest.raises(ConfigError, match=f'learn.init_from: no .keras file or run folder '
                                          f'{tmp_path / "nope"}$'):
        learn.check(cfg)
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ConfigError, match='run folder .*empty holds no model.keras'):
        warmstart.source_path(tmp_path / 'empty', 1)
    (tmp_path / 'bad.keras').write_bytes(b'not a zip')
    with pytest.raises(ConfigError, match='bad.keras cannot be read as a Keras model') as err:
        warmstart.init_weights(_model(), tmp_path / 'bad.keras')
    assert '\n' not in str(err.value)


def test_build_trainer_starts_fold_k_from_fold_k(tmp_path):
    """experiment.build_trainer with learn.init_from: fold 2's model gets model_2's weights."""
    run = tmp_path / 'run'
    run.mkdir()
    sources = {fold: _model(seed=fold) for fold in (1, 2)}
    for fold, model in sources.items():
        model.save(run / f'model_{fold}.keras')
    cfg = config.load_config(None, [f'learn.init_from={run}', 'extract.patch_len=32',
                                    'extract.n_mels=8', 'ctrl.run_name=x'])
    table = pd.DataFrame({'label_idx': [0, 1, 2]})
    trainer = experiment.build_trainer(cfg, learn.MODES[1], table, ['a', 'b', 'c'], None, 2)
    for a, b in zip(_weights(sources[2]), _weights(trainer.classifier)):
        np.testing.assert_array_equal(a, b)
