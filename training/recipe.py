"""train.py --config FILE.yaml: a recipe, a YAML mapping of flag names to values, becomes the parser's defaults,
each value converted and checked as its flag would be, so that the command line overrides it key by key.

A key that is no flag (or --overwrite, which only the command line may give), a flag set twice (one key written
twice, or two spellings of one flag), a value its flag refuses (a non-finite number included), or a file that is
not UTF-8 YAML within the bounds below raises UsageError: one line naming the file and, where there is one, the
key, quoting at most a short excerpt of any value.
"""
import argparse
import datetime
import math
import re
import sys

import yaml

from training.errors import UsageError
from training.flags import OneLineParser

# What a recipe may hold. The shipped ones (recipes/*.yaml) are about 1 KB holding at most 37 values (keys
# included) nested at most 2 deep; the bounds are far above that and far below what exhausts memory or the stack.
# YAML aliases share one value, so a few hundred bytes of nested aliases stand for billions of values once a list
# becomes the text its flag reads: the bounds hold with every alias expanded, and are checked on the parser's
# events, each alias adding its anchor's counts, before anything is built.
MAX_RECIPE_ITEMS = 10_000  # values (keys, scalars, lists, mappings), aliases expanded
MAX_RECIPE_BYTES = 4 << 20  # the file, and the text of its scalars with aliases expanded
MAX_RECIPE_DEPTH = 32  # lists and mappings inside each other, aliases expanded
MAX_SHOWN = 60  # characters of a value (or key) that an error line quotes
MAX_REASON = 400  # characters of what an error line says after the file and key

# libyaml where PyYAML has it: its parser is linear in the file (the pure-Python one slows down on deep nesting).
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Flags a recipe may not set. A recipe is shared and reused, so replacing a finished run has to be asked for by
# the command line that starts the replacing run, never by a file it happens to name.
_COMMAND_LINE_ONLY = {"overwrite": "--overwrite replaces a finished run in --output-dir, so only the command line "
                                   "may give it, not a recipe"}

# What a flag's value may be read from (alone or in a list): YAML's text, numbers, true/false and dates (a plain
# date's text is as written). Not !!binary, !!set, !!omap and the like, whose text is Python's, not the file's.
_SCALARS = (str, int, float, datetime.date)


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
            return f"--config {known.config}: key {shown(keys[dest])}: {_bounded(message, defaults[dest])}"
        return message
    return parser, name_origin


