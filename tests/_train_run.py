"""A tiny BraTS-demo training run for the tests, in this process or as a script:

    python tests/_train_run.py WORKDIR[:STOP_AFTER][,WORKDIR...] DEVICES STEPS \
        [COORDINATOR NUM_PROCESSES PROCESS_ID]

The script form sets the number of (fake) CPU devices before JAX starts, optionally joins a
multi-process run on localhost, trains (or resumes) the run of each WORKDIR in turn, STEPS
steps of the toy model (tests/_toys.py) with parameters and optimizer state fully sharded
(mesh data x fsdp=2), stopping after STOP_AFTER steps where given (as a preemption would), and
prints the last run's logged training losses as JSON.
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
    from jaxbrain.training.config import load_config_file
    c = load_config_file(os.path.join(ROOT, "configs", "brats_swinunetr.py"), "demo")
    roi = (32, 32, 32)
    c.total_steps, c.log_every, c.ckpt_every, c.eval_every = 4, 1, 2, 0
    c.batch_size = 2
    c.model.depths = (1, 1, 1, 1)  # compile time
    c.progress = False
    c.optim.update(lr=2e-3, schedule="constant")  # the demo-recipe test learns with it
    c.data.update(roi=roi, threads=1,
                  augment="rand_crop(pos_fraction=0.7), brats_regions, rand_flip(prob=0.5), "
                          "rand_scale_shift(scale=0.1, shift=0.1, prob=1.0)")
    c.data.synthetic.update(n=4, shape=(48, 48, 40), anatomy="procedural")
    c.eval.update(max_cases=1)
    for key, value in overrides.items():
        target = c
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return c


def toy_config(**overrides):
    """``tiny_config`` with the toy convolutional model (tests/_toys.py must be imported)."""
    import ml_collections
    c = tiny_config(**overrides)
    c.model = ml_collections.ConfigDict(dict(name="toy_conv", in_channels=4, out_channels=3,
                                             features=8))
    return c


def sharded_config(steps):
    """The toy run, 8 crops of 16^3 a step, parameters and optimizer state sharded over
    fsdp=2."""
    return toy_config(total_steps=steps, batch_size=8, sharding="fsdp",
                      mesh={"data": -1, "fsdp": 2}, **{"data.roi": (16, 16, 16)})


def losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [r["train/loss"] for r in rows if "train/loss" in r]


def main():
    workdirs, devices, steps = sys.argv[1].split(","), int(sys.argv[2]), int(sys.argv[3])
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={devices}")
    sys.path.insert(0, ROOT)
    import _toys  # noqa: F401  (registers toy_conv)
    from jaxbrain.training.loop import train_and_evaluate
    config = sharded_config(steps)
    config.distributed = {}
    if len(sys.argv) > 4:
        config.distributed = {"coordinator": sys.argv[4], "num_processes": int(sys.argv[5]),
                              "process_id": int(sys.argv[6])}
    for entry in workdirs:
        workdir, _, stop_after = entry.partition(":")
        train_and_evaluate(config, workdir, stop_after=int(stop_after) if stop_after else None)
    import jax
    if jax.process_index() == 0:
        print(json.dumps({"losses": losses(workdir), "devices": jax.device_count()}))


if __name__ == "__main__":
    main()
