"""Full-length prediction in length buckets and padding augmentation (buckets.py, issue 17
§5), against numpy: each clip padded with silence to its bucket's length and on both sides
by each recognizer.tta_pad entry, standardised, scored by a model written out in numpy, the
views averaged."""
import numpy as np
import pytest

import buckets
import config
import data
import eval as evaluation
from conftest import clip_table

LENGTHS = [10, 11, 3, 21, 12, 20]  # frames; 3 is below crop_frames (4)
N_MELS, K = 4, 3


def test_the_plan_groups_as_the_released_get_num_batch():
    """A clip joins the group while length <= first + int(length x tolerance) (10 + int(1.1)
    = 11 holds 11, not 12; 20 + int(2.1) holds 21); the budget cuts a group."""
    groups = buckets.plan([10, 11, 12, 20, 21], 0.1, 10 ** 6, lambda n: n)
    assert [(list(m), n) for m, n in groups] == [([0, 1], 11), ([2], 12), ([3, 4], 21)]
    exact = buckets.plan([5, 7, 5, 5], 0.0, 10, lambda n: n)  # 2 clips of 5 per call
    assert [(list(m), n) for m, n in exact] == [([0, 2], 5), ([3], 5), ([1], 7)]


def test_pad_entries_are_frames_or_ratios():
    assert buckets.pad_frames(8, 100) == 8
    assert buckets.pad_frames(0.25, 100) == 25
    assert buckets.pad_frames(0.25, 10) == 2  # round(2.5) to even, as Python rounds


@pytest.mark.parametrize('overrides, message', [
    (['recognizer.tta_pad=[8, -1]'], 'recognizer.tta_pad entries are frames of padding'),
    (['recognizer.tta_pad=[8, 0.0]'], 'recognizer.tta_pad entries are frames of padding'),
    (['recognizer.tta_pad=[8]', 'extract.crop=patches'],
     'recognizer.tta_pad scores whole clips, which needs extract.crop random_crop'),
    (['recognizer.length_tolerance=0.2', 'extract.crop=patches'],
     'recognizer.length_tolerance scores whole clips, which needs extract.crop random_crop')])
def test_bad_recognizer_keys_are_one_line(make_cfg, overrides, message):
    cfg = make_cfg('extract.crop=random_crop', *overrides)
    with pytest.raises(config.ConfigError, match=message):
        evaluation.check(cfg)


def test_a_negative_tolerance_is_refused(make_cfg):
    with pytest.raises(config.ConfigError, match='recognizer.length_tolerance = -0.1 is out'):
        make_cfg('recognizer.length_tolerance=-0.1')


def test_silence_is_the_log_of_eps(make_cfg):
    """A zero signal has (almost) no mel energy: its log-mel frame is log10(eps)."""
    cfg = make_cfg()
    np.testing.assert_allclose(buckets.silence(cfg, cfg['extract']['n_mels']),
                               np.log10(cfg['extract']['eps']), rtol=1e-3)


# ----------------------------------------------------------------------------- scoring

@pytest.fixture(scope='module')
def model():
    """scores = softmax([mean over all frames per band, first frame per band] @ W + b): it
    sees how long a padded input is and what its first frame holds."""
    import keras
    from keras import layers, ops
    inputs = keras.Input(shape=(None, N_MELS, 1))
    pooled = layers.Lambda(lambda x: ops.mean(x[..., 0], axis=1))(inputs)
    first = layers.Lambda(lambda x: x[:, 0, :, 0])(inputs)
    dense = layers.Dense(K, activation='softmax')
    scores = dense(layers.Concatenate()([pooled, first]))
    net = keras.Model(inputs, {'scores': scores})
    rng = np.random.default_rng(3)
    w, b = rng.normal(size=(2 * N_MELS, K)), rng.normal(size=K)
    dense.set_weights([w.astype(np.float32), b.astype(np.float32)])
    return net, w, b


def numpy_scores(x, w, b):
    """The model in numpy on one standardised input [T, N_MELS]."""
    z = np.r_[x.mean(axis=0), x[0]] @ w + b
    e = np.exp(z - z.max())
    return e / e.sum()


