"""learn.init_from: a new model starts from the weights of an earlier run (or .keras file).

Akiyama & Sato's model B starts from model A's weights, fold k from fold k's model (their
released train_model2.py loads the weights of the same fold's last epoch). Here a run
folder logs/<run> gives each fold k its model_k.keras; a folder of a single split gives
every fold its model.keras; a single-split run from a k-fold folder starts from
model_1.keras (fold 1's model). A .keras file initialises every fold alike.

The layers with weights are paired in the order the models list them (the same network
lists them in the same order; Keras's automatic layer names differ between builds). The
trunk, every layer up to the one named 'embedding', must match layer for layer, or the
run stops with one line naming the layer; after it (the heads) a layer is initialised where
its type and weight shapes match and keeps its fresh weights otherwise (e.g. another number
of classes, or a multitask model from a single-head one). BatchNormalization's moving
statistics are copied with its other weights.
"""
import logging
import zipfile
from pathlib import Path

import keras

import runfolder
from config import ConfigError

logger = logging.getLogger(__name__)


def source_path(init_from, fold=None):
    """The .keras file that fold `fold` (1-based; None for a single split) starts from."""
    path = Path(init_from)
    if path.is_file():
        return path
    if not path.is_dir():
        raise ConfigError(f'learn.init_from: no .keras file or run folder {init_from}')
    candidates = [runfolder.path(path, 'model', fold), runfolder.path(path, 'model'),
                  runfolder.path(path, 'model', 1)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(f'learn.init_from: run folder {init_from} holds no model.keras or '
                      f'model_<fold>.keras (has that run finished training?)')


def check(cfg):
    """learn.init_from names a file or a run folder that holds a model."""
    if cfg['learn']['init_from'] is not None:
        source_path(cfg['learn']['init_from'])


def _weighted(model):
    """(the trunk's layers with weights, the heads' layers with weights), in model order."""
    names = [layer.name for layer in model.layers]
    cut = names.index('embedding') + 1 if 'embedding' in names else len(names)
    with_weights = [(i, layer) for i, layer in enumerate(model.layers) if layer.weights]
    return ([layer for i, layer in with_weights if i < cut],
            [layer for i, layer in with_weights if i >= cut])


def _shapes(layer):
    return [tuple(w.shape) for w in layer.weights]


def load(path):
    """The Keras model saved at path, or one line saying it cannot be read."""
    try:
        return keras.saving.load_model(path, compile=False)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f'learn.init_from: {path} cannot be read as a Keras model '
                          f'({reason})') from None


def init_weights(model, path):
    """Set model's trunk (and where they match, its heads) to the weights saved at path."""
    source = load(path)
    trunk, heads = _weighted(model)
    source_trunk, source_heads = _weighted(source)
    if len(trunk) != len(source_trunk):
        raise ConfigError(f'learn.init_from: the trunk of {path} ({source.name}) has '
                          f'{len(source_trunk)} layers with weights, that of learn.model '
                          f'{model.name} {len(trunk)}: not the same network')
    for mine, theirs in zip(trunk, source_trunk):
        if type(mine) is not type(theirs) or _shapes(mine) != _shapes(theirs):
            raise ConfigError(f'learn.init_from: layer {mine.name} ({type(mine).__name__}, '
                              f'weights {_shapes(mine)}) does not match layer {theirs.name} of '
                              f'{path} ({type(theirs).__name__}, weights {_shapes(theirs)})')
        mine.set_weights(theirs.get_weights())
    fresh = []
    for mine, theirs in zip(heads, source_heads):
        if type(mine) is type(theirs) and _shapes(mine) == _shapes(theirs):
            mine.set_weights(theirs.get_weights())
        else:
            fresh.append(mine.name)
    fresh += [layer.name for layer in heads[len(source_heads):]]
    logger.info('learn.init_from: trunk (%d layers with weights) and %d of %d head layers '
                'initialised from %s%s', len(trunk), len(heads) - len(fresh), len(heads), path,
                f'; fresh: {", ".join(fresh)}' if fresh else '')
