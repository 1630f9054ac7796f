"""Config files: plain Python modules with ``get_config(arg)``; one may build on another.

``arg`` is a comma-separated list of presets (``configs/x.py:demo,bf16``); each config lists
the ones it accepts in ``PRESETS`` and checks ``arg`` with :func:`presets`. A shape given once
(``data.roi``) reaches the fields that depend on it through ml_collections references
(``c.data.get_ref("roi")``, :func:`derived` for strings), so ``--config.data.roi`` changes them
all.
"""

from __future__ import annotations

import importlib.util
import keyword
import os
import re
from typing import Any, Iterable

import ml_collections
from ml_collections.config_dict import FieldReference


def load_config_file(path: str, arg: str = "") -> ml_collections.ConfigDict:
    """``get_config(arg)`` of the config file at ``path`` (``configs/x.py``)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {path} does not exist")
    module = _load(path)
    return module.get_config(arg) if arg else module.get_config()


def _load(path: str):
    name = "jaxbrain_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sibling(config_file: str, name: str, arg: str = "") -> ml_collections.ConfigDict:
    """The config ``name`` from the same folder as ``config_file`` (pass ``__file__``)."""
    return load_config_file(os.path.join(os.path.dirname(os.path.abspath(config_file)),
                                         name + ".py"), arg)


def sibling_module(config_file: str, name: str):
    """The config module ``name`` itself (for helpers it defines besides get_config)."""
    return _load(os.path.join(os.path.dirname(os.path.abspath(config_file)), name + ".py"))


def presets(arg: str, known: Iterable[str], config: str, *,
            exclusive: Iterable[Iterable[str]] = ()) -> list[str]:
    """The presets of ``arg`` (``"demo,bf16"`` -> ``["demo", "bf16"]``), each one of ``known``.

    ``config`` names the config file in messages (pass ``__file__``). Raises ValueError for a
    preset not in ``known`` (``configs/x.py: unknown preset 'xyz'; known: a, b, c``) or for
    two presets of one ``exclusive`` group (e.g. two model sizes).
    """
    known = list(known)
    name = _config_name(config)
    args = [a.strip() for a in (arg or "").split(",") if a.strip()]
    for a in args:
        if a not in known:
            raise ValueError(f"{name}: unknown preset {a!r}; known: {', '.join(known)}")
    for group in exclusive:
        group = list(group)
        chosen = [a for a in args if a in group]
        if len(set(chosen)) > 1:
            raise ValueError(f"{name}: presets {', '.join(chosen)} exclude each other "
                             f"(at most one of {', '.join(group)})")
    return args


def _config_name(config: str) -> str:
    """``configs/x.py`` for a config file path (``__file__``) or name (``x``)."""
    if config.endswith(".py"):
        folder = os.path.basename(os.path.dirname(os.path.abspath(config)))
        return f"{folder}/{os.path.basename(config)}"
    return f"configs/{config}.py"


def derived(template: str, name: str, ref: FieldReference) -> FieldReference | str:
    """``template`` with ``{name}`` standing for ``ref``'s value, as a reference that follows
    ``ref``: ``derived("resize(shape={roi})", "roi", c.data.get_ref("roi"))`` gives a string
    that changes with ``--config.data.roi``. Setting the derived field itself (e.g.
    ``--config.data.preprocess=zscore``) replaces it with a plain value."""
    parts = template.split("{" + name + "}")
    if len(parts) == 1:
        return template
    out = parts[0] + ref.to_str()  # str + FieldReference: a FieldReference (lazy)
    for i, part in enumerate(parts[1:], start=2):
        out = out + part
        if i < len(parts):
            out = out + ref.to_str()
    return out


# ----------------------------------------------------------------------------------------
# The command line: ``--config file.py:presets --config.a.b=value`` (ml_collections'
# config_flags, with the parsers below added), read the same way by train.py and eval.py.


class _LiteralParser:
    """A list (``--config.data.collections='[{"root": "/data/ukb"}]'``), a section, or a value
    for a field that is None in the config: a Python literal or JSON (``true`` / ``null``
    too); anything else is the string itself (a None field) or an error naming the value."""

    def __init__(self, kind: type | None):
        self.kind = kind

    def parse(self, argument):
        if not isinstance(argument, str):
            return argument
        value = _literal(argument)
        if self.kind is list:
            if isinstance(value, tuple):
                value = list(value)
            if not isinstance(value, list):
                raise ValueError(f"expected a list (Python or JSON, e.g. '[1, 2]'), got {argument!r}")
        elif self.kind is ml_collections.ConfigDict:
            if not isinstance(value, dict):
                raise ValueError(f"expected a dict (Python or JSON, e.g. '{{\"n\": 4}}'), got "
                                 f"{argument!r}")
            return ml_collections.ConfigDict(value)
        return argument if value is _NOT_LITERAL else value

    def flag_type(self):
        return "config literal"


_NOT_LITERAL = object()


def _literal(text: str):
    import ast
    import json
    try:
        return ast.literal_eval(text)
    except (SyntaxError, ValueError):
        pass
    try:
        return json.loads(text)
    except ValueError:
        return _NOT_LITERAL


def register_override_parsers() -> None:
    """Lets config_flags override list fields and fields that are None in the config, and
    take JSON as well as Python literals for sections."""
    from absl import flags
    from ml_collections import config_flags

    class Parser(flags.ArgumentParser):
        def __init__(self, kind):
            self.inner = _LiteralParser(kind)

        def parse(self, argument):
            return self.inner.parse(argument)

        def flag_type(self):
            return self.inner.flag_type()

    for kind in (list, type(None), ml_collections.ConfigDict):
        config_flags.register_flag_parser_for_type(kind, Parser(kind))


def _quote_keywords(arg: str, name: str = "config") -> str:
    """``--config.init.from=x`` as ``--config.init["from"]=x``: config_flags reads override
    paths as Python, where a keyword (``from``) is not a name."""
    m = re.match(rf"^(--?(?:no)?{name})\.([^=]+)(=.*)?$", arg, re.S)
    if not m or not any(keyword.iskeyword(p) for p in m.group(2).split(".")):
        return arg
    path = "".join(f'["{p}"]' if keyword.iskeyword(p) else f".{p}" for p in m.group(2).split("."))
    return m.group(1) + path + (m.group(3) or "")


def config_argv(argv: list[str], name: str = "config") -> list[str]:
    """The arguments of ``argv`` that belong to the ``--config`` flag and its overrides."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in (f"--{name}", f"-{name}") and i + 1 < len(argv):
            out += argv[i:i + 2]
            i += 2
            continue
        if re.match(rf"^--?(no)?{name}(=|\.)", arg):
            out.append(arg)
        i += 1
    return out