def shown(value):
    """A value (or key) as an error line quotes it: its repr, or for a long one the repr of its first MAX_SHOWN
    characters and its length."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= MAX_SHOWN:
        return repr(value) if isinstance(value, str) else text
    return f"{text[:MAX_SHOWN]!r}... ({len(text)} characters)"


def _bounded(reason, *values):
    """`reason` with each long value it quotes (as text or repr) cut to an excerpt, then any other long quoted
    part (a parser's "unknown part '...'", a YAML tag), then the whole cut to MAX_REASON characters."""
    for value in values:
        text = value if isinstance(value, str) else str(value)
        if len(text) > MAX_SHOWN:
            reason = reason.replace(repr(text), shown(text)).replace(text, shown(text))
    if len(reason) > MAX_REASON // 2:  # only then: between two short quotes of a message there may be 60 characters
        reason = _LONG_QUOTE.sub(lambda quoted: quoted[0][:MAX_SHOWN + 1] + quoted[0][0] + "...", reason)
    return reason if len(reason) <= MAX_REASON else reason[:MAX_REASON] + "..."


# A quoted part of a message longer than an excerpt: a value's piece that a parser quotes ("unknown part 'x'"),
# a YAML tag.
_LONG_QUOTE = re.compile(r"'[^'\n]{%d,}'|\"[^\"\n]{%d,}\"" % (MAX_SHOWN + 1, MAX_SHOWN + 1))


class _ConfigOnly(OneLineParser):
    """Reads --config alone, before the whole command line is parsed with the recipe's defaults."""

    def __init__(self):
        super().__init__(add_help=False)
        self.add_argument("--config", default="")


def _config_defaults(parser, path):
    """({dest: value}, {dest: key as written}) of the recipe at `path`, each value converted and checked as its
    flag would be."""
    defaults, keys, seen = {}, {}, {}
    for key, value, line in _read_recipe(path):
        flag = "--" + str(key).replace("_", "-")
        action = parser._option_string_actions.get(flag)
        if action is None or action.dest in ("config", "help"):
            raise UsageError(f"--config {path}: unknown key {shown(key)} (keys are train.py flags; DATA goes on the "
                             "command line)")
        if action.dest in _COMMAND_LINE_ONLY:
            raise UsageError(f"--config {path}: key {shown(key)}: {_COMMAND_LINE_ONLY[action.dest]}")
        if action.dest in seen:  # YAML would keep the last silently; which one was meant is the user's to say
            first, first_line = seen[action.dest]
            if first == key:
                raise UsageError(f"--config {path}: key {shown(key)} given twice (lines {first_line} and {line}); "
                                 "give it once")
            raise UsageError(f"--config {path}: keys {shown(first)} (line {first_line}) and {shown(key)} (line "
                             f"{line}) set the same flag; give one")
        seen[action.dest] = key, line
        if action.nargs == 0 and value is False and not isinstance(action, argparse.BooleanOptionalAction):
            continue  # a switch left off: the flag's own default stands
        try:
            defaults[action.dest] = _flag_value(action, flag, value)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
            raise UsageError(f"--config {path}: key {shown(key)}: {_bounded(str(exc), _text(value))}") from None
        keys[action.dest] = key
    return defaults, keys


def _flag_value(action, flag, value):
    """What `flag VALUE` (or, for a switch, `flag` when VALUE is true) on the command line would set."""
    if action.nargs == 0:  # a switch: store_true, store_const, --x/--no-x
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {_described(value)}")
        if isinstance(action, argparse.BooleanOptionalAction):
            return value != flag.startswith("--no-")
        return action.const
    if isinstance(value, bool) or not isinstance(value, (*_SCALARS, list)):
        raise ValueError(f"expected a value for {flag}, got {_described(value)}")
    if isinstance(value, list) and not all(isinstance(item, _SCALARS) for item in value):
        raise ValueError(f"expected a list of values for {flag}, got one holding "
                         f"{_described(next(i for i in value if not isinstance(i, _SCALARS)))}")
    text = _text(value)
    try:
        converted = action.type(text) if action.type else text
    except ValueError:  # as argparse says it (training.flags' _flag_type raises ArgumentTypeError with its own reason)
        raise ValueError(f"invalid {getattr(action.type, '__name__', 'value')} value: {shown(text)}") from None
    if action.choices is not None and converted not in action.choices:
        raise ValueError(f"invalid choice {shown(text)} (choose from {', '.join(map(str, action.choices))})")
    # Here, not only in training/config.py's check of every float: a nan would also slip through the comparison
    # that tells a value the recipe set from one the command line gave, and the key would go unnamed.
    if isinstance(converted, float) and not math.isfinite(converted):
        raise ValueError(f"{flag} must be a finite number, got {converted}")
    return converted


def _text(value):
    """The command-line text of a recipe value: a list is its items joined by commas (--lr-steps 30,60,90)."""
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _described(value):
    """A value that is not what its flag takes, by kind where its text would be Python's (or long)."""
    if value is None:
        return "nothing (null)"
    kinds = {dict: "a mapping", list: "a list", bytes: "binary data (!!binary)", set: "a set (!!set)",
             tuple: "a pair (!!omap or !!pairs)"}
    return next((kind for cls, kind in kinds.items() if isinstance(value, cls)), None) or shown(value)


# ---------------------------------------------------------------------------------------------------------------
# Reading the file


def _read_recipe(path):
    """[(key, value, line)] of the recipe at `path` in file order, merge keys (<<) in place; UsageError for a file
    that cannot be read, is not UTF-8, is past the bounds or is not a YAML mapping."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_RECIPE_BYTES + 1)  # no more: the path may name a device or a huge file
    except OSError as exc:
        raise UsageError(f"--config {path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_RECIPE_BYTES:
        raise UsageError(f"--config {path}: larger than {MAX_RECIPE_BYTES} bytes; a recipe is a short list of flags")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _line_column(data, exc.start)
        raise UsageError(f"--config {path}: not UTF-8 text: byte 0x{data[exc.start]:02x} at line {line}, column "
                         f"{column} (save the recipe as UTF-8)") from None
    loader = None
    try:
        _check_bounds(path, text, data)
        loader = _LOADER(text)
        node = loader.get_single_node()
        if node is None:  # empty, or comments only
            return []
        if not isinstance(node, yaml.MappingNode):
            kind = "a list" if isinstance(node, yaml.SequenceNode) else f"the single value {shown(node.value)}"
            raise UsageError(f"--config {path}: expected a mapping of flag names to values, got {kind}")
        loader.flatten_mapping(node)
        pairs = []
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            key = loader.construct_object(key_node, deep=True)
            try:
                value = loader.construct_object(value_node, deep=True)
            except (yaml.YAMLError, ValueError) as exc:  # ValueError: an integer past Python's digit limit
                raise UsageError(f"--config {path}: key {shown(key)}: {_yaml_problem(exc, text, data)}") from None
            pairs.append((key, value, line))
        return pairs
    except (yaml.YAMLError, ValueError) as exc:
        raise UsageError(f"--config {path}: not valid YAML: {_yaml_problem(exc, text, data)}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _check_bounds(path, text, data):
    """UsageError naming the top-level key at which the recipe, aliases expanded, passes MAX_RECIPE_ITEMS values,
    MAX_RECIPE_BYTES of text or MAX_RECIPE_DEPTH levels. Counted on the parser's events, one alias adding its
    anchor's counts (so the time is that of reading the file, whatever it expands to), stopping at the first
    event past a bound. What the parser refuses on the way is named with the key it was reading."""
    loader = _LOADER(text)
    items = chars = 0
    anchors = {}  # anchor -> (items, chars, height) of the value it names
    open_ = []  # per list or mapping being read: [anchor, items and chars before it, height of its content,
    #             children read, whether a mapping]
    where = "its top level"
    try:
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, yaml.DocumentEndEvent):
                return  # a second document is the composer's to refuse
            if isinstance(event, yaml.CollectionEndEvent):
                anchor, items_before, chars_before, content_height, _, _ = open_.pop()
                if open_:
                    open_[-1][3] = max(open_[-1][3], content_height + 1)
                if anchor is not None:
                    anchors[anchor] = (items - items_before, chars - chars_before, content_height + 1)
                continue
            if not isinstance(event, yaml.NodeEvent):
                continue  # the start of the stream or the document
            if len(open_) == 1 and open_[0][5] and open_[0][4] % 2 == 0:  # a key of the top-level mapping
                where = f"key {shown(event.value)}" if isinstance(event, yaml.ScalarEvent) else \
                    f"the key at line {event.start_mark.line + 1}"
            if open_:
                open_[-1][4] += 1
            depth = len(open_)
            if isinstance(event, yaml.AliasEvent):
                # An undefined alias is the composer's to refuse; one inside the value it names, the constructor's.
                added = anchors.get(event.anchor, (1, 0, 0))
                depth += added[2]
                if open_:
                    open_[-1][3] = max(open_[-1][3], added[2])
            elif isinstance(event, yaml.ScalarEvent):
                added = (1, len(event.value), 0)
                if event.anchor is not None:
                    anchors[event.anchor] = added
            else:  # the start of a list or mapping: its anchor is recorded at its end
                added = (1, 0)
                open_.append([event.anchor, items, chars, 0, 0, isinstance(event, yaml.MappingStartEvent)])
                depth += 1
            items, chars = items + added[0], chars + added[1]
            if items > MAX_RECIPE_ITEMS:
                problem = f"more than {MAX_RECIPE_ITEMS} values with its aliases (*name) expanded"
            elif chars > MAX_RECIPE_BYTES:
                problem = f"more than {MAX_RECIPE_BYTES} characters of text with its aliases (*name) expanded"
            elif depth > MAX_RECIPE_DEPTH:
                problem = f"lists or mappings nested more than {MAX_RECIPE_DEPTH} deep"
            else:
                continue
            raise UsageError(f"--config {path}: {where}: {problem}; a recipe holds flag values (text, numbers, "
                             "true/false, lists of them)")
    except yaml.YAMLError as exc:
        reading = f"; {where} was being read" if open_ else ""
        raise UsageError(f"--config {path}: not valid YAML: {_yaml_problem(exc, text, data)}{reading}") from None
    finally:
        loader.dispose()


def _yaml_problem(exc, text, data):
    """What PyYAML refused, where, on one line."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if isinstance(exc, yaml.MarkedYAMLError) and mark is not None:
        said = exc.problem or exc.context
        if exc.problem and exc.context:  # e.g. "while parsing a flow sequence" and where that began
            began = exc.context_mark
            at = f" at line {began.line + 1}, column {began.column + 1}" \
                if began is not None and (began.line, began.column) != (mark.line, mark.column) else ""
            said = f"{exc.context}{at}, {exc.problem}"
        return _bounded(f"line {mark.line + 1}, column {mark.column + 1}: {said}")
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow
        # libyaml counts the position in UTF-8 bytes, the pure-Python reader in characters.
        line, column = _line_column(data, exc.position) if _LOADER is not yaml.SafeLoader else \
            _line_column(text, exc.position)
        return f"line {line}, column {column}: character #x{exc.character:04x} is not allowed in YAML"
    if isinstance(exc, ValueError) and "digits" in str(exc):
        return f"an integer of more than {sys.get_int_max_str_digits()} digits, more than Python reads"
    return _bounded(" ".join(str(exc).split()))


def _line_column(content, position):
    """1-based line and column (in characters) of the byte or character at `position` of `content`."""
    newline = b"\n" if isinstance(content, bytes) else "\n"
    start = content.rfind(newline, 0, position) + 1
    before = content[start:position]
    return content.count(newline, 0, position) + 1, len(before.decode("utf-8", "replace")
                                                        if isinstance(before, bytes) else before) + 1
