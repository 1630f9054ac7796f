"""Config files: plain Python modules with ``get_config(arg)``; one may build on another.

``arg`` is a comma-separated list of presets (``configs/x.py:demo,bf16``); each config lists
the ones it accepts in ``PRESETS`` and checks ``arg`` with :func:`presets`. A shape given once
(``data.roi``) reaches the fields that depend on it through ml_collections references
(``c.data.get_ref("roi")``, :func:`derived` for strings), so ``--config.data.roi`` changes them
all.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Iterable

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
