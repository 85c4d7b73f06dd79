"""extract.features waveform (Akiyama & Sato, DCASE 2019 task 2, Sec. 3.2.1 and 3.3.2; the
released WaveDataset): the cache against soundfile + numpy, crops against the released
pad-and-crop written in numpy, the ranges of the stretch and gain, the options refused on
each input kind, and one tiny multitask + snapshot EnvNet-v2 run under ctrl.fast_dev_run."""
import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml

import config
import feat_extract as fe
import sampling
import waveform
from config import ConfigError
from conftest import clip_table

FS = 16000
WAVE = ['extract.features=waveform', 'learn.model=envnet_v2', 'extract.fs=16000',
        'extract.normalize_audio=false', 'extract.load_mode=full', 'ctrl.run_name=w']


@pytest.fixture
def wav_files(tmp_path):
    """16-bit PCM clips (one stereo, one at 22.05 kHz) and a waveform config caching them."""
    folder = tmp_path / 'data'
    folder.mkdir()
    rng = np.random.default_rng(5)
    names = ['a.wav', 'b.wav', 'stereo.wav']
    for name, n in zip(names[:2], (3000, 4100)):
        sf.write(folder / name, rng.integers(-30000, 30000, n).astype(np.int16), FS,
                 subtype='PCM_16')
    sf.write(folder / 'stereo.wav', rng.integers(-30000, 30000, (2000, 2)).astype(np.int16),
             FS, subtype='PCM_16')
    table = pd.DataFrame({'fname': names, 'path': [str(folder / n) for n in names]})
    cfg = config.load_config(None, WAVE + [f'ctrl.dataset_path={folder}',
                                           f'ctrl.features_dir={tmp_path / "features"}',
                                           'ctrl.workers=1'])
    return cfg, table


def test_the_cache_holds_the_int16_samples_over_32768(wav_files):
    cfg, table = wav_files
    store = fe.features(cfg, table, progress=False)
    assert store.frames.shape == (3000 + 4100 + 2000, 1) and isinstance(store.frames, np.memmap)
    for i, path in enumerate(table.path):
        pcm, sr = sf.read(path, dtype='int16', always_2d=True)
        expected = (pcm.astype(np.float64) / 32768.0).mean(axis=1)  # stereo: the channels' mean
        np.testing.assert_allclose(store.clip(i)[:, 0], expected, rtol=0, atol=1e-7)
    assert np.abs(store.frames).max() <= 1.0
    manifest = json.loads((store.path / 'manifest.json').read_text())
    assert manifest['n_mels'] == 1 and manifest['complete']
    # keyed by what the samples depend on: not by the crop, but by the input kind and fs
    same = json.loads(json.dumps(cfg))
    same['extract']['crop_samples'] = 40000
    assert fe.cache_dir(same, table) == store.path
    for key, value in (('features', 'logmel'), ('fs', 22050), ('normalize_audio', True)):
        other = json.loads(json.dumps(cfg))
        other['extract'][key] = value
        assert fe.cache_dir(other, table) != store.path, key
    assert fe.features(cfg, table, progress=False).path == store.path  # reused


# ----------------------------------------------------------------------------- crops

def _source(lengths, crop, scale_p=0.0):
    """A WaveSource over clips of random samples of the given lengths (one entry each)."""
    import data
    rng = np.random.default_rng(1)
    lengths = np.asarray(lengths, np.int64)
    start = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    samples = rng.uniform(-1, 1, (int(lengths.sum()), 1)).astype(np.float32)
    table = clip_table(['a', 'b'], len(lengths), 0, 0, seed=0)
    source = waveform.WaveSource(samples, data.make_clips(start, lengths), table,
                                 np.zeros(1, np.float32), np.ones(1, np.float32),
                                 np.zeros(2, np.float32), crop, on_device=False)
    return source, samples, start, lengths