def source_and_cfg(make_cfg, per_clip, *overrides):
    rng = np.random.default_rng(5)
    lengths = np.asarray(LENGTHS, np.int64)
    starts = np.r_[0, np.cumsum(lengths)[:-1]].astype(np.int64)
    frames = rng.normal(2.0, 3.0, size=(int(lengths.sum()), N_MELS)).astype(np.float32)
    mean = rng.normal(size=N_MELS).astype(np.float32)
    std = rng.uniform(0.5, 2.0, N_MELS).astype(np.float32)
    table = clip_table([f'c{k}' for k in range(K)], 0, 0, len(LENGTHS), seed=1)
    patches = data.make_clips(starts, lengths)
    source = data.PatchSource(frames, patches, table, mean, std, np.zeros(K, np.float32), 4,
                              on_device=False, eval_len=16, per_clip=per_clip)
    cfg = make_cfg('extract.crop=random_crop', 'extract.crop_frames=4',
                   'extract.clip_frames=16', f'extract.n_mels={N_MELS}',
                   'learn.predict_batch_size=64', *overrides)
    clips = [frames[s:s + n] for s, n in zip(starts, lengths)]
    return source, patches, cfg, clips, mean, std


def reference(clip, length, pads, quiet, mean, std, per_clip, w, b, wrap):
    """numpy: the clip read over `length` frames (repeated when wrap, else followed by
    silence), padded with silence on both sides by each pad, standardised, scored,
    averaged over the pads."""
    if wrap:
        body = clip[np.arange(length) % len(clip)]
    else:
        body = np.concatenate([clip, np.tile(quiet, (length - len(clip), 1))])
    views = []
    for pad in pads:
        p = buckets.pad_frames(pad, length)
        x = np.pad(body, ((p, p), (0, 0)), constant_values=0.0)
        x[:p], x[len(x) - p:] = quiet, quiet
        x = (x - x.mean()) / max(x.std(), 1e-8) if per_clip else (x - mean) / std
        views.append(numpy_scores(x, w, b))
    return np.mean(views, axis=0)


@pytest.mark.parametrize('per_clip', [False, True])
def test_buckets_and_padding_views_match_numpy(make_cfg, model, per_clip):
    """Tolerance 0.1 groups {3 -> 4 frames}, {10, 11}, {12}, {20, 21}: each clip is padded
    with silence to its group's longest length, then by 0 and 2 frames and a quarter of
    that length on both sides; the three views averaged (recognizer.ensemble amean)."""
    net, w, b = model
    pads = [0, 2, 0.25]
    source, patches, cfg, clips, mean, std = source_and_cfg(
        make_cfg, per_clip, 'recognizer.length_tolerance=0.1', 'recognizer.tta_pad=[0, 2, 0.25]')
    rows = np.arange(len(LENGTHS))
    got_rows, got = evaluation.recognizer_scorer(net, source, patches, cfg)(rows)
    quiet = buckets.silence(cfg, N_MELS)
    group_len = {10: 11, 11: 11, 3: 4, 21: 21, 12: 12, 20: 21}
    want = np.stack([reference(c, group_len[len(c)], pads, quiet, mean, std, per_clip, w, b,
                               wrap=False) for c in clips])
    np.testing.assert_array_equal(got_rows, rows)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_tolerance_zero_scores_each_clip_alone(make_cfg, model):
    """Exact full length: every clip at its own length (3 raised to crop_frames 4)."""
    net, w, b = model
    source, patches, cfg, clips, mean, std = source_and_cfg(
        make_cfg, False, 'recognizer.length_tolerance=0')
    _, got = evaluation.predict_clips(net, source, patches, np.arange(len(LENGTHS)), cfg)
    quiet = buckets.silence(cfg, N_MELS)
    want = np.stack([reference(c, max(len(c), 4), [0], quiet, mean, std, False, w, b,
                               wrap=False) for c in clips])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_padding_views_of_fixed_length_clips_geometric(make_cfg, model):
    """length_tolerance null: the clip fixed to clip_frames (repeated, cut) as in training,
    padded by each view; views averaged geometrically with recognizer.ensemble gmean."""
    net, w, b = model
    source, patches, cfg, clips, mean, std = source_and_cfg(
        make_cfg, False, 'recognizer.tta_pad=[1, 3]', 'recognizer.ensemble=gmean')
    _, got = evaluation.predict_clips(net, source, patches, np.arange(len(LENGTHS)), cfg)
    quiet = buckets.silence(cfg, N_MELS)
    want = []
    for c in clips:
        views = [reference(c, 16, [p], quiet, mean, std, False, w, b, wrap=True)
                 for p in (1, 3)]
        want.append(np.exp(np.log(views).mean(axis=0)))
    np.testing.assert_allclose(got, np.stack(want), rtol=1e-4, atol=1e-6)


