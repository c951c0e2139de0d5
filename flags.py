"""Flags declared once: a dataclass field per option carries its default, help, group and whether it
defines the run (docs/engine.md#flags-declared-once).

    @dataclass(frozen=True)
    class MyOptions:
        task_name: str = flag(None, "GLUE task", required=True)
        do_train: bool = flag(False, "fine-tune on train.tsv")
        seed: int = flag(42, "seed", run=True)

    parser = file_utils.make_parser("...")
    flags.add_flags(parser, MyOptions)             # argparse flags, in field order, grouped
    options = MyOptions(**flags.values(args, MyOptions))
    flags.run_defining(MyOptions)                  # ("seed",): the fingerprint a --resume compares
    flags.markdown_table(MyOptions)                # the docs table (a test compares it with the docs)

A field's type comes from its default (bool -> an on/off switch, int, float, str); `cli_default`
is the flag's default when it differs from the field's (None: decided at run time). `name` renames
the flag (`--bert_model` for `model_dir`), `negate` makes an off switch (`--no_cuda` sets
`use_cuda` False), `switches` declares on/off flags that choose the field's value
(`--fp16`/`--bf16` for `precision`). Only public argparse API is used; which flags the command
line gave is file_utils.ExplicitParser's `args.explicit`.
"""
import dataclasses

from file_utils import ConfigError

_MISSING = dataclasses.MISSING


class _Unset:
    """cli_default's value when the flag's default is the field's."""


_UNSET = _Unset()


@dataclasses.dataclass(frozen=True)
class Flag:
    help: str
    group: str = None           # argparse group title (None: the parser's own flags)
    run: bool = False           # run-defining: part of the fingerprint a --resume compares
    name: str = None            # the flag; default --<field name>
    aliases: tuple = ()
    cli_default: object = _UNSET  # the flag's default where it differs from the field's
    negate: bool = False        # an off switch: the flag given sets a True field to False
    switches: tuple = ()        # ((value, flag help), ...): on/off flags --<value> that choose the field's value
    off: tuple = None           # (flag, help): a second flag that sets a bool field to False (--no_lower_case)
    choices: tuple = None
    type: object = None         # the argparse type where the default cannot tell (a None default)
    required: bool = False
    metavar: str = None
    action: str = None          # another argparse action, e.g. "append" (a repeatable flag)
    doc: str = None             # the docs table's text where it says more than --help
    doc_default: str = None     # the docs table's default column where the value says too little

    def dest(self, field_name):
        if self.switches:
            return None
        return (self.name or "--" + field_name).lstrip("-")


def flag(default=_MISSING, help="", **kwargs):
    """A dataclass field declared as a command-line flag (see the module docstring)."""
    meta = {"flag": Flag(help=help, **kwargs)}
    if default is _MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def declared(cls):
    """[(field, Flag)] of the dataclass's fields that are flags, in declaration order."""
    return [(f, f.metadata["flag"]) for f in dataclasses.fields(cls) if "flag" in f.metadata]


def run_defining(cls):
    """Names of the fields that define a run (the fingerprint a --resume compares)."""
    return tuple(f.name for f, spec in declared(cls) if spec.run)


def _default(field, spec):
    if spec.cli_default is not _UNSET:
        return spec.cli_default
    return None if field.default is _MISSING else field.default


def _kind(field, spec):
    if spec.type is not None:
        return spec.type
    default = _default(field, spec)
    return None if default is None or isinstance(default, (bool, str)) else type(default)


def add_flags(parser, cls, helps=None, required=None, groups=None):
    """Add an argparse flag for every declared field of `cls`. `helps` replaces help texts
    ({field: text}), `required` overrides a field's required ({field: bool}); per-runner defaults
    go through parser.set_defaults(dest=value) as with any argparse flag."""
    helps, required, groups = helps or {}, required or {}, {} if groups is None else groups
    for field, spec in declared(cls):
        if spec.group is None:
            target = parser
        elif spec.group not in groups:
            target = groups[spec.group] = parser.add_argument_group(spec.group)
        else:
            target = groups[spec.group]
        text = helps.get(field.name, spec.help)
        if spec.switches:
            for value, switch_help in spec.switches:
                target.add_argument("--" + value, action="store_true", help=switch_help)
            continue
        names = [spec.name or "--" + field.name, *spec.aliases]
        kwargs = {"dest": spec.dest(field.name), "help": text}
        default = _default(field, spec)
        if spec.negate or (isinstance(field.default, bool) and spec.off is None and default is False):
            target.add_argument(*names, action="store_true", **kwargs)
        elif spec.off is not None:
            target.add_argument(*names, action="store_true", default=default, **kwargs)
            target.add_argument(spec.off[0], dest=kwargs["dest"], action="store_false", help=spec.off[1])
        else:
            for key in ("choices", "metavar", "action"):
                if getattr(spec, key) is not None:
                    kwargs[key] = getattr(spec, key)
            kind = _kind(field, spec)
            if kind is not None:
                kwargs["type"] = kind
            if required.get(field.name, spec.required):
                kwargs["required"] = True
            else:
                kwargs["default"] = default
            target.add_argument(*names, **kwargs)
    return parser


def values(args, cls, skip=()):
    """{field: value} of the declared fields from parsed flags (negated switches inverted, a
    switch group resolved to the one switch given; two given: ConfigError). Fields in `skip` and
    flags the parser lacks are left out."""
    out = {}
    for field, spec in declared(cls):
        if field.name in skip:
            continue
        if spec.switches:
            given = [value for value, _ in spec.switches if getattr(args, value, False)]
            if len(given) > 1:
                raise ConfigError(" and ".join("--" + v for v in given) + " are exclusive; pick one")
            out[field.name] = given[0] if given else field.default
            continue
        dest = spec.dest(field.name)
        if hasattr(args, dest):
            value = getattr(args, dest)
            out[field.name] = (not value) if spec.negate else value
    return out


def _flag_names(field, spec):
    if spec.switches:
        return " / ".join(f"`--{v}`" for v, _ in spec.switches)
    names = [f"`{spec.name or '--' + field.name}`"] + ([f"`{spec.off[0]}`"] if spec.off else [])
    return " / ".join(names)


def _default_text(field, spec):
    if spec.doc_default is not None:
        return spec.doc_default
    if spec.required:
        return "required"
    if spec.negate or spec.switches:
        return "off"
    default = _default(field, spec)
    if default is None:
        return "none"
    if isinstance(default, bool):
        return "on" if default else "off"
    return f"`{default}`" if isinstance(default, str) else str(default)


def markdown_table(cls, groups=None):
    """The docs table of the declared flags (`groups`: only those groups): flag, default, meaning."""
    rows = ["| flag | default | meaning |", "|---|---|---|"]
    for field, spec in declared(cls):
        if groups is None or spec.group in groups:
            text = (spec.doc or spec.help).replace("|", "\\|")
            rows.append(f"| {_flag_names(field, spec)} | {_default_text(field, spec)} | {text} |")
    return "\n".join(rows) + "\n"
