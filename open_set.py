"""Open-set label noise (ctrl.inject_noise.kind open_set): Iqbal et al., "ARCA23K: an audio
dataset for investigating open-set label noise", DCASE 2021 workshop, find that most label
errors of web audio are open-set: the clip holds a sound of none of the vocabulary's classes,
yet carries one of their labels.

Some classes are held out of the vocabulary (ctrl.inject_noise.held_out names them, or
held_out_share of the classes is drawn with the noise seed). Of the training clips of those
classes in ctrl.inject_noise.subset, round(rate x n) of their n are kept and relabelled as an
in-vocabulary class drawn uniformly; every other clip of a held-out class is removed (the
test set loses those classes). Kept clips keep their real class as the true label, outside
the vocabulary (true_idx -1), so the noise-detection figures count them as wrong labels.
"""
import logging

import numpy as np

from config import ConfigError

logger = logging.getLogger(__name__)

# table.attrs key: the held-out class names, which results.json's label_noise records
HELD_OUT = 'held_out_classes'


def held_out_classes(classes, spec):
    """The held-out class names, in class order: spec['held_out'], or round(held_out_share
    x K) (at least 1) drawn with spec['seed']; at least two classes must stay."""
    if spec['held_out'] is not None:
        unknown = [c for c in spec['held_out'] if c not in classes]
        if unknown:
            raise ConfigError(f'ctrl.inject_noise.held_out: {", ".join(map(str, unknown))} '
                              f'not a class of the dataset; valid: {", ".join(classes)}')
        names = set(spec['held_out'])
    else:
        n = max(1, int(round(spec['held_out_share'] * len(classes))))
        names = {classes[k] for k in
                 np.random.default_rng(spec['seed']).choice(len(classes), n, replace=False)}
    if len(classes) - len(names) < 2:
        raise ConfigError(f'ctrl.inject_noise open_set holds out {len(names)} of '
                          f'{len(classes)} classes; at least 2 must stay in the vocabulary')
    return [c for c in classes if c in names]


def inject(table, classes, spec, subset_rows):
    """(table, classes) -> (table, vocabulary) with the open-set noise of the module
    docstring; subset_rows: the table rows of ctrl.inject_noise.subset (training)."""
    held = held_out_classes(classes, spec)
    vocabulary = [c for c in classes if c not in held]
    table = table.copy()
    if 'true_idx' not in table.columns:
        table['true_label'], table['true_idx'] = table.label, table.label_idx
        table['true_labels'], table['true_labels_idx'] = table['labels'], table['labels_idx']
    rng = np.random.default_rng([spec['seed'], 1])  # apart from the draw of the classes
    is_held = table.label.isin(held).to_numpy()
    candidates = np.intersect1d(subset_rows, np.flatnonzero(is_held))
    chosen = np.sort(rng.choice(candidates, size=int(round(spec['rate'] * candidates.size)),
                                replace=False))
    new = rng.integers(0, len(vocabulary), chosen.size)
    names = table['labels'].tolist()
    for row, k in zip(chosen, new):
        names[row] = (vocabulary[k],)
    table['labels'] = names
    table['noise_injected'] = False
    table.loc[chosen, 'noise_injected'] = True
    keep = ~is_held
    keep[chosen] = True
    removed = table.subset[~keep].value_counts()
    table = table[keep].reset_index(drop=True)
    _reindex(table, vocabulary)
    table.attrs[HELD_OUT] = held
    logger.info('open-set noise: %d of %d classes held out (%s); %d of their %d %s training '
                'clips relabelled as in-vocabulary classes; %d training and %d test clips of '
                'theirs removed', len(held), len(classes), ', '.join(held), chosen.size,
                candidates.size, spec['subset'], removed.get('train', 0),
                removed.get('test', 0))
    return table, vocabulary


def _reindex(table, vocabulary):
    """Label and true-label index columns over the new vocabulary (-1 outside it)."""
    index = {c: k for k, c in enumerate(vocabulary)}
    table['labels_idx'] = [tuple(index[n] for n in labels) for labels in table['labels']]
    table['label'] = [','.join(labels) for labels in table['labels']]
    table['label_idx'] = [ids[0] for ids in table['labels_idx']]
    table['true_labels_idx'] = [tuple(index.get(n, -1) for n in labels)
                                for labels in table['true_labels']]
    table['true_idx'] = [ids[0] for ids in table['true_labels_idx']]


def label_noise(table):
    """What results.json's label_noise adds for open-set noise: the held-out classes."""
    return {HELD_OUT: list(table.attrs.get(HELD_OUT, []))}
