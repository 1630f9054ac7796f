"""Every command in README.md's ```bash blocks is exercised: each is a key of COMMANDS, which
says how (a README command missing from the table, or a table entry the README no longer
shows, fails here, so the two cannot drift apart).

How a command is exercised (the tuple's entries):
  "config"          every ``python train.py`` of the command resolves through train.py's own
                    parser (presets, overrides: a list override, an unknown key, a bad value
                    fail here) — applied to every train.py command, named for clarity;
  "encoder"         its ``--config.probe.orbax`` / ``--config.init.orbax`` names the run of
                    another README command: that run's encoder fits the model this one builds
                    (widths, depth, heads, patch...: what the strict load compares);
  "run"             run as written (plus TINY's overrides) in a temporary folder;
  "tests/x.py::t"   the named test runs the same path at tiny size (the test must exist);
  "setup: why"      environment set-up, not run here.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

from jaxbrain import models
from jaxbrain.training.config import command_line_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_BRATS_RUN = ("tests/test_train.py::test_demo_loss_falls_and_validation_dice_rises",
              "tests/test_train.py::test_eval_writes_predictions_in_the_source_space")
_CONVERT_CLI = ("tests/test_convert.py::test_cli_round_trip",
                "tests/test_convert.py::test_cli_help_and_inspect")
_BSF = ("config", "tests/test_ssl_pipeline.py::test_stage1_stage2_finetune_chain")
_VF = ("config", "tests/test_misfm_pipeline.py::test_vf_pretraining_initialises_finetuning_and_exports")
_AD = ("config", "tests/test_whole_scan.py::test_ad_vs_cn_run_learns_and_eval_writes_the_roc")
_AGE = ("config", "tests/test_whole_scan.py::test_brain_age_run_learns_and_eval_reports_what_validation_logged")
_SPLITS = ("tests/test_whole_scan.py::test_folds_are_by_subject_stratified_and_read_back",
           "tests/test_whole_scan.py::test_held_out_site_is_the_validation_set",
           "tests/test_whole_scan.py::test_test_fold_and_label_budget_stay_subject_level")
_PROBE = ("config", "encoder", "tests/test_probe.py::test_probe_run_through_the_loop_and_knn_table")
_LORA = ("config", "encoder", "tests/test_probe.py::test_lora_probe_through_the_loop")
_STUDY = ("tests/test_study.py::test_grid_configs_outputs_and_resumption",
          "tests/test_study.py::test_one_real_cell_beats_the_training_mean")

COMMANDS = {
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[synth]' && python train.py --config configs/brats_swinunetr.py:demo --workdir runs/demo && python eval.py --workdir runs/demo":
        ("config", *_BRATS_RUN),
    "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e '.[test,tpu]' && pip install --no-deps timm==1.0.31 dinov2==0.0.1.dev2 && python -m pytest -n 2 tests":
        ("setup: installs the environment and runs this suite",),
    "python -m jaxbrain.convert inspect model.pt": _CONVERT_CLI,
    "python -m jaxbrain.aot --config configs/brats_swinunetr.py:bf16 --topology v5e:2x2 --per_chip_batch 1 --json bfs.json":
        ("tests/test_aot.py::test_data_parallel_toy_step_compiles_for_v5e_and_its_figures_agree",),
    "python -m jaxbrain.aot --table aot_table.md":
        ("setup: compiles every published recipe for TPU slices (hours on 2 cores)",),
    "python -m jaxbrain.convert from-torch model.pt ckpt/ --set downsample=merging_legacy":
        (*_CONVERT_CLI, "tests/test_merging_legacy.py::test_old_checkpoints_give_old_outputs_only_with_legacy_order"),
    "python -m jaxbrain.convert from-torch ssl.pt ckpt/ --encoder-only --model swin_unetr --set out_channels=3 --set downsample=merging_legacy":
        ("tests/test_ssl_pipeline.py::test_stage1_stage2_finetune_chain",
         "tests/test_convert.py::test_brainsegfounder_ssl_checkpoint_loads_encoder_only"),
    "python -m jaxbrain.convert to-torch ckpt/ exported.pt --allow-legacy-merging": _CONVERT_CLI,
    "python train.py --config configs/brats_swinunetr.py --workdir runs/brats_f0 --config.data.root=/data/BraTS2021_Training_Data --config.data.fold=0":
        ("config", *_BRATS_RUN),
    "python train.py --config configs/brats_swinunetr.py:62m,bf16 --workdir runs/b62 --config.data.root=...":
        ("config", "tests/test_training_smoke.py::test_remat_gives_the_same_gradients_and_bf16_stays_close"),
    "python train.py --config configs/atlas_swinunetr.py --workdir runs/atlas --config.data.root=/data/ATLAS_2":
        ("config", "tests/test_configs.py::test_config_flags_override_follows_references"),
    "python eval.py --workdir runs/brats_f0": _BRATS_RUN,
    "python eval.py --workdir runs/brats_f0 --output out --images flair.nii.gz t1ce.nii.gz t1.nii.gz t2.nii.gz":
        _BRATS_RUN,
    "python train.py --config configs/brain_age.py:demo --print_config": ("config", "run"),
    "python train.py --config configs/brain_age.py:demo --workdir runs/age_demo --check": ("config", "run"),
    "python train.py --config configs/brainsegfounder_stage1.py:demo --workdir runs/bsf_stage1": _BSF,
    "python train.py --config configs/brainsegfounder_stage2_brats.py:demo --workdir runs/bsf_stage2 --config.init.orbax=runs/bsf_stage1": _BSF,
    "python train.py --config configs/brainsegfounder_finetune_brats.py:demo --workdir runs/bsf_brats --config.init.orbax=runs/bsf_stage2": _BSF,
    "python eval.py --workdir runs/bsf_brats": _BSF[1:],
    "python -m jaxbrain.convert to-torch runs/bsf_stage2 bsf_stage2_ssl.pt": _BSF[1:],
    "python train.py --config configs/brainsegfounder_finetune_brats.py:demo --workdir runs/bsf_brats10 --config.init.orbax=runs/bsf_stage2 --config.data.train_fraction=0.1 && python eval.py --workdir runs/bsf_brats10":
        (*_BSF, "tests/test_whole_scan.py::test_test_fold_and_label_budget_stay_subject_level"),
    "python train.py --config configs/brats_swinunetr.py:demo --workdir runs/scratch_brats10 --config.data.train_fraction=0.1 && python eval.py --workdir runs/scratch_brats10":
        ("config", *_BRATS_RUN),
    "python train.py --config configs/misfm_vf_pctnet.py:demo --workdir runs/vf_demo": _VF,
    "python train.py --config configs/misfm_finetune_brats.py:demo --workdir runs/vf_brats --config.init.orbax=runs/vf_demo": _VF,
    "python eval.py --workdir runs/vf_brats": _VF[1:],
    "python -m jaxbrain.convert to-torch runs/vf_demo pctnet_vf.pt": _VF[1:],
    "python train.py --config configs/misfm_finetune_brats.py:demo --workdir runs/vf_brats10_pretrained --config.init.orbax=runs/vf_demo --config.data.train_fraction=0.1 --config.total_steps=200 && python eval.py --workdir runs/vf_brats10_pretrained":
        _VF,
    "python train.py --config configs/misfm_finetune_brats.py:demo,scratch --workdir runs/vf_brats10_scratch --config.data.train_fraction=0.1 --config.total_steps=200 && python eval.py --workdir runs/vf_brats10_scratch":
        ("config", "tests/test_volume_fusion.py::test_vf_configs_wire_model_and_objective"),
    "python train.py --config configs/brain_classification.py:demo --workdir runs/ad_demo": _AD,
    "python eval.py --workdir runs/ad_demo": _AD[1:],
    "python train.py --config configs/brain_classification.py:sex,demo --workdir runs/sex_demo":
        ("config", "tests/test_whole_scan.py::test_sex_task_targets_are_the_sex_column"),
    "python train.py --config configs/brain_age.py:demo --workdir runs/age_demo": _AGE,
    "python eval.py --workdir runs/age_demo": _AGE[1:],
    "python train.py --config configs/brain_classification.py:ad,vit --workdir runs/adni_f0 --config.data.root=/data/adni/labels.csv --config.data.fold=0":
        ("config", *_SPLITS),
    "python train.py --config configs/brain_classification.py:pd,resnet18 --workdir runs/ppmi_site3 --config.data.root=/data/ppmi --config.data.held_out_site=site3":
        ("config", *_SPLITS),
    "python train.py --config configs/brain_age.py:densenet121 --workdir runs/ukb_age --config.data.root=/data/ukb/participants.tsv --config.data.test_fold=4":
        ("config", *_SPLITS),
    "python eval.py --workdir runs/ukb_age --split test": _SPLITS,
    "python train.py --config configs/brain_classification.py:ad,resnet50 --workdir runs/ad_inflated --config.data.root=/data/adni/labels.csv --config.init.torch=resnet50_imagenet.pth --config.init.from=torchvision_resnet --config.init.inflate=centre --config.init.channels=sum":
        ("config", "tests/test_inflate.py::test_train_run_starts_from_a_timm_resnet_file",
         "tests/test_inflate.py::test_torchvision_preset_takes_a_torchvision_resnet"),
    "python train.py --config configs/brain_pretrain.py:mae --workdir runs/mae --config.data.root=/data/ukb/subjects.csv":
        ("config", "tests/test_pretrain.py::test_mae_loss_falls_and_vit_finetuning_takes_the_encoder"),
    "python train.py --config configs/brain_pretrain.py:contrastive,densenet121 --workdir runs/simclr --config.data.root=/data/ukb/subjects.csv":
        ("config", "tests/test_pretrain.py::test_contrastive_loss_falls"),
    "python train.py --config configs/brain_pretrain.py:synthetic --workdir runs/synth --config.data.synthetic.n=5000":
        ("config", "tests/test_pretrain.py::test_multitask_loss_falls"),
    "python train.py --config configs/brain_age.py --workdir runs/age_mae --config.data.root=/data/ukb/participants.tsv --config.init.orbax=runs/mae --config.optim.layer_decay=0.75":
        ("config", "encoder", "tests/test_pretrain.py::test_mae_loss_falls_and_vit_finetuning_takes_the_encoder"),
    "python train.py --config configs/brain_pretrain.py:mae,demo --workdir runs/mae_demo":
        ("config", "tests/test_pretrain.py::test_mae_loss_falls_and_vit_finetuning_takes_the_encoder"),
    "python -m jaxbrain.study --preset demo --out runs/study": _STUDY,
    "python -m jaxbrain.study --preset demo --out runs/study --archs vit --tasks ad --seeds 0": _STUDY,
    "python -m jaxbrain.study --preset full --out runs/study_full --held-out-site site3 --data ad=/data/adni/labels.csv pd=/data/ppmi/labels.csv age=/data/ukb/labels.tsv --unlabeled /data/ukb/subjects.csv --source vit:natural_images=vit_b16.pth --source vit:video=videomae_base.pth --source resnet18:natural_images=resnet18.pth --set total_steps=10000 --pretrain-set data.synthetic.n=5000":
        (*_STUDY, "tests/test_inflate.py::test_source_presets_load_published_files"),
    """python train.py --config configs/braindino_pretrain.py --workdir runs/braindino --config.data.collections='[{"root": "/data/ukb", "channels": ["t1", "flair"]}, {"root": "/data/brats", "layout": "brats"}]'""":
        ("config", "tests/test_slices.py::test_the_loop_reads_a_slice_source_from_the_config"),
    "python train.py --config configs/braindino_pretrain.py:demo --workdir runs/braindino_demo":
        ("config", "tests/test_dino_objective.py::test_demo_config_trains_and_resumes",
         "tests/test_probe.py::test_a_demo_pretrained_encoder_beats_a_random_one"),
    "python train.py --config configs/braindino_probe.py:sequence,demo --workdir runs/probe_seq_demo --config.probe.orbax=runs/braindino_demo":
        ("config", "encoder", "tests/test_probe.py::test_a_demo_pretrained_encoder_beats_a_random_one"),
    "python train.py --config configs/braindino_probe.py:sequence,demo,lora --workdir runs/lora_seq_demo --config.init.orbax=runs/braindino_demo":
        ("config", "encoder", "tests/test_probe.py::test_a_demo_pretrained_encoder_beats_a_random_one"),
    "python train.py --config configs/braindino_probe.py:ad --workdir runs/probe_ad --config.data.root=/data/adni/labels.csv --config.probe.orbax=runs/braindino":
        _PROBE,
    "python -m jaxbrain.evaluation.probe knn --workdir runs/probe_ad": _PROBE[2:],
    "python train.py --config configs/braindino_probe.py:ad,lora --workdir runs/probe_ad_lora --config.data.root=/data/adni/labels.csv --config.init.orbax=runs/braindino":
        _LORA,
    "python -m jaxbrain.convert to-torch runs/probe_ad_lora slice_student.pth":
        ("tests/test_lora.py::test_slice_student_layout_both_ways",),
    "python -m jaxbrain.convert to-torch runs/probe_ad_lora adapted.pth --encoder": _LORA[2:],
    "python -m jaxbrain.data sequence-table --root /data/BraTS2021 --out brats_sequences.csv":
        ("tests/test_tables.py::test_categorical_column_task_and_the_brats_sequence_table",),
    "python train.py --config configs/braindino_probe.py:sequence --workdir runs/probe_seq --config.data.root=brats_sequences.csv --config.probe.orbax=runs/braindino":
        _PROBE,
    "python train.py --config configs/braindino_probe.py:stroke --workdir runs/probe_stroke --config.data.root=/data/atlas/train.csv --config.probe.orbax=runs/braindino":
        ("config", "encoder", "tests/test_probe.py::test_stroke_preset_reads_braindinos_table_and_reports_days"),
    "python train.py --config configs/braindino_seg_brats.py:demo --workdir runs/dino_seg_demo":
        ("config", "tests/test_dino_seg.py::test_demo_trains_on_slices_and_eval_equals_validation"),
    "python eval.py --workdir runs/dino_seg_demo":
        ("tests/test_dino_seg.py::test_demo_trains_on_slices_and_eval_equals_validation",),
    "python -m jaxbrain.convert from-torch dinov3_vitb16.pth ckpt/dinov3_vitb16":
        ("tests/test_dino_encoder.py::test_strict_reports_name_the_key",
         "tests/test_dino_encoder.py::test_dinov3_transformers"),
    "python -m jaxbrain.convert to-torch runs/braindino braindino.pth":
        ("tests/test_dino_encoder.py::test_pretraining_model_checkpoint",),
}

# Added to the commands run as written: tiny data, so that they take seconds.
TINY = {
    "python train.py --config configs/brain_age.py:demo --workdir runs/age_demo --check":
        ["--config.data.synthetic.n=12", "--config.data.synthetic.shape=(24, 28, 24)",
         "--config.data.roi=(24, 28, 24)"],
}


def readme_commands(text: str) -> list[str]:
    """The commands of the ```bash blocks: continuation lines joined, comments dropped."""
    out, inside, head = [], False, ""
    for line in text.splitlines():
        if line.startswith("```"):
            inside = line.startswith("```bash")
            continue
        if not inside:
            continue
        line = re.sub(r"\s+#\s.*$", "", line).rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            head += line[:-1].strip() + " "
            continue
        out.append(head + line.strip())
        head = ""
    return out


