"""Pipeline benchmark: the framework's input pipeline against its bounds and the original
approach, at FSDnoisy18k scale, all figures in one run.

    python bench/bench_pipeline.py [--scale 1.0] [--steps N] [--repeat N]
                                   [--skip memory,extract] [--out bench/RESULTS.md]

Figures (each measured in a fresh child process of this script, so that no measurement
inherits another's threads, caches or memory):
  1. training patches/s: ours (experiment.prepare's Trainer on the tf.data pipeline that
     Experiment.fit builds), the model-only bound (the same model fed one constant
     batch) and a reference re-implementation of the original
     approach (keras.utils.PyDataset over materialised patches, per-example Python loops
     for one-hot, label smoothing and mixup); mixup + LSR on, batch 64, baseline model.
  2. input-only patches/s (batches produced, no model): ours vs the reference.
  3. prediction clips/s over the test set: eval.predict_clips vs one predict per clip.
  4. peak resident memory to hold the training data: ours (frame matrix + patch table +
     PatchSource) vs all training patches materialised as float32.
  5. feature extraction clips/s on synthetic audio: 1 worker vs all cores.
  6. whole-clip prediction clips/s (extract.crop random_crop, clips fixed to 2000 frames,
     He et al.'s length): eval.predict_clips (length-bucketed batches) vs one
     model.predict per clip, with a small fully convolutional model.
Every ratio is also printed as `ratio <name>: <value>` for scripts.

The data set has FSDnoisy18k's size: 15,813 noisy training clips and 947 test clips
(times --scale); durations are a lognormal with sigma 1 clipped to [0.3 s, 30 s], its
median set so that the mean matches the published totals (noisy train 38.8 h -> 8.8 s
per clip, test 1.4 h -> 5.3 s), which skews it to short clips as in FSDnoisy18k. Frames
are 1 + samples // 882 at 44.1 kHz after varup replication to 2 s (101 frames at least),
96 mel bands, random float32 values written to a memory-mapped file as feat_extract does.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault('KERAS_BACKEND', 'tensorflow')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

FSD_TRAIN_CLIPS, FSD_TEST_CLIPS = 15813, 947
# (median seconds, sigma) of the clipped lognormal; medians solved numerically so that the
# clipped mean is 38.8 h / 15,813 = 8.83 s (train) and 1.4 h / 947 = 5.32 s (test).
DURATIONS = {'train': (6.006, 1.0), 'test': (3.359, 1.0)}
MIN_DUR, MAX_DUR = 0.3, 30.0
N_MELS, N_CLASSES, BATCH = 96, 20, 64
FIGURES = ['train', 'input', 'predict', 'memory', 'extract', 'whole']
# ratio name -> (target as text, test of the value given the core count)
TARGETS = {
    'train_vs_bound': ('>= 0.9', lambda v, n: v >= 0.9),
    'train_vs_reference': ('(none)', None),
    'input_vs_model': ('>= 10', lambda v, n: v >= 10),
    'predict_vs_per_clip': ('>= 10', lambda v, n: v >= 10),
    'memory_vs_materialised': ('<= 0.55', lambda v, n: v <= 0.55),
    'memory_f16_vs_materialised': ('<= 0.55', lambda v, n: v <= 0.55),
    'extract_all_vs_1': ('close to the cores (>= 0.75 x cores)', lambda v, n: v >= 0.75 * n),
    'predict_whole_clip_vs_per_clip': ('>= 5', lambda v, n: v >= 5),
}


# ============================================================================ data set

def clip_frames(durations, fs=44100, hop=882, min_s=2.0):
    """Frames per clip as feat_extract makes them: varup to min_s, then 1 + samples // hop."""
    samples = np.maximum(np.round(durations * fs), round(min_s * fs)).astype(np.int64)
    return 1 + samples // hop


def write_dataset(work, scale, seed):
    """Frame matrix (memory-mapped file), start/length and the clip table -> summary dict."""
    rng = np.random.default_rng(seed)
    n = {'train': max(1, round(FSD_TRAIN_CLIPS * scale)),
         'test': max(1, round(FSD_TEST_CLIPS * scale))}
    dur = {s: np.clip(m * np.exp(sig * rng.standard_normal(n[s])), MIN_DUR, MAX_DUR)
           for s, (m, sig) in DURATIONS.items()}
    durations = np.concatenate([dur['train'], dur['test']])
    length = clip_frames(durations)
    start = np.r_[0, np.cumsum(length)[:-1]].astype(np.int64)
    total = int(length.sum())
    with open(work / 'frames.f32', 'wb') as out, open(work / 'frames.f16', 'wb') as half:
        for lo in range(0, total, 1 << 20):  # 1 Mi frames (384 MiB) at a time
            block = rng.standard_normal((min(1 << 20, total - lo), N_MELS), dtype=np.float32)
            out.write(block.tobytes())
            half.write(block.astype(np.float16).tobytes())  # extract.store_dtype float16
    np.save(work / 'start.npy', start)
    np.save(work / 'length.npy', length)
    # Each subset's labels cycle through the classes in a random order, so that every
    # class has training clips at any --scale (the framework refuses a class without).
    labels = np.concatenate([rng.permutation(np.arange(n[s]) % N_CLASSES)
                             for s in ('train', 'test')])
    table = pd.DataFrame({
        'fname': [f'{i}.wav' for i in range(len(length))],
        'label_idx': labels, 'verified': 0, 'noisy_small': 0,
        'subset': ['train'] * n['train'] + ['test'] * n['test']})
    table.to_csv(work / 'table.csv', index=False)
    return {'train_clips': n['train'], 'test_clips': n['test'],
            'train_hours': float(dur['train'].sum() / 3600),
            'test_hours': float(dur['test'].sum() / 3600),
            'short_share': float((durations < 2).mean()),
            'frames': total, 'frames_mib': total * N_MELS * 4 / 2 ** 20}