def _config_spec(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg in (f"--{name}", f"-{name}") and i + 1 < len(argv):
            return argv[i + 1]
        m = re.match(rf"^--?{name}=(.*)$", arg)
        if m:
            return m.group(1)
    return None


def unknown_key(config, path: str) -> str | None:
    """``unknown config key model.final_norm; model has: a, b, c`` for an override path that
    ``config`` lacks, else None."""
    node, done = config, []
    for part in path.split("."):
        if isinstance(node, ml_collections.ConfigDict) and part in node:
            node = node[part]
            done.append(part)
            continue
        section = ".".join(done) or "config"
        if isinstance(node, ml_collections.ConfigDict):
            return f"unknown config key {path}; {section} has: {', '.join(node.keys())}"
        return f"unknown config key {path}; {section} is {node!r}, not a section"
    return None


def override_error(argv: list[str], name: str = "config") -> str | None:
    """The one-line message for the first ``--config.*`` override of ``argv`` that names no
    field of the config (None when they all do, or no config file is given)."""
    spec = _config_spec(argv, name)
    if not spec:
        return None
    path, _, arg = spec.partition(":")
    config = load_config_file(path, arg)
    for a in argv:
        m = re.match(rf"^--?(?:no)?{name}\.([^=]+)", a)
        if m:
            message = unknown_key(config, m.group(1))
            if message:
                return message
    return None


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing for train.py / eval.py (``app.run(main, flags_parser=parse_flags)``)
    with list overrides, and a config key that does not exist as one line, not a traceback."""
    import sys
    from absl import app
    register_override_parsers()
    quoted = [_quote_keywords(a) for a in argv]
    if quoted != list(argv):  # config_flags reads its overrides from sys.argv itself
        sys.argv[:] = [_quote_keywords(a) for a in sys.argv]
    try:
        return app.parse_flags_with_usage(quoted)
    except (AttributeError, KeyError):
        message = override_error(argv)
        if message is None:
            raise
        print(message, file=sys.stderr)
        sys.exit(1)


def command_line_config(argv: list[str], name: str = "config") -> ml_collections.ConfigDict:
    """The config a ``train.py`` command line (``argv[1:]``: ``--config file.py:presets`` and
    its ``--config.*`` overrides; other flags are left out) resolves to, through the same
    parser train.py uses. Raises ValueError with :func:`override_error`'s line for a key the
    config lacks."""
    from absl import flags
    from ml_collections import config_flags
    register_override_parsers()
    argv = ["train.py", *config_argv(list(argv), name)]
    quoted = [_quote_keywords(a, name) for a in argv]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file(name, None, "config file", flag_values=values,
                                    lock_config=True, sys_argv=quoted)
    try:
        values(quoted)
    except (AttributeError, KeyError) as e:
        raise ValueError(override_error(argv, name) or str(e)) from None
    return values[name].value


# ----------------------------------------------------------------------------------------
# --print_config: the resolved config, one ``path = value`` line per field.


def _leaves(node, prefix: str = ""):
    for key in node.keys():
        value = node[key]
        path = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            if len(value.keys()):
                yield from _leaves(value, path + ".")
            else:
                yield path, {}
        else:
            yield path, value


def library_defaults(config) -> dict[str, tuple[Any, str]]:
    """{path: (default, class)} for the constructor arguments of the config's model and
    objective that the config leaves to the class (e.g. ``model.final_norm``)."""
    import dataclasses
    from jaxbrain import models, objectives
    out = {}
    for section, registry in (("model", models.REGISTRY), ("objective", objectives.OBJECTIVES)):
        cfg = config.get(section)
        cls = registry.get(cfg.get("name")) if isinstance(cfg, ml_collections.ConfigDict) else None
        if cls is None or not dataclasses.is_dataclass(cls):
            continue
        for field in dataclasses.fields(cls):
            if field.name in cfg or field.name in ("parent", "name") or not field.init:
                continue
            if field.default is not dataclasses.MISSING:
                default = field.default
            elif field.default_factory is not dataclasses.MISSING:
                default = field.default_factory()
            else:
                continue
            out[f"{section}.{field.name}"] = (default, cls.__name__)
    return out


def describe(config, overridden: Iterable[str] = ()) -> str:
    """The resolved config as ``path = value`` lines (the ``--config.path=value`` names),
    overrides marked, then the model's and objective's arguments that the config leaves to
    their classes' defaults (settable only by adding them to the config file)."""
    overridden = {re.sub(r'\["([^"]+)"\]', r".\1", p) for p in overridden}  # init["from"]
    lines = []
    for path, value in _leaves(config):
        mark = "  # overridden" if path in overridden else ""
        lines.append(f"{path} = {value!r}{mark}")
    defaults = library_defaults(config)
    if defaults:
        lines.append("# constructor defaults the config leaves to the classes:")
        for path, (value, cls) in defaults.items():
            lines.append(f"# {path} = {value!r}  ({cls})")
    return "\n".join(lines)