class _CountingPadded:
    """source.padded runs only when the scoring function is traced: counts the traces."""

    def __init__(self, source):
        self.source, self.traces = source, 0

    def __getattr__(self, name):
        return getattr(self.source, name)

    def padded(self, *args):
        self.traces += 1
        return self.source.padded(*args)


def test_one_trace_for_every_bucket_length_and_view(make_cfg, model):
    """Buckets of 4 lengths x 2 views, batches of 1 and 2 clips: one tf.function trace."""
    net, _, _ = model
    source, patches, cfg, *_ = source_and_cfg(
        make_cfg, False, 'recognizer.length_tolerance=0.1', 'recognizer.tta_pad=[0, 2]')
    counting = _CountingPadded(source)
    score = evaluation.recognizer_scorer(net, counting, patches, cfg)
    score(np.arange(len(LENGTHS)))
    score(np.arange(3))
    assert counting.traces == 1


def test_scoring_that_takes_long_shows_a_progress_bar(make_cfg, model, monkeypatch, capsys):
    """The bar waits PROGRESS_AFTER_S; made 0 here, it shows over the clips scored."""
    net, _, _ = model
    source, patches, cfg, *_ = source_and_cfg(make_cfg, False, 'recognizer.length_tolerance=0')
    evaluation.predict_clips(net, source, patches, np.arange(len(LENGTHS)), cfg)
    assert 'scoring' not in capsys.readouterr().err  # quick: no bar
    monkeypatch.setattr(evaluation, 'PROGRESS_AFTER_S', 0)
    evaluation.predict_clips(net, source, patches, np.arange(len(LENGTHS)), cfg)
    err = capsys.readouterr().err
    assert 'scoring' in err and f'/{len(LENGTHS)}' in err, err


def test_an_ensemble_scores_full_length_clips_member_by_member(make_cfg, tmp_path):
    """eval.predict of an Ensemble with length_tolerance 0 and padding views: each saved
    member (softmax of the input's overall mean x w + b) scored as numpy scores it, the
    views and the members averaged (amean)."""
    import keras
    from keras import layers
    inputs = keras.Input(shape=(None, N_MELS, 1))
    dense = layers.Dense(K, activation='softmax')
    net = keras.Model(inputs, {'scores': dense(layers.GlobalAveragePooling2D()(inputs))})
    rng = np.random.default_rng(8)
    paths, weights = [], []
    for m in range(2):
        w, b = rng.normal(size=(1, K)), rng.normal(size=K)
        dense.set_weights([w.astype(np.float32), b.astype(np.float32)])
        paths.append(tmp_path / f'member_{m}.keras')
        net.save(paths[-1])
        weights.append((w, b))
    source, patches, cfg, clips, mean, std = source_and_cfg(
        make_cfg, False, 'recognizer.length_tolerance=0', 'recognizer.tta_pad=[0, 3]')
    ensemble = evaluation.Ensemble(paths, 1, 2, 'amean')
    _, got = evaluation.predict(ensemble, source, patches, np.arange(len(LENGTHS)), cfg)
    quiet = buckets.silence(cfg, N_MELS)
    want = np.zeros_like(got)
    for w, b in weights:
        for i, c in enumerate(clips):
            n = max(len(c), 4)
            body = np.concatenate([c, np.tile(quiet, (n - len(c), 1))])
            for p in (0, 3):
                x = (np.concatenate([np.tile(quiet, (p, 1)), body, np.tile(quiet, (p, 1))])
                     - mean) / std
                z = x.mean() * w[0] + b
                want[i] += np.exp(z - z.max()) / np.exp(z - z.max()).sum() / 4
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