def load_data(work, store_dtype='float32', overrides=()):
    """(config, table, classes, store) as the children see them."""
    import config
    import feat_extract
    import synthetic
    classes = synthetic.class_names(N_CLASSES)
    table = pd.read_csv(work / 'table.csv')
    table['label'] = [classes[k] for k in table.label_idx]
    table['labels'] = [(c,) for c in table.label]  # the label columns of every adapter
    table['labels_idx'] = [(k,) for k in table.label_idx]
    length = np.load(work / 'length.npy')
    frames = np.memmap(work / f'frames.f{np.dtype(store_dtype).itemsize * 8}',
                       dtype=store_dtype, mode='r', shape=(int(length.sum()), N_MELS))
    store = feat_extract.FeatureStore(frames, np.load(work / 'start.npy'), length, [], work)
    cfg = config.load_config(None, [
        'ctrl.train_data=noisy', 'ctrl.verbose=0', 'ctrl.run_name=bench',
        f'learn.n_classes={N_CLASSES}', 'learn.model=baseline', f'learn.batch_size={BATCH}',
        'learn.LSR=true', 'learn.mixup=true', 'learn.mode=1', 'learn.frames_on_device=auto',
        'loss.type=CCE', 'extract.patch_len=100', 'extract.patch_hop=50',
        f'extract.n_mels={N_MELS}', f'extract.store_dtype={store_dtype}', *overrides])
    return cfg, table, classes, store


# ============================================================================ children
# Each child prints one line 'RESULT <json>' last; the parent reads it.

class Context:
    def __init__(self, args):
        self.args, self.work = args, Path(args.work)
        self.warmup, self.steps = args.warmup, args.steps

    def prepare(self, mode):
        """learn.prepare on the benchmark data -> Experiment (its run folder is per mode)."""
        import experiment
        import learn
        import utils
        utils.configure_logging()
        cfg, table, classes, store = load_data(self.work)
        run_dir = self.work / f'run_{mode}'
        run_dir.mkdir(exist_ok=True)
        return experiment.prepare(cfg, learn.MODES[cfg['learn']['mode']], table, classes,
                                  store, utils.set_seed(self.args.seed), run_dir)


def step_timer(warmup, steps):
    """Callback timing steps warmup .. warmup + steps - 1 (after compilation and ramp-up).

    async_safe keeps Keras's asynchronous callback dispatch on: the callback then runs on
    a helper thread once the step's logs have been fetched, i.e. once the step is done,
    and the training loop itself never waits for it.
    """
    import keras

    class StepTimer(keras.callbacks.Callback):
        async_safe = True

        def __init__(self):
            super().__init__()
            self.marks = {}

        def on_train_batch_end(self, batch, logs=None):
            if batch in (warmup - 1, warmup + steps - 1):
                self.marks[batch] = time.perf_counter()

        def rate(self):
            return steps * BATCH / (self.marks[warmup + steps - 1] - self.marks[warmup - 1])

    return StepTimer()


def train_dataset(exp, steps, seed):
    """The tf.data pipeline that Experiment.fit trains on, over `steps` planned steps.

    Plans are the framework's (Experiment.plans: shuffled patches, mixup partners and
    weights), concatenated over epochs and cut to `steps`; pipeline.train_dataset as fit()
    builds it (fit() offers no way to time steps: no callbacks argument).
    """
    import pipeline
    import sampling
    draw, rng = exp.plans.epoch(exp.train_idx), np.random.default_rng(seed)

    def plan():
        parts = [draw(rng)]
        while sum(p.idx.shape[0] for p in parts) < steps:
            parts.append(draw(rng))
        return sampling.EpochPlan(*(np.concatenate([getattr(p, f) for p in parts])[:steps]
                                    for f in ('idx', 'partner', 'lam')))
    return pipeline.train_dataset(exp.source, plan, plan())


def device_info():
    import keras
    import tensorflow as tf
    gpus = tf.config.list_physical_devices('GPU')
    names = [tf.config.experimental.get_device_details(g).get('device_name', g.name)
             for g in gpus]
    return {'tf': tf.__version__, 'keras': keras.__version__, 'gpus': names}