@pytest.fixture(scope="module")
def readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        return readme_commands(f.read())


def _train_parts(command: str) -> list[list[str]]:
    """The argv (after ``train.py``) of every ``python train.py`` in a command."""
    out = []
    for part in command.split(" && "):
        argv = shlex.split(part)
        if argv[:2] == ["python", "train.py"]:
            out.append(argv[2:])
    return out


def test_every_readme_command_is_in_the_table(readme):
    missing = [c for c in readme if c not in COMMANDS]
    stale = [c for c in COMMANDS if c not in readme]
    assert not missing, "README commands that no test exercises (add them to COMMANDS):\n" + \
        "\n".join(missing)
    assert not stale, "COMMANDS entries the README no longer shows:\n" + "\n".join(stale)
    assert len(readme) > 50


def test_named_tests_exist():
    for how in COMMANDS.values():
        for entry in how:
            if entry.startswith("tests/"):
                path, name = entry.split("::")
                with open(os.path.join(ROOT, path)) as f:
                    assert re.search(rf"^def {re.escape(name)}\(", f.read(), re.M), entry
            else:
                assert entry in ("config", "encoder", "run") or entry.startswith("setup: "), entry


def test_train_commands_resolve(readme):
    """Every train.py command's config, presets and overrides resolve through train.py's own
    parser (the README's list override of data.collections among them)."""
    for command in readme:
        for argv in _train_parts(command):
            try:
                command_line_config(argv)
            except Exception as e:  # noqa: BLE001 - reported with the command
                pytest.fail(f"{command}\n  -> {type(e).__name__}: {e}")
        assert bool(_train_parts(command)) == ("config" in COMMANDS[command]), command


