"""train.py --config FILE.yaml: a recipe, a YAML mapping of flag names to values, becomes the parser's defaults,
each value converted and checked as its flag would be, so that the command line overrides it key by key.

A key that is no flag, or a value its flag refuses, raises UsageError naming the file and the key.
"""
import argparse

import yaml

from training.errors import UsageError
from training.flags import OneLineParser


def with_recipe(parser, argv):
    """The parser with --config's values as defaults (a command-line flag still wins), and a function that
    names the file and key in a check's message about a value the recipe set."""
    known, _ = _ConfigOnly().parse_known_args(argv)
    if not known.config:
        return parser, lambda message, args: message
    defaults, keys = _config_defaults(parser, known.config)
    parser.set_defaults(**defaults)

    def name_origin(message, args):
        dest = message.split()[0].lstrip("-").replace("-", "_") if message.startswith("--") else ""
        if dest in keys and getattr(args, dest) == defaults[dest]:
            return f"--config {known.config}: key {keys[dest]!r}: {message}"
        return message
    return parser, name_origin


class _ConfigOnly(OneLineParser):
    """Reads --config alone, before the whole command line is parsed with the recipe's defaults."""

    def __init__(self):
        super().__init__(add_help=False)
        self.add_argument("--config", default="")


def _config_defaults(parser, path):
    """({dest: value}, {dest: key as written}) of the recipe at `path`, each value converted and checked as its
    flag would be."""
    try:
        with open(path) as f:
            recipe = yaml.safe_load(f)
    except OSError as exc:
        raise UsageError(f"--config {path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"--config {path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if recipe is None:
        return {}, {}
    if not isinstance(recipe, dict):
        raise UsageError(f"--config {path}: expected a mapping of flag names to values, got {type(recipe).__name__}")
    defaults, keys = {}, {}
    for key, value in recipe.items():
        flag = "--" + str(key).replace("_", "-")
        action = parser._option_string_actions.get(flag)
        if action is None or action.dest in ("config", "help"):
            raise UsageError(f"--config {path}: unknown key {key!r} (keys are train.py flags; DATA goes on the "
                             "command line)")
        if action.nargs == 0 and value is False and not isinstance(action, argparse.BooleanOptionalAction):
            continue  # a switch left off: the flag's own default stands
        try:
            defaults[action.dest] = _flag_value(action, flag, value)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
            raise UsageError(f"--config {path}: key {key!r}: {exc}") from None
        keys[action.dest] = key
    return defaults, keys


def _flag_value(action, flag, value):
    """What `flag VALUE` (or, for a switch, `flag` when VALUE is true) on the command line would set."""
    if action.nargs == 0:  # a switch: store_true, store_const, --x/--no-x
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        if isinstance(action, argparse.BooleanOptionalAction):
            return value != flag.startswith("--no-")
        return action.const
    if isinstance(value, (dict, bool)) or value is None:
        raise ValueError(f"expected a value for {flag}, got {value!r}")
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    try:
        converted = action.type(text) if action.type else text
    except ValueError:  # as argparse says it (training.flags' _flag_type raises ArgumentTypeError with its own reason)
        raise ValueError(f"invalid {getattr(action.type, '__name__', 'value')} value: {text!r}") from None
    if action.choices is not None and converted not in action.choices:
        raise ValueError(f"invalid choice {text!r} (choose from {', '.join(map(str, action.choices))})")
    return converted