def child_info(ctx):
    return device_info()


def child_train_ours(ctx):
    """learn.prepare's Trainer on the framework's pipeline, as Experiment.fit runs it
    (without the per-epoch validation and callbacks, which fall outside the timed steps)."""
    exp = ctx.prepare('train_ours')
    timer = step_timer(ctx.warmup, ctx.steps)
    total = ctx.warmup + ctx.steps
    exp.trainer.fit(train_dataset(exp, total, ctx.args.seed), epochs=1, steps_per_epoch=total,
                    callbacks=[timer], verbose=0, shuffle=False)
    return {'train_ours': timer.rate(), 'on_device': bool(exp.source.on_device),
            'train_patches': int(exp.train_idx.size), 'val_patches': int(exp.val_idx.size)}


def child_train_bound(ctx):
    """The same model and step fed one constant batch; the faster of two ways."""
    import architectures
    import keras
    import pipeline
    import losses
    import tensorflow as tf  # tf.data: Keras has no dataset API of its own
    import trainer as trainer_mod
    exp = ctx.prepare('train_bound')
    cfg, learn_cfg = exp.cfg, exp.cfg['learn']
    p = exp.plans.epoch(exp.train_idx)(np.random.default_rng(ctx.args.seed))
    # The batch dict (x, y, verified, ...) exactly as the step receives it on the host path
    batch = {key: np.asarray(t) for key, t in
             exp.source.train_batch(p.idx[0], p.partner[0], p.lam[0]).as_dict().items()}
    total, rates = ctx.warmup + ctx.steps, {}

    class Fed:  # a source whose batches arrive ready-made (the host path of Trainer)
        on_device = False

    def build():
        return architectures.build('baseline', batch['x'].shape[1:], N_CLASSES, learn_cfg)
    # (a) the framework's Trainer (same train_step, loss and metrics as ours)
    trainer = trainer_mod.Trainer(build(), Fed(), losses.get(cfg))
    trainer.compile(optimizer=keras.optimizers.Adam(learn_cfg['lr']),
                    jit_compile=pipeline.use_xla(cfg))
    timer = step_timer(ctx.warmup, ctx.steps)
    trainer.fit(tf.data.Dataset.from_tensors(batch).repeat(), epochs=1,
                steps_per_epoch=total, callbacks=[timer], verbose=0, shuffle=False)
    rates['trainer'] = timer.rate()
    # (b) plain Keras: model.compile with CCE + accuracy, model.fit, on the scores alone
    built = build()
    model = keras.Model(built.input, built.output['scores'])
    model.compile(optimizer=keras.optimizers.Adam(learn_cfg['lr']),
                  loss='categorical_crossentropy', metrics=['accuracy'],
                  jit_compile=pipeline.use_xla(cfg))
    timer = step_timer(ctx.warmup, ctx.steps)
    model.fit(tf.data.Dataset.from_tensors((batch['x'], batch['y'])).repeat(), epochs=1,
              steps_per_epoch=total, callbacks=[timer], verbose=0, shuffle=False)
    rates['plain_keras'] = timer.rate()
    return {'train_bound': max(rates.values()), 'bound_variants': rates}


# ---------------------------------------------------------------------------- reference

def materialise(store, rows, patch_len, patch_hop):
    """Copy every overlapping patch of the given clips -> float32 [n, patch_len, n_mels].

    Patch count and positions as data.n_patches (the last patch wraps around the clip, as
    the framework's patches do), so that both sides hold the same patches. Clips are read
    with np.fromfile (no memory map), as the original read one feature file per clip.
    """
    import data
    counts = data.n_patches(store.length[rows], patch_len, patch_hop)
    out = np.empty((int(counts.sum()), patch_len, N_MELS), np.float32)
    t, k = np.arange(patch_len), 0
    for row, count in zip(rows, counts):
        clip = np.fromfile(store.path / 'frames.f32', np.float32,
                           count=store.length[row] * N_MELS,
                           offset=store.start[row] * N_MELS * 4).reshape(-1, N_MELS)
        for j in range(count):
            out[k] = clip[(j * patch_hop + t) % len(clip)]
            k += 1
    return out, np.repeat(rows, counts)


def standardise_inplace(x, chunk=4096):
    """Per-band mean/std over all patches (float64 sums), applied in place, in chunks."""
    s1, s2, n = np.zeros(N_MELS), np.zeros(N_MELS), x.shape[0] * x.shape[1]
    for lo in range(0, len(x), chunk):
        part = x[lo:lo + chunk].astype(np.float64)
        s1 += part.sum(axis=(0, 1))
        s2 += (part ** 2).sum(axis=(0, 1))
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean ** 2, 1e-16))
    for lo in range(0, len(x), chunk):
        x[lo:lo + chunk] = (x[lo:lo + chunk] - mean) / std


