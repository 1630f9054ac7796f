"""Orbax checkpoints of a training run: the train state (step, params, optimizer state, RNG)
and the grain iterator state, saved asynchronously; the last ``keep`` checkpoints and the
``keep_best`` best by a validation metric are preserved.

Layout: ``workdir/checkpoints/<step>/{state, data}`` (read back by :mod:`jaxbrain.runs`).
``state`` is a standard Orbax PyTree checkpoint (``python -m jaxbrain.convert to-torch``
exports its model variables).
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from jaxbrain.runs import CHECKPOINTS, DATA_ITEM, STATE_ITEM


class Checkpoints:
    """Saving and restoring one run's checkpoints."""

    def __init__(self, workdir: str, *, keep: int = 3, keep_best: int = 1,
                 best_metric: str | None = None, best_mode: str = "max",
                 asynchronous: bool = True):
        policies = [pp.LatestN(keep)]
        self.best_metric = best_metric
        if best_metric and keep_best:
            policies.append(pp.BestN(get_metric_fn=lambda m: m[best_metric],
                                     reverse=best_mode == "min", n=keep_best,
                                     keep_checkpoints_without_metrics=False))
        # best_fn as well: Orbax then writes each step's metrics into its metadata, so the
        # best step is known after a restart and to runs.choose_step.
        best = dict(best_fn=lambda m: m[best_metric], best_mode=best_mode) if best_metric else {}
        options = ocp.CheckpointManagerOptions(
            preservation_policy=pp.AnyPreservationPolicy(policies),
            enable_async_checkpointing=asynchronous, create=True, **best)
        self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINTS)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=(STATE_ITEM, DATA_ITEM))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step() if self.best_metric else None

    def save(self, step: int, state: Any, data_iterator: Any | None,
             metrics: dict[str, float] | None = None) -> None:
        items = {STATE_ITEM: ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items[DATA_ITEM] = grain.checkpoint.CheckpointSave(data_iterator)
        if metrics is not None and self.best_metric:
            metrics = {k: float(v) for k, v in metrics.items()}
            if self.best_metric not in metrics:
                metrics = None  # no validation at this step: kept only as one of the latest
        self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

    def restore(self, step: int, abstract_state: Any, data_iterator: Any | None = None) -> Any:
        """The state at ``step`` placed like ``abstract_state`` (ShapeDtypeStructs with
        shardings); ``data_iterator`` is set to the saved position in place."""
        items = {STATE_ITEM: ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items[DATA_ITEM] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored[STATE_ITEM]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs carrying the shardings of ``tree``'s arrays."""
    return jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)
