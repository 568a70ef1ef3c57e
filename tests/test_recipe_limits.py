"""Recipes (--config FILE.yaml) that are hostile or mistaken: past the bounds once aliases expand, nested past
the stack, not UTF-8, a flag set twice, non-finite numbers, huge values and integers, YAML's Python-only types,
--overwrite. Each is refused at once with one line naming the file and the key, quoting at most an excerpt of a
value; all in-process, no training."""
import re
import time

import pytest
import test_recipe_features
from test_recipe_features import write_recipe

import train
from training import recipe
from training.config import UsageError, build_parser, parse_args

data_dir = test_recipe_features.data_dir  # the fixture: a shard folder enough for the flag checks


def refusal(recipe_path, data, *flags):
    """parse_args' one-line UsageError for the recipe at recipe_path, which it must name."""
    with pytest.raises(UsageError) as caught:
        parse_args(["--config", recipe_path, *flags, data])
    message = str(caught.value)
    assert "\n" not in message and recipe_path in message, message[:2000]
    return message


def cli_refusal(capsys, argv):
    """train.cli's exit status 2 and its one stderr line."""
    assert train.cli(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: "), lines[:3]
    return lines[0]


def nested_aliases(fan_out, levels, indent="  "):
    """A block list whose item k is an anchored list of fan_out aliases to item k-1: fan_out ** levels values in
    a few hundred bytes."""
    lines = [f"{indent}- &n0 [{', '.join(['3'] * fan_out)}]"]
    lines += [f"{indent}- &n{k} [{', '.join([f'*n{k - 1}'] * fan_out)}]" for k in range(1, levels)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# Bounds with aliases expanded


@pytest.mark.parametrize("text, key, bound", [
    ("epochs: 4\nauto_augment:\n" + nested_aliases(11, 8), "auto_augment", "values"),  # 11**8 values in 330 bytes
    ("mixup: 0.1\nlr_steps: [&e [1, 2, 3, 4, 5, 6, 7], [*e, *e, *e], &f [*e, *e, *e, *e, *e], [" +
     ", ".join(["*f"] * 242) + "]]\n", "lr_steps", "values"),  # 10,002 values: just past the bound
    ("batch_size: 8\nprefix: &p " + "w" * 150_000 + "\nresume: [" + ", ".join(["*p"] * 40) + "]\n", "resume",
     "characters"),  # 6 MB of text from 150 KB
])
def test_a_recipe_past_its_bounds_once_aliases_expand_is_refused_at_once(tmp_path, data_dir, text, key, bound):
    path = write_recipe(tmp_path, text)
    started = time.perf_counter()
    message = refusal(path, data_dir)
    assert time.perf_counter() - started < 1.0  # nothing expanded: the counts are taken on the parser's events
    assert f"{path}: key {key!r}: more than" in message and bound in message and "aliases" in message, message
    assert len(message) < 300


def test_the_value_bound_is_generous_and_exact(tmp_path, data_dir):
    """Real recipes hold some 40 values (recipes/*.yaml); one with MAX_RECIPE_ITEMS values in all is read, one
    more is not. Counted: the mapping, each key, the list and each of its items."""
    room = recipe.MAX_RECIPE_ITEMS - 5  # the mapping, 'epochs', its value, 'lr_steps', the list
    steps = list(range(1, room + 1))
    args = parse_args(["--config", write_recipe(tmp_path, f"epochs: 3\nlr_steps: {steps}\n"), data_dir])
    assert args.lr_steps == tuple(steps)
    message = refusal(write_recipe(tmp_path, f"epochs: 3\nlr_steps: {steps + [room + 1]}\n"), data_dir)
    assert f"key 'lr_steps': more than {recipe.MAX_RECIPE_ITEMS} values" in message, message


@pytest.mark.parametrize("text, key", [
    ("epochs: 2\nlr_steps: " + "[" * 4000 + "7" + "]" * 4000 + "\n", "lr_steps"),  # flow lists
    ("epochs: 2\noutput_dir:\n" + "".join("  " * (d + 1) + f"k{d}:\n" for d in range(700)) + "  " * 701 + "x\n",
     "output_dir"),  # block mappings
    # 40 anchored lists, each 30 deep around an alias to the one before: 1,200 deep once expanded.
    ("lr_steps:\n" + "".join(f"  - &d{k} " + "[" * 30 + (f"*d{k - 1}" if k else "5") + "]" * 30 + "\n"
                             for k in range(40)), "lr_steps"),
])
def test_nesting_past_the_bound_is_refused_naming_the_key_not_a_recursion_error(tmp_path, data_dir, text, key):
    message = refusal(write_recipe(tmp_path, text), data_dir)
    assert f"key {key!r}" in message and ("nested more than" in message or "nesting depth" in message), message


def test_a_file_past_the_byte_bound_is_refused_before_it_is_parsed(tmp_path, data_dir):
    text = "epochs: 3\n" + ("# " + "-" * 997 + "\n") * (recipe.MAX_RECIPE_BYTES // 1000 + 1)
    started = time.perf_counter()
    message = refusal(write_recipe(tmp_path, text), data_dir)
    assert time.perf_counter() - started < 1.0 and f"larger than {recipe.MAX_RECIPE_BYTES} bytes" in message


# ---------------------------------------------------------------------------------------------------------------
# Text, keys and values


@pytest.mark.parametrize("content, line, column, byte", [
    ("depth: 18\nprefix: r\u00e9sum\u00e9\n".encode("latin-1"), 2, 10, "0xe9"),  # latin-1, not UTF-8
    ("momentum: 0.9  # \u00e0 bient\u00f4t\n".encode() + b"epochs: 4\n" + "prefix: s\u00f8".encode()[:-1],
     3, 10, "0xc3"),  # cut in the middle of a character
])
def test_a_recipe_that_is_not_utf8_names_the_byte_and_where(tmp_path, data_dir, capsys, content, line, column, byte):
    path = tmp_path / "latin.yaml"
    path.write_bytes(content)
    message = cli_refusal(capsys, ["--config", str(path), data_dir])
    assert f"--config {path}: not UTF-8 text: byte {byte} at line {line}, column {column}" in message, message


@pytest.mark.parametrize("text, named", [
    ("epochs: 5\nbatch_size: 32\nepochs: 7\n", "key 'epochs' given twice (lines 1 and 3)"),
    ("tensorboard: false\ndepth: 34\ntensorboard: true\n", "key 'tensorboard' given twice (lines 1 and 3)"),
    ("warmup_epochs: 1\nwarmup-epochs: 2\n", "keys 'warmup_epochs' (line 1) and 'warmup-epochs' (line 2)"),
    ("weight_decay: 0.01\nlr: 0.2\nwd: 0.02\n", "keys 'weight_decay' (line 1) and 'wd' (line 3)"),
    ("channels-last: true\nno_channels_last: true\n", "keys 'channels-last' (line 1) and 'no_channels_last'"),
    ("compile: model\nno-compile: true\n", "keys 'compile' (line 1) and 'no-compile' (line 2)"),
    ("<<: {label_smoothing: 0.1, epochs: 9}\nlabel_smoothing: 0.2\n", "key 'label_smoothing' given twice"),
])
def test_a_flag_set_twice_is_refused_naming_both_keys(tmp_path, data_dir, text, named):
    message = refusal(write_recipe(tmp_path, text), data_dir)
    assert named in message, message


def float_flags():
    return sorted(action.option_strings[0][2:] for action in build_parser()._actions if action.type is float)


def test_every_float_flag_refuses_nan_and_infinity_naming_the_file_and_key(tmp_path, data_dir):
    flags = float_flags()
    assert {"lr", "momentum", "ema-decay", "warmup-epochs", "save-every", "bce-target-thresh"} <= set(flags)
    for i, flag in enumerate(flags):
        key = flag.replace("-", "_") if i % 2 else flag
        for value, shown in ((".NaN", "nan"), (".inf", "inf"), ("-.Inf", "-inf"), ("'-1e400'", "-inf")):
            message = refusal(write_recipe(tmp_path, f"epochs: 3\n{key}: {value}\n"), data_dir)
            assert f"key {key!r}: --{flag} must be a finite number, got {shown}" in message, message


LONG = 250_000


@pytest.mark.parametrize("line, key", [
    ("lr_schedule: " + "s" * LONG, "lr_schedule"),  # a choice
    ("batch_size: 12" + "z" * LONG, "batch_size"),  # an int
    ("auto_augment: rand-m9-" + "z" * LONG, "auto_augment"),  # its parser quotes the value and a part of it
    ("lr_steps: [" + ", ".join(["4"] * 9_000) + "]", "lr_steps"),  # 18 KB of epochs, not increasing
    ("tensorboard: " + "y" * LONG, "tensorboard"),  # a switch
    ("resume: /no/such/" + "r" * LONG, "resume"),  # training/config.py's check
    ("prefix: runs/" + "p" * LONG, "prefix"),  # training/config.py's check of --prefix
    ("? " + "k" * LONG + "\n: 1", "k" * 60),  # an unknown key
    ("lr: !" + "t" * LONG + " 0.1", "lr"),  # an unknown tag
    ("epochs: 3\nlr_steps: [" + "8" * LONG + "]", "lr_steps"),  # an epoch past Python's 4300 digits
])
def test_an_error_line_quotes_only_an_excerpt_of_a_long_value(tmp_path, data_dir, line, key):
    path = write_recipe(tmp_path, "depth: 18\n" + line + "\n")
    message = refusal(path, data_dir)
    assert len(message) < len(path) + 400 and key in message, message[:2000]
    assert not re.search(r"(.)\1{%d}" % recipe.MAX_SHOWN, message), message  # no run longer than an excerpt


def test_the_command_line_alone_may_replace_a_finished_run(tmp_path, data_dir, capsys):
    out = tmp_path / "out"
    out.mkdir()
    held = {name: f"{name} of the finished run" for name in ("T_checkpoint.pth.tar", "T_metrics.jsonl")}
    for name, content in held.items():
        (out / name).write_text(content)
    base = f"prefix: T\noutput_dir: {out}\nepochs: 1\n"
    for value in ("true", "false", "yes"):
        path = write_recipe(tmp_path, base + f"overwrite: {value}\n")
        message = cli_refusal(capsys, ["--config", path, data_dir])
        assert f"--config {path}: key 'overwrite': " in message and "only the command line" in message, message
    assert {p.name: p.read_text() for p in out.iterdir()} == held
    args = parse_args(["--config", write_recipe(tmp_path, base), "--overwrite", data_dir])
    assert args.overwrite and args.prefix == "T"


@pytest.mark.parametrize("text, message", [
    ("batch_size: 3" + "0" * 5000 + "\n", "key 'batch_size': an integer of more than"),  # past Python's 4300
    ("prefix: !!binary UmVzTmV0\n", "key 'prefix': expected a value for --prefix, got binary data"),
    ("output_dir: !!set {a, b}\n", "key 'output_dir': expected a value for --output-dir, got a set"),
    ("lr_steps: !!omap [{a: 1}, {b: 2}]\n", "key 'lr_steps': expected a list of values for --lr-steps"),
    ("prefix: x/y\n", "key 'prefix': --prefix must be a plain file-name part"),
])
def test_values_refused_as_read_or_as_checked_name_the_key(tmp_path, data_dir, text, message):
    path = write_recipe(tmp_path, text)
    line = refusal(path, data_dir)
    assert f"--config {path}: {message}" in line, line