def reference_dataset(patches, labels, eps, n_classes, batch, alpha, n_batches, seed):
    """The original approach: a PyDataset over materialised patches, per-example loops."""
    import keras

    class ReferencePatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()  # Keras defaults: workers=1, no multiprocessing
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(patches))
            self.per_epoch = len(patches) // batch

        def __len__(self):
            return n_batches

        def __getitem__(self, i):
            idx = self.order[(i % self.per_epoch) * batch:(i % self.per_epoch + 1) * batch]
            x = patches[idx][..., None]
            y = np.zeros((batch, n_classes), np.float32)
            for j in range(batch):  # one-hot, per example
                y[j, labels[idx[j]]] = 1.0
            for j in range(batch):  # label smoothing, per example
                e = eps[labels[idx[j]]]
                y[j] = y[j] * (1.0 - e) + e / n_classes
            partner = self.rng.permutation(batch)
            xm, ym = np.empty_like(x), np.empty_like(y)
            for j in range(batch):  # mixup, per example, lambda ~ Beta(alpha, alpha)
                lam = self.rng.beta(alpha, alpha)
                xm[j] = lam * x[j] + (1.0 - lam) * x[partner[j]]
                ym[j] = lam * y[j] + (1.0 - lam) * y[partner[j]]
            return xm, ym

        def on_epoch_end(self):
            self.order = self.rng.permutation(len(patches))

    return ReferencePatches()


def build_reference(ctx, n_batches):
    """Same split and LSR epsilons as ours; patches materialised and standardised."""
    import data
    import datasets
    import splits
    import utils
    utils.configure_logging()
    cfg, table, classes, store = load_data(ctx.work)
    ext, learn_cfg = cfg['extract'], cfg['learn']
    rows = datasets.train_rows(table, cfg['ctrl']['train_data'])
    train_rows, _ = splits.split_train_val(rows, table.label_idx.to_numpy()[rows],
                                         learn_cfg['val_split'], cfg['ctrl']['seed'])
    patches, clip = materialise(store, train_rows, ext['patch_len'], ext['patch_hop'])
    standardise_inplace(patches)
    labels = table.label_idx.to_numpy()[clip]
    ds = reference_dataset(patches, labels, data.lsr_eps(learn_cfg, classes), N_CLASSES,
                           BATCH, learn_cfg['mixup_alpha'], n_batches, ctx.args.seed)
    return cfg, ds


def child_train_reference(ctx):
    import architectures
    import keras
    import pipeline
    import utils
    total = ctx.warmup + ctx.steps
    cfg, ds = build_reference(ctx, total)
    learn_cfg = cfg['learn']
    utils.set_seed(ctx.args.seed)
    built = architectures.build('baseline', (100, N_MELS, 1), N_CLASSES, learn_cfg)
    model = keras.Model(built.input, built.output['scores'])  # plain Keras: one output
    model.compile(optimizer=keras.optimizers.Adam(learn_cfg['lr']),
                  loss='categorical_crossentropy', metrics=['accuracy'],
                  jit_compile=pipeline.use_xla(cfg))
    timer = step_timer(ctx.warmup, ctx.steps)
    model.fit(ds, epochs=1, steps_per_epoch=total, callbacks=[timer], verbose=0, shuffle=False)
    return {'train_reference': timer.rate()}


# ---------------------------------------------------------------------------- input only

def child_input_ours(ctx):
    """Batches as the training step gets them, no model.

    Host path: the framework's own tf.data pipeline (it maps source.train_batch).
    Device path: the same index pipeline, each element gathered by source.train_batch
    compiled as the step compiles it (XLA when learn.jit_compile).
    """
    import pipeline
    import tensorflow as tf  # tf.function: the gather is compiled as in the step
    exp = ctx.prepare('input_ours')
    total = ctx.warmup + ctx.steps
    ds = train_dataset(exp, total, ctx.args.seed)
    # a tf.function returns nested tensors, not a data.Batch: its dict, as tf.data's
    produce = (tf.function(lambda **step: exp.source.train_batch(**step).as_dict(),
                           jit_compile=pipeline.use_xla(exp.cfg))
               if exp.source.on_device else None)
    it, t0 = iter(ds), None
    for k in range(total):
        element = next(it)
        batch = produce(**element) if produce else element
        if k == ctx.warmup - 1:
            float(batch['x'][0, 0, 0, 0])  # wait for the device (a no-op on the host path)
            t0 = time.perf_counter()
    float(batch['x'][0, 0, 0, 0])
    return {'input_ours': ctx.steps * BATCH / (time.perf_counter() - t0)}


def child_input_reference(ctx):
    total = ctx.warmup + ctx.steps
    _, ds = build_reference(ctx, total)
    for k in range(total):
        ds[k]
        if k == ctx.warmup - 1:
            t0 = time.perf_counter()
    return {'input_reference': ctx.steps * BATCH / (time.perf_counter() - t0)}


# ---------------------------------------------------------------------------- prediction

