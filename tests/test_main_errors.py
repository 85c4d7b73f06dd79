"""Issue 19, cases 2, 8 and 9: a mistake in the config file or an override given to main.py
is one line naming the file (or override), the line and column, and what is wrong; exit 2.

These fail while the config loads, before TensorFlow is imported: each takes milliseconds.
"""
import pytest

import main


def one_line(capsys, code):
    """main.main's exit status is 2 and stderr holds one 'error: ' line and nothing else."""
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), err
    return lines[0]


def run(path, *overrides, logs):
    args = ['-p', str(path), '-o', f'ctrl.logs_dir={logs}']
    for o in overrides:
        args += ['-o', o]
    return main.main(args)


# ----------------------------------------------------------------------------- case 2

DUPLICATES = {
    # a second section: PyYAML kept the second one, a run with batch 64 and warm-up 10
    'section': ('learn:\n  batch_size: 32\n  mixup_warmup_epochs: 1\nloss:\n  type: CCE\n'
                'learn:\n  batch_size: 64\n  mixup_warmup_epochs: 10\n',
                'key learn is given twice, at line 1 and at line 6'),
    'key': ('learn:\n  batch_size: 32\n  lr: 0.001\n  batch_size: 64\n',
            'key learn.batch_size is given twice, at line 2 and at line 4'),
    'nested': ('learn:\n  specaugment:\n    freq_width: 2\n    freq_width: 3\n',
               'key learn.specaugment.freq_width is given twice, at line 3 and at line 4'),
    'flow': ('ctrl:\n  inject_noise: {rate: 0.2, rate: 0.4}\n',
             'key ctrl.inject_noise.rate is given twice, at line 2, column 18 and at line 2, '
             'column 29'),
}


@pytest.mark.parametrize('case', DUPLICATES)
def test_a_key_given_twice_is_refused_with_both_lines(tmp_path, capsys, case):
    text, message = DUPLICATES[case]
    path = tmp_path / 'dup.yaml'
    path.write_text(text)
    line = one_line(capsys, run(path, logs=tmp_path / 'logs'))
    assert line.startswith(f'error: config file {path}: {message} ') and 'keep one' in line
    assert not (tmp_path / 'logs').exists()


def test_a_key_given_twice_in_an_override_is_refused(tmp_path, capsys):
    path = tmp_path / 'exp.yaml'
    path.write_text('learn:\n  lr: 0.001\n')
    line = one_line(capsys, run(path, 'learn.specaugment={freq_width: 2, freq_width: 3}',
                                logs=tmp_path / 'logs'))
    assert ("override 'learn.specaugment={freq_width: 2, freq_width: 3}': key "
            "learn.specaugment.freq_width is given twice, at column 2 and at column 17") in line


def test_merge_keys_and_equal_keys_of_other_mappings_are_no_duplicates(tmp_path, capsys):
    """YAML's merge key (<<) overrides on purpose; the same key in two sections is two
    keys."""
    import config
    path = tmp_path / 'exp.yaml'
    path.write_text('learn:\n  specaugment: &mask {freq_width: 2, time_width: 3}\n'
                    '  lr: 0.01\nloss:\n  type: CCE\nctrl:\n  seed: 3\nextract:\n  n_mels: 64\n'
                    'recognizer:\n  aggregate: amean\n')
    assert config.load_config(path)['learn']['specaugment']['freq_width'] == 2
    assert config.parse_yaml('a: &x {k: 1, j: 2}\nb:\n  <<: *x\n  k: 3\n', 'test') == \
        {'a': {'k': 1, 'j': 2}, 'b': {'k': 3, 'j': 2}}


# ----------------------------------------------------------------------------- case 9

SYNTAX = {
    # an unclosed flow sequence: PyYAML's first line was "while parsing a flow sequence"
    'flow': ('learn:\n  lr: [0.1\n  mixup: true\n',
             "line 3, column 8 ('mixup: true'): expected ',' or ']', but got ':' (while "
             "parsing a flow sequence at line 2, column 7 ('lr: [0.1'))"),
    'tab': ('learn:\n  lr: 0.1\n\tmixup: true\n',
            "line 3, column 1 ('mixup: true'): found character '\\t' that cannot start any "
            "token (while scanning for the next token)"),
    'quote': ('ctrl:\n  run_name: "abc\n',
              'line 3, column 1 (the end of the file): found unexpected end of stream (while '
              "scanning a quoted scalar at line 2, column 13 ('run_name: \"abc'))"),
}


@pytest.mark.parametrize('case', SYNTAX)
def test_yaml_syntax_error_names_line_column_and_text(tmp_path, capsys, case):
    text, where = SYNTAX[case]
    path = tmp_path / 'bad.yaml'
    path.write_text(text)
    line = one_line(capsys, run(path, logs=tmp_path / 'logs'))
    assert line == f'error: config file {path} is not valid YAML: {where}'


def test_invalid_override_value_is_one_line(tmp_path, capsys):
    path = tmp_path / 'exp.yaml'
    path.write_text('learn:\n  lr: 0.001\n')
    line = one_line(capsys, run(path, 'learn.staged_steps=[1, 2', logs=tmp_path / 'logs'))
    assert line == ("error: override 'learn.staged_steps=[1, 2' is not valid YAML: column 6 "
                    "of '[1, 2': expected ',' or ']', but got '<stream end>' (while parsing a "
                    "flow sequence at column 1 of '[1, 2')")


# ----------------------------------------------------------------------------- case 8

def test_a_binary_file_or_a_folder_as_params_is_one_line(tmp_path, capsys):
    png = tmp_path / 'plot.png'
    png.write_bytes(b'\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR')
    line = one_line(capsys, run(png, logs=tmp_path / 'logs'))
    assert line == (f'error: config file {png} is not a text file (byte 0x89 at offset 0 is '
                    f"not UTF-8); give the experiment's YAML file")
    nul = tmp_path / 'nul.yaml'
    nul.write_bytes(b'learn:\n  lr\x00: 1\n')
    line = one_line(capsys, run(nul, logs=tmp_path / 'logs'))
    assert line.startswith(f'error: config file {nul} is not valid YAML: line 2, column 5 ')
    assert 'character #x0000 is not allowed in YAML' in line
    line = one_line(capsys, run(tmp_path, logs=tmp_path / 'logs'))
    assert line == (f"error: config file {tmp_path} is a directory; give the experiment's "
                    f'YAML file')
    assert not (tmp_path / 'logs').exists()
