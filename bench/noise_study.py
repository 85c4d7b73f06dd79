"""Noise study: the noise-robust methods side by side on synthetic data with wrong labels.

    python bench/noise_study.py --noise-rate 0.4 --train-per-class 60 --repeats 3

Writes one synthetic dataset (FSDnoisy18k layout, `--noise-rate` of the unverified labels
wrong), then runs every method through main.py with the same seeds (repeat r uses
ctrl.seed = seed + r for every method) and prints one markdown table: test accuracy mean
± 95% confidence interval (Student t over the repeats) and, where a method drops or masks
examples, the noise-detection precision and recall (mean over repeats; for per-epoch
figures, the mean over the epochs in which something was flagged).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import main  # noqa: E402
import runfolder  # noqa: E402
import synthetic  # noqa: E402


def methods(epochs):
    """Method -> config overrides. mixup and LSR are off: the loss/mode is compared."""
    half = max(1, epochs // 2)
    unit = 8 * epochs  # staged: the paper's 2:2:1 step ratio (10k / 10k / 5k), scaled down
    return {
        'CCE': ['learn.mode=1', 'loss.type=CCE'],
        'lq_loss': ['learn.mode=1', 'loss.type=lq_loss'],
        'adaptive_lq': ['learn.mode=1', 'loss.type=adaptive_lq'],
        'mode2': ['learn.mode=2', 'loss.type=lq_lqperc_time_sudden',
                  f'learn.stage1_epoch={half}'],
        'mode3': ['learn.mode=3', 'loss.type=lq_loss', f'learn.prune_stage1={half}'],
        'staged': ['learn.mode=staged', 'loss.type=CCE',
                   f'learn.staged_steps=[{2 * unit},{2 * unit},{unit}]'],
    }


LABELS = {'mode2': 'mode 2 (lq_lqperc_time_sudden)', 'mode3': 'mode 3 (pruning, lq_loss)',
          'staged': 'staged (CCE, threshold masking)'}


def base_config(args, dataset, work):
    return {
        'ctrl': {'dataset_path': str(dataset), 'train_data': 'all', 'verbose': 0,
                 'features_dir': str(work / 'features'), 'logs_dir': str(work / 'logs')},
        'extract': {'fs': 16000, 'fmax': 8000, 'n_fft': 512, 'win_length_samples': 400,
                    'hop_length_samples': 160, 'n_mels': 48, 'patch_len': 48,
                    'patch_hop': 24, 'audio_len_s': 1},
        'learn': {'n_classes': args.n_classes, 'n_epochs': args.epochs, 'patience': args.epochs,
                  'batch_size': 64, 'mixup': False, 'LSR': False},
    }


def detection(results):
    """Mean precision/recall of a run's noise_detection block (per-epoch lists or one)."""
    nd = results.get('noise_detection')
    if not nd:
        return None
    if not isinstance(nd['precision'], list):
        return nd['precision'], nd['recall']
    used = [i for i, n in enumerate(nd['n_flagged']) if n > 0]
    if not used:
        return None
    return (float(np.mean([nd['precision'][i] for i in used])),
            float(np.mean([nd['recall'][i] for i in used])))


def mean_ci(values):
    values = np.asarray(values, float)
    if values.size < 2:
        return values.mean(), float('nan')
    half = stats.t.ppf(0.975, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size)
    return values.mean(), half


def run_one(config_path, name, overrides):
    code = main.main(['-p', str(config_path), '-o', f'ctrl.run_name={name}',
                      *[a for o in overrides for a in ('-o', o)]])
    if code != 0:
        raise SystemExit(f'run {name} failed with exit code {code}')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--work', default='bench/_noise_study', help='dataset, features and logs')
    p.add_argument('--noise-rate', type=float, default=0.4)
    p.add_argument('--n-classes', type=int, default=10)
    p.add_argument('--train-per-class', type=int, default=60)
    p.add_argument('--test-per-class', type=int, default=15)
    p.add_argument('--clean-fraction', type=float, default=0.2)
    p.add_argument('--epochs', type=int, default=15)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--seed', type=int, default=1)
    p.add_argument('--only', nargs='*', help='run only these methods: ' + ', '.join(methods(3)))
    return p.parse_args(argv)


def main_study(argv=None):
    args = parse_args(argv)
    work = Path(args.work).resolve()
    dataset = work / f'data_n{args.noise_rate}_k{args.n_classes}_t{args.train_per_class}'
    if not (dataset / 'FSDnoisy18k.meta' / 'test.csv').exists():
        synthetic.make_dataset(dataset, n_classes=args.n_classes,
                               train_per_class=args.train_per_class,
                               test_per_class=args.test_per_class,
                               clean_fraction=args.clean_fraction, noise_rate=args.noise_rate,
                               min_dur=0.5, max_dur=3.0, sr=16000, seed=args.seed)
    config = work / 'study.yaml'
    config.write_text(yaml.safe_dump(base_config(args, dataset, work)))
    rows, t0 = [], time.time()
    for method, overrides in methods(args.epochs).items():
        if args.only and method not in args.only:
            continue
        accs, dets = [], []
        for r in range(args.repeats):
            name = f'study_{method}_r{r}'
            run_one(config, name, [*overrides, f'ctrl.seed={args.seed + r}'])
            results = json.loads(runfolder.path(work / 'logs' / name, 'results').read_text())
            accs.append(results['accuracy_micro'])
            dets.append(detection(results))
        mean, half = mean_ci(accs)
        det = [d for d in dets if d is not None]
        prec = f'{np.mean([d[0] for d in det]):.2f}' if det else '–'
        rec = f'{np.mean([d[1] for d in det]):.2f}' if det else '–'
        rows.append(f'| {LABELS.get(method, method)} | {mean:.2f} ± {half:.2f} | {prec} | {rec} |')
    print(f'\nnoise study: {args.n_classes} classes, {args.train_per_class} train clips per '
          f'class ({args.clean_fraction:.0%} verified), {args.noise_rate:.0%} wrong labels in '
          f'the unverified part, {args.epochs} epochs, {args.repeats} repeats, '
          f'{time.time() - t0:.0f} s\n')
    print('| method | test accuracy % (mean ± 95% CI) | noise-detection precision % | recall % |')
    print('|---|---|---|---|')
    print('\n'.join(rows))


if __name__ == '__main__':
    main_study()