def child_predict(ctx):
    """Test-set clip scores: eval.predict_clips vs one model.predict per clip."""
    import eval as evaluation
    exp = ctx.prepare('predict')
    cfg, source, patches, clf = exp.cfg, exp.source, exp.patches, exp.trainer.classifier
    test = exp.table.index[(exp.table.subset == 'test').to_numpy()].to_numpy()
    evaluation.predict_clips(clf, source, patches, test[:2], cfg)  # warm-up (TF start-up)
    t0 = time.perf_counter()
    evaluation.predict_clips(clf, source, patches, test[:2], cfg)
    overhead = time.perf_counter() - t0  # per call: predict_clips traces a new tf.function
    t0 = time.perf_counter()
    rows, scores = evaluation.predict_clips(clf, source, patches, test, cfg)
    batched = time.perf_counter() - t0
    # Per clip: that clip's standardised patches (built beforehand, not timed), one call.
    mean, std = (np.asarray(source.mean).reshape(-1), np.asarray(source.std).reshape(-1))
    inputs = []
    for row in rows:
        idx = patches.of_clips([row])
        x = np.asarray(exp.store.frames)[patches.frame_rows(idx, source.patch_len)]
        inputs.append(((x - mean) / std)[..., None].astype(np.float32))
    for x in inputs[:2]:
        clf.predict(x, verbose=0)  # warm-up
    t0 = time.perf_counter()
    per_clip = np.stack([np.exp(np.log(np.maximum(clf.predict(x, verbose=0)['scores'], 1e-12))
                                .mean(axis=0)) for x in inputs])
    per_clip_s = time.perf_counter() - t0
    return {'predict_batched': len(rows) / batched, 'predict_per_clip': len(rows) / per_clip_s,
            'predict_clips': int(len(rows)), 'predict_2_clip_call_s': overhead,
            'predict_max_abs_diff': float(np.abs(per_clip - scores).max())}


def child_predict_whole(ctx):
    """Test-set whole-clip scores (extract.crop random_crop, clip_frames 2000):
    eval.predict_clips, whose batches hold as many clips of one length as the frame budget
    allows, vs one model.predict per clip on the same standardised clip.

    The model is a small fully convolutional one (conv-BN-ReLU, global average pooling)
    that takes any length: the figure compares the two prediction paths; on a CPU the
    arithmetic of vgg_gap or cnn_gru over 2000 x 96 inputs (tens of GFLOP per clip) would
    hide them both.
    """
    import keras
    import data
    import eval as evaluation
    import pipeline
    import utils
    utils.configure_logging()
    utils.set_seed(ctx.args.seed)
    cfg, table, classes, store = load_data(ctx.work, overrides=[
        'extract.crop=random_crop', 'extract.crop_frames=512', 'extract.clip_frames=2000'])
    clips = pipeline.patch_table(cfg, store)
    clip_frames = cfg['extract']['clip_frames']
    train = clips.of_clips(np.flatnonzero((table.subset == 'train').to_numpy()))
    mean, std = data.fit_scaler(store.frames, clips, train, clip_frames)
    source = pipeline.batch_source(cfg, store, clips, table, mean, std,
                                   np.zeros(N_CLASSES, np.float32))
    inputs = keras.Input((None, N_MELS, 1))
    x = keras.layers.Conv2D(16, 3, padding='same')(inputs)
    x = keras.layers.Activation('relu')(keras.layers.BatchNormalization()(x))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.MaxPooling2D(4)(x))
    # Named outputs, as every model of architectures.MODELS returns them.
    probs = keras.layers.Dense(N_CLASSES, activation='softmax')(x)
    clf = keras.Model(inputs, {'scores': probs})
    test = table.index[(table.subset == 'test').to_numpy()].to_numpy()
    evaluation.predict_clips(clf, source, clips, test[:2], cfg)  # warm-up (TF start-up)
    t0 = time.perf_counter()
    rows, scores = evaluation.predict_clips(clf, source, clips, test, cfg)
    batched = time.perf_counter() - t0
    # Per clip: the clip repeated or cut to clip_frames, standardised (not timed).
    frames, per_clip = np.asarray(store.frames), []
    for row in rows:
        t = np.arange(clip_frames)
        x = frames[store.start[row] + t % store.length[row]]
        per_clip.append((((x - mean) / std)[None, :, :, None]).astype(np.float32))
    for x in per_clip[:2]:
        clf.predict(x, verbose=0)  # warm-up
    t0 = time.perf_counter()
    alone = np.concatenate([clf.predict(x, verbose=0)['scores'] for x in per_clip])
    per_clip_s = time.perf_counter() - t0
    return {'predict_whole_batched': len(rows) / batched,
            'predict_whole_per_clip': len(rows) / per_clip_s,
            'predict_whole_clips_per_call': evaluation.eval_batch_size(cfg),
            'predict_whole_max_abs_diff': float(np.abs(alone - scores).max())}


# ---------------------------------------------------------------------------- memory