# Fields of a slice / volume encoder that its weights do not depend on.
_NOT_SHAPES = {"name", "img_size", "layer_scale_init", "drop_path", "drop_path_mode", "dropout",
               "attn_dropout", "dtype", "param_dtype", "remat", "lora_rank", "lora_alpha",
               "attn_impl", "rope_dtype", "drop_path_uniform"}


def _encoder(config) -> dict:
    """The encoder arguments of a config's model (or of its probe's encoder)."""
    model = models.from_config(config.model)
    if hasattr(model, "encoder_kwargs"):
        return dict(model.encoder_kwargs())
    return {k: v for k, v in config.model.items() if k != "name"}


def test_encoders_of_readme_runs_fit_the_commands_that_load_them(readme):
    """A command that starts from another README command's run (init.orbax / probe.orbax =
    its --workdir) builds an encoder of that run's shapes: the demo probe and LoRA presets
    take the demo pretraining encoder, the full ones the full one, fine-tuning the MAE's."""
    made = {}
    for command in readme:
        for argv in _train_parts(command):
            workdir = next((a.split("=", 1)[1] for a in argv if a.startswith("--workdir=")), None)
            if "--workdir" in argv:
                workdir = argv[argv.index("--workdir") + 1]
            made[workdir] = argv
    checked = 0
    for command in readme:
        if "encoder" not in COMMANDS[command]:
            continue
        for argv in _train_parts(command):
            c = command_line_config(argv)
            source = (c.get("probe") or {}).get("orbax") or c.init.get("orbax")
            assert source in made, f"{command}: {source} is no README command's --workdir"
            up = _encoder(command_line_config(made[source]))
            if c.get("probe") is not None and c.data.source == "features":
                down = dict(c.probe.encoder)
                assert c.model.in_channels == up["hidden_size"], command
            else:
                down = _encoder(c)
            keys = (set(up) & set(down)) - _NOT_SHAPES
            assert {"hidden_size", "depth"} <= keys, (command, sorted(keys))
            diff = {k: (down[k], up[k]) for k in keys if down[k] != up[k]}
            assert not diff, f"{command}: the encoder differs from {source}'s: {diff}"
            checked += 1
    assert checked >= 6