def _released_crop(clip, scale, start, crop):
    """utils.py WaveDataset of the released code: do_scaling (nearest), do_padding
    (crop // 2 zeros on both sides), do_crop at shift = start + crop // 2."""
    size = int(len(clip) * scale)
    stretched = clip[(np.arange(size) / scale).astype(np.int32)]
    padded = np.pad(stretched, crop // 2, 'constant')
    return padded[start + crop // 2:start + crop // 2 + crop]


@pytest.mark.parametrize('stretch', [False, True])
def test_crops_are_the_released_pad_stretch_and_crop(stretch):
    crop = 64
    source, samples, start, lengths = _source([40, 64, 300, 7], crop)
    rng = np.random.default_rng(3)
    plan = sampling.plan_epoch(rng, np.arange(4), 4, mixup=True, alpha=1.0)
    setting = {'p': 1.0 if stretch else 0.0, 'max': 1.25}
    for _ in range(20):
        waveform.augment_plan(rng, plan, lengths, crop, setting, {'p': 0.0, 'db': 6.0})
        step = plan.idx[0]
        s = plan.scale[0, :, 0] if stretch else np.ones(4, np.float32)
        x = np.asarray(source.inputs(step, plan.shift[0], scale=s if stretch else None))
        assert x.shape == (4, crop)  # every crop is crop_samples long, short clips included
        for b, i in enumerate(step):
            clip = samples[start[i]:start[i] + lengths[i], 0]
            np.testing.assert_array_equal(
                x[b], _released_crop(clip, np.float64(s[b]), plan.shift[0, b], crop))


def test_crop_starts_cover_the_padded_clip():
    """From crop // 2 before the clip to crop // 2 after its end minus the crop."""
    rng = np.random.default_rng(0)
    crop, clen = 100, np.full(20000, 300)
    starts = waveform.crop_starts(rng, clen, np.ones(clen.size, np.float32), crop)
    assert starts.min() == -50 and starts.max() == 300 + 50 - 100
    short = waveform.crop_starts(rng, np.full(5000, 10), np.ones(5000, np.float32), crop)
    assert short.min() == -50 and short.max() == -40  # the clip lies somewhere in the crop
    stretched = waveform.crop_starts(rng, np.full(5000, 300), np.full(5000, 1.25, np.float32),
                                     crop)
    assert stretched.max() == 375 + 50 - 100


def test_training_batches_and_validation_inputs_are_crops():
    crop = 50
    source, *_ = _source([30, 200, 120], crop)
    rng = np.random.default_rng(2)
    plan = sampling.plan_epoch(rng, np.arange(3), 3, mixup=True, alpha=1.0)
    waveform.augment_plan(rng, plan, np.array([30, 200, 120]), crop, {'p': 1.0, 'max': 1.25},
                          {'p': 1.0, 'db': 6.0})
    step = {k: v[0] for k, v in plan.as_dict().items()}
    assert np.asarray(source.train_batch(**step).x).shape == (3, crop)
    x, y = source.eval_batch(np.arange(3))
    assert np.asarray(x).shape == (3, crop) and np.asarray(y).shape == (3, 2)


def test_gain_multiplies_the_mixed_crop_once():
    """One factor per example on both members: g (lam a + (1 - lam) b), as the released
    code applies its gain after mixup."""
    crop = 32
    source, *_ = _source([100, 100], crop)
    rng = np.random.default_rng(4)
    plan = sampling.plan_epoch(rng, np.arange(2), 2, mixup=True, alpha=1.0)
    waveform.augment_plan(rng, plan, np.array([100, 100]), crop, {'p': 0.0, 'max': 1.25},
                          {'p': 1.0, 'db': 6.0})
    step = {k: v[0] for k, v in plan.as_dict().items()}
    plain = dict(step, gain=np.ones(2, np.float32), partner_gain=np.ones(2, np.float32))
    np.testing.assert_allclose(np.asarray(source.train_batch(**step).x),
                               np.asarray(source.train_batch(**plain).x) * step['gain'][:, None],
                               rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- ranges

def test_scale_and_gain_factors_span_the_papers_ranges():
    rng = np.random.default_rng(0)
    s = waveform.scales(rng, (20000,), {'p': 1.0, 'max': 1.25})
    assert 0.8 <= s.min() < 0.801 and 1.249 < s.max() <= 1.25
    # max^U(-1, 1): the log of the factor is uniform, so as many stretch as squeeze
    u = np.log(s) / np.log(1.25)
    assert abs(u.mean()) < 0.02 and abs(np.mean(u < -0.5) - 0.25) < 0.02
    g = waveform.gains_db(rng, (20000,), {'p': 1.0, 'db': 6.0})
    assert 10 ** (-6 / 20) <= g.min() < 0.502 and 1.99 < g.max() <= 10 ** (6 / 20)
    db = 20 * np.log10(g)  # uniform in dB, as the released do_gain
    assert abs(db.mean()) < 0.1 and abs(np.mean(db > 3) - 0.25) < 0.02
    half = waveform.gains_db(rng, (20000,), {'p': 0.5, 'db': 6.0})
    assert abs(np.mean(half == 1.0) - 0.5) < 0.02
    assert (waveform.scales(rng, (100,), {'p': 0.0, 'max': 1.25}) == 1).all()


def test_no_augmentation_draws_no_factors():
    rng = np.random.default_rng(0)
    plan = sampling.plan_epoch(rng, np.arange(8), 4)
    waveform.augment_plan(rng, plan, np.full(8, 500), 100, {'p': 0.0, 'max': 1.25},
                          {'p': 0.0, 'db': 6.0})
    assert plan.scale.shape == (2, 4, 0) and (plan.gain == 1).all()


# ----------------------------------------------------------------------------- refused options

@pytest.mark.parametrize('override, name', [
    ('extract.n_mels=64', 'extract.n_mels'), ('extract.patch_len=50', 'extract.patch_len'),
    ('extract.crop=random_crop', 'extract.crop'), ('extract.fmax=8000', 'extract.fmax'),
    ('extract.normalize=per_clip', 'extract.normalize'),
    ('learn.specaugment.freq_masks=1', 'learn.specaugment'),
    ('learn.freq_mask.p=0.5', 'learn.freq_mask'), ('learn.gain.p=0.5', 'learn.gain'),
    ('learn.extra_crop.p=0.5', 'learn.extra_crop')])
def test_log_mel_options_are_refused_on_a_waveform_run(override, name):
    with pytest.raises(ConfigError) as err:
        config.load_config(None, WAVE + [override])
    assert str(err.value).startswith(f'{name} is a log-mel option, but extract.features is '
                                     f'waveform (it is set to ')
    assert str(err.value).endswith('remove it, or set extract.features logmel')


@pytest.mark.parametrize('option, value', [
    ('extract.crop_samples', 66650), ('learn.wave_scale.p', 1.0), ('learn.wave_gain.db', 3.0)])
def test_waveform_options_are_refused_on_a_log_mel_run(option, value):
    with pytest.raises(ConfigError, match=f'is a waveform option, but extract.features is '
                                          f'logmel'):
        config.load_config(None, [f'{option}={value}', 'ctrl.run_name=w'])


def test_model_and_input_kind_must_match_and_crops_fit_the_model(make_cfg):
    import architectures
    import trunks
    with pytest.raises(ConfigError, match='learn.model envnet_v2 takes waveform inputs'):
        architectures.check(make_cfg('learn.model=envnet_v2'))
    with pytest.raises(ConfigError, match='learn.model resnet34 takes log-mel inputs'):
        architectures.check(make_cfg(*WAVE, 'learn.model=resnet34'))
    short = trunks.ENVNET_MIN_SAMPLES - 1
    with pytest.raises(ConfigError, match=f'extract.crop_samples = {short} is shorter than'):
        architectures.check(make_cfg(*WAVE, f'extract.crop_samples={short}'))
    assert architectures.input_shape(make_cfg(*WAVE)) == (None,)


def test_a_refused_option_is_one_line_and_exit_2(tmp_path, capsys):
    import main
    path = tmp_path / 'w.yaml'
    path.write_text(yaml.safe_dump({'extract': {'features': 'waveform', 'n_mels': 64},
                                    'learn': {'model': 'envnet_v2'}}))
    assert main.main(['-p', str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'extract.n_mels is a log-mel option' in err[0]


# ----------------------------------------------------------------------------- a run

@pytest.fixture(scope='module')
def envnet_run(tmp_path_factory):
    """(config file, data folder, logs folder, run folder) of one finished tiny run under
    ctrl.fast_dev_run: EnvNet-v2 with multitask heads, two cyclic-cosine snapshots
    averaged, mixup, stretch and gain, SGD."""
    import main
    import synthetic
    root = tmp_path_factory.mktemp('waveform')
    data = synthetic.make_dataset(root / 'k19', n_classes=3, train_per_class=4,
                                  test_per_class=2, clean_fraction=0.5, noise_rate=0.0,
                                  min_dur=0.5, max_dur=1.5, sr=FS, seed=4,
                                  layout='fsdkaggle2019')
    cfg = {'ctrl': {'dataset': 'fsdkaggle2019', 'train_data': 'all', 'dataset_path': str(data),
                    'features_dir': str(root / 'features'), 'verbose': 0,
                    'logs_dir': str(root / 'logs'), 'workers': 1, 'fast_dev_run': True},
           'extract': {'features': 'waveform', 'fs': FS, 'crop_samples': 20600,
                       'load_mode': 'full', 'normalize_audio': False},
           'learn': {'model': 'envnet_v2', 'multitask': True, 'head': 'sigmoid',
                     'batch_size': 2, 'lr_schedule': 'cyclic_cosine', 'cycles': 2,
                     'cycle_epochs': 2, 'n_epochs': 4, 'optim': 'SGD', 'lr': 0.001,
                     'mixup': True, 'mixup_alpha': 1.0, 'mode': 1, 'n_classes': None,
                     'wave_scale': {'p': 1.0}, 'wave_gain': {'p': 1.0},
                     'predict_batch_size': 4,
                     # moving statistics that follow the few batches of a dry run (with
                     # 0.99 they stay at their initial values and every clip scores alike,
                     # which the collapse check would stop)
                     'bn_momentum': 0.5},
           'loss': {'type': 'bce'}}
    path = root / 'envnet.yaml'
    path.write_text(yaml.safe_dump(cfg))
    assert main.main(['-p', str(path), '-o', 'ctrl.run_name=wave']) == 0
    return path, data, root / 'logs', root / 'logs' / 'wave'


def test_multitask_snapshot_envnet_run_trains_predicts_and_reports(envnet_run, tmp_path):
    """The run's files and log; predict.py's whole-clip scores equal the mean of the saved
    snapshots' on the clips read with soundfile and zero-padded on both sides in numpy."""
    import keras

    import predict
    import trunks
    _, data, logs, run = envnet_run
    log = (logs / 'wave.out').read_text()
    results = json.loads((run / 'results.json').read_text())
    assert results['status'] == 'finished' and results['fast_dev_run']
    assert results['ensemble']['n_models'] == 2 and (run / 'snapshot_1_2.keras').is_file()
    assert f'model: envnet_v2, {results["n_trainable_params"]} trainable parameters' in log
    assert 'LWLRAP:' in log and 'random crops of 20600 samples' in log
    assert len(pd.read_csv(run / 'predictions.csv')) == 6  # every test clip, scored whole
    hist = pd.read_csv(run / 'history.csv')
    assert (hist.loss_verified > 0).all() and (hist.loss_unverified > 0).all()
    scaler = np.load(run / 'scaler.npz')
    assert scaler['mean'].tolist() == [0.0] and scaler['std'].tolist() == [1.0]
    out = tmp_path / 'test.csv'
    assert predict.main([str(run), '--clips', 'test', '--out', str(out)]) == 0
    scored = pd.read_csv(out)
    # predict.py scores with the run's whole ensemble (its 2 snapshots, amean)
    models = [keras.saving.load_model(run / name, compile=False)
              for name in results['ensemble']['members']]
    assert len(models) == 2
    test = pd.read_csv(data / 'FSDKaggle2019.meta' / 'test_post_competition.csv')
    assert sorted(scored.fname) == sorted(test.fname)
    for fname, row in zip(scored.fname, scored.to_numpy()[:, 2:]):
        pcm, _ = sf.read(data / 'FSDKaggle2019.audio_test' / fname, dtype='int16')
        x = pcm / 32768.0
        extra = max(0, trunks.ENVNET_MIN_SAMPLES - x.size)
        x = np.pad(x, (extra // 2, extra - extra // 2))[None].astype(np.float32)
        np.testing.assert_allclose(row.astype(np.float64),
                                   np.mean([np.asarray(m(x, training=False)['scores'])[0]
                                            for m in models], axis=0),
                                   rtol=1e-4, atol=1e-6)


def test_a_killed_waveform_run_resumes_to_the_same_result(envnet_run, monkeypatch):
    """Cut after epoch 3 (in the second cycle), the same command continues it: the crops,
    stretches and gains drawn again from the stage's rng, the same history, predictions
    and lwlrap as the uninterrupted run."""
    import callbacks
    import main
    path, _, logs, whole = envnet_run
    real = callbacks.Backup.on_epoch_end

    def stop(self, epoch, logs=None):
        real(self, epoch, logs)
        if epoch + 1 == 3:
            raise KeyboardInterrupt
    with monkeypatch.context() as patch:
        patch.setattr(callbacks.Backup, 'on_epoch_end', stop)
        assert main.main(['-p', str(path), '-o', 'ctrl.run_name=cut']) == 130
    assert main.main(['-p', str(path), '-o', 'ctrl.run_name=cut']) == 0
    assert 'resumed at epoch 4' in (logs / 'cut.out').read_text()
    resumed = logs / 'cut'
    pd.testing.assert_frame_equal(
        *[pd.read_csv(d / 'history.csv').drop(columns='seconds') for d in (whole, resumed)])
    pd.testing.assert_frame_equal(*[pd.read_csv(d / 'predictions.csv')
                                    for d in (whole, resumed)])
    assert (json.loads((whole / 'results.json').read_text())['lwlrap'] ==
            json.loads((resumed / 'results.json').read_text())['lwlrap'])


def test_length_buckets_and_padding_views_score_waveform_runs(envnet_run, tmp_path):
    """recognizer.length_tolerance and tta_pad on a waveform run (WaveSource.padded): with
    tolerance 0 and one view of 0 samples, each clip scores as the saved models score its
    samples followed by zeros up to the shortest scored length (crop_samples), in numpy."""
    import keras

    import predict
    _, data, _, run = envnet_run
    results = json.loads((run / 'results.json').read_text())
    out = tmp_path / 'views.csv'
    assert predict.main([str(run), '--clips', 'test', '--out', str(out),
                         '-o', 'recognizer.length_tolerance=0',
                         '-o', 'recognizer.tta_pad=[0]']) == 0
    scored = pd.read_csv(out).set_index('fname')
    assert len(scored) == 6 and np.isfinite(scored.to_numpy()[:, 1:].astype(float)).all()
    crop = yaml.safe_load((run / 'config.yaml').read_text())['extract']['crop_samples']
    models = [keras.saving.load_model(run / name, compile=False)
              for name in results['ensemble']['members']]
    checked = 0
    for fname in scored.index:
        pcm, _ = sf.read(data / 'FSDKaggle2019.audio_test' / fname, dtype='int16')
        x = np.pad(pcm / 32768.0, (0, max(0, crop - pcm.size)))[None].astype(np.float32)
        want = np.mean([np.asarray(m(x, training=False)['scores'])[0] for m in models], axis=0)
        np.testing.assert_allclose(scored.loc[fname].to_numpy()[1:].astype(np.float64), want,
                                   rtol=1e-4, atol=1e-6)
        checked += 1
    assert checked == 6
