"""Config files: plain Python modules with ``get_config(arg)``; one may build on another."""

from __future__ import annotations

import importlib.util
import os

import ml_collections


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