def test_print_config_and_check_run_as_written(readme, tmp_path):
    """The README's --print_config and --check commands, run as written (tiny data added) in a
    fresh folder: the first prints the resolved fields and writes nothing, the second builds
    data, model and initialisation, reports them, and trains nothing."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    ran = 0
    for command in readme:
        if "run" not in COMMANDS[command]:
            continue
        argv = shlex.split(command)
        argv = [sys.executable, os.path.join(ROOT, argv[1]), *argv[2:], *TINY.get(command, [])]
        argv = [os.path.join(ROOT, a) if a.startswith("configs/") else
                a.replace("=configs/", f"={ROOT}/configs/") for a in argv]
        out = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, env=env)
        assert out.returncode == 0, f"{command}\n{out.stderr[-3000:]}"
        if "--print_config" in command:
            lines = out.stdout.splitlines()
            assert "data.roi = (48, 56, 48)" in lines and "objective.name = 'regression'" in lines
            assert not os.listdir(tmp_path)
        else:
            assert re.search(r"check: \d+ training / \d+ validation cases; .* ok$", out.stdout.strip())
            workdir = tmp_path / "runs" / "age_demo"
            assert not (workdir / "checkpoints").exists() and not (workdir / "metrics.jsonl").exists()
        ran += 1
    assert ran == 2