def _status_kib(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{field} missing from /proc/self/status')


def _memory_baseline():
    """Import and start everything both sides load, then reset the peak.

    -> {field: KiB} of VmRSS, RssAnon and RssFile at that point.
    """
    import data  # noqa: F401
    import feat_extract  # noqa: F401
    import experiment  # noqa: F401
    import tensorflow as tf
    tf.config.list_logical_devices()  # starts the runtime (and the GPU, if any)
    float(tf.reduce_sum(tf.ones([4])))
    try:  # Linux >= 4.0: writing 5 resets VmHWM to the current RSS
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError:
        pass
    return {f: _status_kib(f) for f in ('VmRSS', 'RssAnon', 'RssFile')}


def _memory_result(name, base):
    """Peak RSS above the baseline (the figure), and what is still held at the end:
    anonymous memory (arrays, tensors) and file-backed pages (the memory-mapped frames)."""
    return {name: (_status_kib('VmHWM') - base['VmRSS']) / 1024,
            name + '_anon_held': (_status_kib('RssAnon') - base['RssAnon']) / 1024,
            name + '_file_held': (_status_kib('RssFile') - base['RssFile']) / 1024}


def child_memory_ours(ctx, store_dtype='float32', name='memory_ours'):
    """The data part of experiment.prepare: patch table, split, scaler, PatchSource."""
    import data
    import datasets
    import splits
    import pipeline
    base = _memory_baseline()
    cfg, table, classes, store = load_data(ctx.work, store_dtype)
    ext, learn_cfg = cfg['extract'], cfg['learn']
    rows = datasets.train_rows(table, cfg['ctrl']['train_data'])
    train_rows, _ = splits.split_train_val(rows, table.label_idx.to_numpy()[rows],
                                         learn_cfg['val_split'], cfg['ctrl']['seed'])
    patches = data.make_patches(store.start, store.length, ext['patch_len'], ext['patch_hop'])
    train_idx = patches.of_clips(train_rows)
    mean, std = data.fit_scaler(store.frames, patches, train_idx, ext['patch_len'])
    source = pipeline.batch_source(cfg, store, patches, table, mean, std,
                                   data.lsr_eps(learn_cfg, classes))
    result = _memory_result(name, base)
    result[name + '_on_device'] = bool(source.on_device)
    if source.on_device:
        import tensorflow as tf
        result[name + '_gpu_peak'] = tf.config.experimental.get_memory_info(
            'GPU:0')['peak'] / 2 ** 20
    return result


def child_memory_ours_f16(ctx):
    """The same with extract.store_dtype float16 (half the bytes per frame)."""
    return child_memory_ours(ctx, 'float16', 'memory_ours_f16')


def child_memory_materialised(ctx):
    """All patches of the training clips (train + validation) as one float32 array."""
    import data
    import datasets
    import splits
    base = _memory_baseline()
    cfg, table, _, store = load_data(ctx.work)
    ext = cfg['extract']
    rows = datasets.train_rows(table, cfg['ctrl']['train_data'])
    patches, _ = materialise(store, rows, ext['patch_len'], ext['patch_hop'])
    result = _memory_result('memory_materialised', base)
    result['materialised_mib'] = patches.nbytes / 2 ** 20
    # What holding every frame once (float32, no other copy) would give: the floor of
    # memory_vs_materialised for this duration mix.
    result['frames_once_vs_materialised'] = store.frames.nbytes / patches.nbytes
    return result


# ---------------------------------------------------------------------------- extraction

def child_extract(ctx):
    """feat_extract.features over the synthetic wavs with ctx.args.workers workers."""
    import config
    import feat_extract
    import utils
    audio = ctx.work / 'audio' / 'FSDnoisy18k.audio_train'
    paths = sorted(audio.glob('*.wav'))
    table = pd.DataFrame({'fname': [p.name for p in paths], 'path': [str(p) for p in paths]})
    workers = ctx.args.workers or utils.n_workers(0)
    cache = tempfile.mkdtemp(prefix=f'features_{workers}_', dir=ctx.work)  # never cached
    cfg = config.load_config(None, [f'ctrl.dataset_path={ctx.work / "audio"}',
                                    f'ctrl.features_dir={cache}'])
    # Warm-up outside the timer: librosa's lazy imports and the mel basis (forked workers
    # inherit both, as they would in main.py after the first clip).
    feat_extract.log_mel(feat_extract.load_audio(str(paths[0]), cfg['extract']),
                         cfg['extract'])
    t0 = time.perf_counter()
    store = feat_extract.features(cfg, table, workers=workers, progress=False)
    seconds = time.perf_counter() - t0
    assert not store.failed and (store.length > 0).all()
    name = 'extract_1' if workers == 1 else 'extract_all'
    return {name: len(paths) / seconds, name + '_workers': workers, 'extract_clips': len(paths)}


CHILDREN = {name[len('child_'):]: fn for name, fn in globals().items()
            if name.startswith('child_')}


def run_child(args):
    ctx = Context(args)
    result = CHILDREN[args.child](ctx)
    print('RESULT ' + json.dumps(result), flush=True)


# ============================================================================ parent

def best(results):
    """Best of repeated child results: the highest rate, the lowest memory or time."""
    out = dict(results[0])
    for key in out:
        values = [r[key] for r in results]
        if isinstance(out[key], float):
            lower = key.startswith('memory_') or key.endswith('_s')
            out[key] = min(values) if lower else max(values)
    return out


def spawn(args, work, mode, **extra):
    """Run one child args.repeat times; return the best of its result dicts."""
    return best([spawn_once(args, work, mode, **extra) for _ in range(args.repeat)])


def spawn_once(args, work, mode, **extra):
    """Run one child; return its result dict (print its output if it fails)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), '--child', mode, '--work',
           str(work), '--seed', str(args.seed), '--steps', str(args.steps), '--warmup',
           str(args.warmup)]
    for key, value in extra.items():
        cmd += [f'--{key}', str(value)]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('RESULT ')]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f'child {mode} failed with status {proc.returncode}')
    if args.verbose:
        sys.stderr.write(proc.stdout)
    print(f'  {mode:<20} {time.time() - t0:6.1f} s', file=sys.stderr, flush=True)
    return json.loads(lines[-1][len('RESULT '):])


def make_audio(work, scale, seed, clips=None):
    """Synthetic wavs at 44.1 kHz, 1-5 s, written with synthetic.make_dataset.

    max(400, 4000 x scale) clips unless `clips` (--audio-clips) says how many: one clip
    takes a few ms, and fewer clips would time the start of the worker pool rather than
    the extraction (which a test that only runs the benchmark does not mind).
    """
    import contextlib
    import io
    import synthetic
    n = clips or max(400, round(4000 * scale))
    with contextlib.redirect_stdout(io.StringIO()):
        synthetic.make_dataset(work / 'audio', n_classes=2, train_per_class=-(-n // 2),
                               test_per_class=0, min_dur=1.0, max_dur=5.0, sr=44100,
                               seed=seed)


def machine(info):
    cpu = next((ln.split(':', 1)[1].strip() for ln in open('/proc/cpuinfo')
                if ln.startswith('model name')), platform.processor())
    cores = len(os.sched_getaffinity(0))
    gpu = ', '.join(info['gpus']) or 'no GPU'
    return (f'{cores} CPU cores ({cpu}), {gpu}; Python {platform.python_version()}, '
            f'TensorFlow {info["tf"]}, Keras {info["keras"]}; 1-min load average before '
            f'the run {info["load"]:.1f}; {datetime.datetime.now():%Y-%m-%d %H:%M}'), cores


def ratios(r, cores):
    """Ratio name -> value for the figures that were measured."""
    pairs = {'train_vs_bound': ('train_ours', 'train_bound'),
             'train_vs_reference': ('train_ours', 'train_reference'),
             'input_vs_model': ('input_ours', 'train_ours'),
             'predict_vs_per_clip': ('predict_batched', 'predict_per_clip'),
             'memory_vs_materialised': ('memory_ours', 'memory_materialised'),
             'memory_f16_vs_materialised': ('memory_ours_f16', 'memory_materialised'),
             'extract_all_vs_1': ('extract_all', 'extract_1'),
             'predict_whole_clip_vs_per_clip': ('predict_whole_batched',
                                                'predict_whole_per_clip')}
    return {name: r[a] / r[b] for name, (a, b) in pairs.items() if a in r and b in r}


def _fmt(value):
    if isinstance(value, dict):
        return '{' + ', '.join(f'{k}: {_fmt(v)}' for k, v in value.items()) + '}'
    return f'{value:.4g}' if isinstance(value, float) else str(value)


def report(args, r, data_info, info):
    """The markdown block (figures, ratios, machine) and the `ratio name: value` lines."""
    desc, cores = machine(info)
    placed = r.get('on_device', r.get('memory_ours_on_device'))
    path = ('' if placed is None else '; frames on the GPU' if placed
            else '; frames on the host (gathered in a tf.data map)')
    rows = [
        ('1', 'training, ours (framework pipeline + Trainer)', 'train_ours', 'patches/s'),
        ('1', 'training, model-only bound (one constant batch)', 'train_bound', 'patches/s'),
        ('1', 'training, reference (PyDataset, per-example loops)', 'train_reference',
         'patches/s'),
        ('2', 'input only, ours', 'input_ours', 'patches/s'),
        ('2', 'input only, reference (PyDataset.__getitem__)', 'input_reference',
         'patches/s'),
        ('3', 'prediction, batched (eval.predict_clips)', 'predict_batched', 'clips/s'),
        ('3', 'prediction, one model.predict per clip', 'predict_per_clip', 'clips/s'),
        ('4', 'peak RSS, ours (frames + patch table + PatchSource)', 'memory_ours', 'MiB'),
        ('4', 'peak RSS, ours with float16 frames (extract.store_dtype)', 'memory_ours_f16',
         'MiB'),
        ('4', 'peak RSS, materialised training patches', 'memory_materialised', 'MiB'),
        ('5', 'feature extraction, 1 worker', 'extract_1', 'clips/s'),
        ('5', f'feature extraction, {cores} workers', 'extract_all', 'clips/s'),
        ('6', 'whole-clip prediction, length-bucketed (eval.predict_clips)',
         'predict_whole_batched', 'clips/s'),
        ('6', 'whole-clip prediction, one model.predict per clip', 'predict_whole_per_clip',
         'clips/s'),
    ]
    cmd = 'python bench/bench_pipeline.py ' + ' '.join(args.argv)
    out = [f'### `{cmd.strip()}`', '', f'Machine: {desc}', '',
           f'Data: {data_info["train_clips"]} train clips ({data_info["train_hours"]:.1f} h), '
           f'{data_info["test_clips"]} test clips ({data_info["test_hours"]:.2f} h), '
           f'{data_info["short_share"]:.0%} shorter than 2 s, {data_info["frames"]:,} frames '
           f'x {N_MELS} mels ({data_info["frames_mib"]:.0f} MiB float32)'
           + (f'; {r["train_patches"]:,} training patches' if 'train_patches' in r else '')
           + f'{path}; {args.warmup} warm-up + {args.steps} timed steps of {BATCH}.', '',
           '| # | figure | value | unit |', '|---|---|---:|---|']
    for num, label, key, unit in rows:
        if key in r:
            out.append(f'| {num} | {label} | {r[key]:,.1f} | {unit} |')
    out += ['', '| ratio | value | target | met |', '|---|---:|---|---|']
    values = ratios(r, cores)
    for name, value in values.items():
        target, test = TARGETS[name]
        met = '' if test is None else ('yes' if test(value, cores) else 'no')
        out.append(f'| {name} | {value:.2f} | {target} | {met} |')
    shown = {key for _, _, key, _ in rows} | {'train_patches', 'on_device'}
    details = [f'{k} = {_fmt(v)}' for k, v in r.items() if k not in shown]
    if details:
        out += ['', 'Details: ' + '; '.join(details) + '.']
    out += ['', '```'] + [f'ratio {n}: {v:.3f}' for n, v in values.items()] + ['```', '']
    return '\n'.join(out)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=' '.join(__doc__.split('\n\n')[0].split()))
    parser.add_argument('--scale', type=float, default=1.0,
                        help='fraction of the FSDnoisy18k clip counts (default 1.0)')
    parser.add_argument('--steps', type=int, default=None,
                        help='timed training/input steps (default 1000 with a GPU, else 20)')
    parser.add_argument('--warmup', type=int, default=None,
                        help='untimed steps before them (default max(5, steps // 5))')
    parser.add_argument('--skip', default='', help=f'comma-separated figures to skip: '
                        f'{",".join(FIGURES)}')
    parser.add_argument('--out', help='append the markdown block to this file')
    parser.add_argument('--repeat', type=int, default=1,
                        help='run each measurement this many times and keep the best')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--audio-clips', type=int, default=None,
                        help='synthetic clips to extract (default max(400, 4000 x scale))')
    parser.add_argument('--workdir', help='where the temporary data go (default: $TMPDIR)')
    parser.add_argument('--verbose', action='store_true', help="show the children's output")
    parser.add_argument('--child', choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument('--work', help=argparse.SUPPRESS)
    parser.add_argument('--workers', type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = argv
    skip = [s for s in args.skip.split(',') if s]
    unknown = sorted(set(skip) - set(FIGURES))
    if unknown:
        parser.error(f'--skip {",".join(unknown)}: unknown figure; valid: {",".join(FIGURES)}')
    args.figures = [f for f in FIGURES if f not in skip]
    if not args.scale > 0:
        parser.error('--scale must be positive')
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        return run_child(args)
    work = Path(tempfile.mkdtemp(prefix='bench_pipeline_', dir=args.workdir))
    try:
        load = os.getloadavg()[0]  # other work on the machine skews every figure
        args.steps, args.warmup = args.steps or 0, args.warmup or 0
        info = {**spawn_once(args, work, 'info'), 'load': load}
        args.steps = args.steps or (1000 if info['gpus'] else 20)
        args.warmup = args.warmup or max(5, args.steps // 5)
        t0 = time.time()
        data_info = write_dataset(work, args.scale, args.seed)
        print(f'data written in {time.time() - t0:.1f} s -> {work}', file=sys.stderr)
        r = {}
        plan = {'train': ['train_bound', 'train_ours', 'train_reference'],
                'input': ['input_ours', 'input_reference'], 'predict': ['predict'],
                'memory': ['memory_ours', 'memory_ours_f16', 'memory_materialised'],
                'whole': ['predict_whole']}
        for figure in args.figures:
            if figure == 'extract':
                make_audio(work, args.scale, args.seed, args.audio_clips)
                r.update(spawn(args, work, 'extract', workers=1))
                r.update(spawn(args, work, 'extract', workers=0))
            else:
                for mode in plan[figure]:
                    r.update(spawn(args, work, mode))
        block = report(args, r, data_info, info)
        print(block)
        if args.out:
            with open(args.out, 'a') as f:
                f.write('\n' + block)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
