"""``train.py --check``: everything a run does before its first training step, then stop.

The config is resolved, the data built (cases, splits, caches, the first batch's shapes),
the model and objective constructed, the input size checked, and the model initialised and
filled from its pretrained weights (``init.*``, strict as in training) — no optimizer, no
compiled training step. A config, override, data or initialisation problem fails here as it
would at the start of training.
"""

from __future__ import annotations

import os

import jax

from jaxbrain import models, objectives, runs
from jaxbrain.training import data as data_lib
from jaxbrain.training import loop


def check_run(config, workdir: str) -> str:
    """Checks ``config`` (run in ``workdir``) up to its first training step; returns a summary
    (cases, batch shapes, model, parameter count, initialisation). Raises what training would."""
    os.makedirs(workdir, exist_ok=True)
    config = runs.migrate(config)
    train_cases, val_cases, train_ds = loop.training_data(config, workdir)
    spec = loop.element_spec(train_ds)
    model = models.from_config(config.model, config.get("compute_dtype"))
    objective = data_lib.fit_objective(objectives.create(**config.objective), train_cases)
    x = loop.model_input(objective, spec)
    loop.check_input_size(model, x)
    variables = loop.initial_variables(config, model, x, jax.random.key(int(config.seed)))
    count = sum(int(v.size) for v in jax.tree_util.tree_leaves(variables.get("params", {})))
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in sorted(spec.items()))
    init = config.get("init", {})
    source = init.get("torch") or init.get("orbax") if init else None
    return (f"check: {len(train_cases)} training / {len(val_cases)} validation cases; batches "
            f"{shapes}; {type(model).__name__} with {count:,} parameters for input "
            f"{tuple(x.shape)}; " + (f"initialised from {source}" if source else
                                      "initialised from scratch") + "; ok")
