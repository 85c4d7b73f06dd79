"""bench/bench_pipeline.py still runs: every child of the benchmark at a tiny scale, in this
process (a child process per figure would spend the time importing TensorFlow), and the
report over their figures. No timing is asserted: each child must return its figures, and
every figure must be a finite number."""
import importlib.util
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope='module')
def bench():
    spec = importlib.util.spec_from_file_location('bench_pipeline',
                                                  ROOT / 'bench' / 'bench_pipeline.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def ctx(bench, tmp_path_factory):
    """A Context as a child gets it, on a data set of 0.6 % of FSDnoisy18k's clips (95
    training clips, 4 or 5 per class, so that learn.val_split 0.15 takes one of each; 6
    test clips) and 8 audio clips to extract, 1 warm-up and 2 timed steps."""
    import keras
    work = tmp_path_factory.mktemp('bench')
    data_info = bench.write_dataset(work, 0.006, seed=0)
    args = bench.parse_args(['--scale', '0.006', '--steps', '2', '--warmup', '1',
                             '--work', str(work), '--audio-clips', '8'])
    yield SimpleNamespace(context=bench.Context(args), args=args, work=work,
                          data_info=data_info, results={})
    # experiment.prepare sets the global precision policy; leave the default behind.
    keras.mixed_precision.set_global_policy('float32')


def _figures(value):
    """Every number in a child's result (nested dicts included), booleans left out."""
    if isinstance(value, dict):
        return [x for v in value.values() for x in _figures(v)]
    if isinstance(value, bool):
        return []
    return [value] if isinstance(value, (int, float)) else []


# (child, keyword arguments, figures it must return) for every child the parent spawns.
CHILDREN = [
    ('info', {}, ['tf', 'keras', 'gpus']),
    ('train_bound', {}, ['train_bound', 'bound_variants']),
    ('train_ours', {}, ['train_ours', 'train_patches', 'val_patches']),
    ('train_reference', {}, ['train_reference']),
    ('input_ours', {}, ['input_ours']),
    ('input_reference', {}, ['input_reference']),
    ('predict', {}, ['predict_batched', 'predict_per_clip', 'predict_max_abs_diff']),
    ('predict_whole', {}, ['predict_whole_batched', 'predict_whole_per_clip']),
    ('memory_ours', {}, ['memory_ours']),
    ('memory_ours_f16', {}, ['memory_ours_f16']),
    ('memory_materialised', {}, ['memory_materialised', 'materialised_mib']),
    ('extract', {'workers': 1}, ['extract_1']),
    ('extract', {'workers': 2}, ['extract_all']),
]


def test_the_parent_spawns_no_child_left_out_here(bench):
    assert {name for name, _, _ in CHILDREN} == set(bench.CHILDREN)


@pytest.mark.parametrize('name, extra, keys', CHILDREN,
                         ids=[f'{n}{e.get("workers", "")}' for n, e, _ in CHILDREN])
def test_child_returns_finite_figures(bench, ctx, name, extra, keys):
    if name == 'extract' and not (ctx.work / 'audio').exists():
        bench.make_audio(ctx.work, ctx.args.scale, ctx.args.seed, ctx.args.audio_clips)
    ctx.context.args.workers = extra.get('workers', 0)
    result = bench.CHILDREN[name](ctx.context)
    assert set(keys) <= set(result)
    numbers = _figures(result)
    assert all(math.isfinite(x) for x in numbers), result
    if name != 'info':
        assert numbers
    ctx.results.update(result)


def test_report_of_the_children_figures(bench, ctx):
    """The parent's markdown block and ratio lines over the figures measured above."""
    if 'extract_all' not in ctx.results:
        pytest.skip('needs every child test of this file')
    info = {**{k: ctx.results[k] for k in ('tf', 'keras', 'gpus')}, 'load': 0.0}
    block = bench.report(ctx.args, ctx.results, ctx.data_info, info)
    ratios = dict(line[len('ratio '):].split(': ') for line in block.splitlines()
                  if line.startswith('ratio '))
    assert set(ratios) == set(bench.TARGETS)
    assert all(math.isfinite(float(v)) for v in ratios.values())
