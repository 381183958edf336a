"""The READMEs are tested scripts: every bash and python block runs here.

The journeys run the blocks' text as written, in a temporary working folder
(holding links to the repository's `configs/` and `.venv/`), in the order a
user meets them, on small generated data. They are shrunk only by the
documented overrides below, which are appended to a command, never by editing
its text:

* `python -m trainer.main ...`: `--config_override` flags that cut the
  training steps to a few (TRAIN_SHRINK), the demo's synthetic dataset to a
  dozen images (DEMO_SHRINK), and, for the own-data and COCO journeys, put
  MaX-DeepLab-S's heads on the tiny backbone at the synthetic images' 97x97
  (SMALL_MODEL; the COCO journey also reads the converter's descriptor of
  its synthetic stand-in for COCO, COCO_SHRINK, and trains from scratch,
  INIT_CHECKPOINT being empty).
* `python -m max_deeplab_tf.data.synthetic ...`: fewer images (DATA_SHRINK).
* The demo command's install prefix (`python3 -m venv .venv && .venv/bin/pip
  install -q -e . && `) is not run again: CI has just run that same install.
* The README's test command is what CI runs (`.ci/run`); it is checked to be
  identical, not run from inside the tests it runs.

The deeplab2 journey uses the fixture `../shared/fixtures/dl2_max_s_small`
(a checkpoint written by deeplab2) under the file names the README uses, and
is skipped with a message when the fixture folder is absent.

A README edit that breaks a journey, or a new block no journey runs, fails
here.
"""

import json
import os
import shlex
import subprocess
import sys

import pytest

from tests import readme_blocks
from tests.conftest import REPO_ROOT

VENV_BIN = os.path.dirname(sys.executable)
FIXTURE = os.path.join(REPO_ROOT, "..", "shared", "fixtures",
                       "dl2_max_s_small")
INSTALL_PREFIX = "python3 -m venv .venv && .venv/bin/pip install -q -e . && "

# Appended to every `python -m trainer.main` command of a journey.
TRAIN_SHRINK = (
    "trainer_options.solver_options.training_number_of_steps: 6",
    "trainer_options.solver_options.warmup_steps: 0",
    "trainer_options.steps_per_loop: 3",
    "trainer_options.save_checkpoints_steps: 3",
    "trainer_options.save_summaries_steps: 3",
    "evaluator_options.num_vis_samples: 2",
)
# Appended to the demo's trainer command as well: a smaller synthetic set.
DEMO_SHRINK = (
    "trainer_options.synthetic_data.num_train_images: 8",
    "trainer_options.synthetic_data.num_val_images: 4",
)
# Appended to the own-data and COCO journeys' trainer commands as well:
# MaX-DeepLab-S's heads on the tiny backbone, at the synthetic images' 97x97.
SMALL_MODEL = (
    'model_options.backbone.name: "max_deeplab_tiny"',
    "train_dataset_options { batch_size: 2 crop_size: 97 crop_size: 97 "
    "min_resize_value: 97 max_resize_value: 97 }",
    "eval_dataset_options { batch_size: 2 crop_size: 97 crop_size: 97 "
    "min_resize_value: 97 max_resize_value: 97 }",
    "evaluator_options { thing_area_limit: 4 stuff_area_limit: 16 }",
)
# Appended to the own-data journey's trainer commands as well: after a few
# steps no mask slot is confident, so without these thresholds both PQ
# computations would see no segment at all and agree trivially.
OWN_DATA_THRESHOLDS = (
    "evaluator_options { transformer_class_confidence_threshold: 0.0 "
    "pixel_confidence_threshold: 0.0 }",
)
# The COCO journey runs on a synthetic set in COCO's layout, so with its own
# 7 classes, from the converter's descriptor.
COCO_SHRINK = SMALL_MODEL + (
    'train_dataset_options.dataset: "coco/tfrecord/dataset_descriptor.json"',
    'eval_dataset_options.dataset: "coco/tfrecord/dataset_descriptor.json"',
    "model_options.max_deeplab.auxiliary_semantic_head.output_channels: 7",
)
# The environment of the COCO journey: no ImageNet checkpoint to download
# here, so it trains from scratch, as an empty INIT_CHECKPOINT says.
COCO_ENVIRONMENT = {"INIT_CHECKPOINT": ""}
# Appended to `python -m max_deeplab_tf.data.synthetic`.
DATA_SHRINK = ("--num_images=8", "--num_val_images=4")

# Each journey: the README blocks it runs, in order.
JOURNEYS = {
    "demo": ("demo", "predictor-quickstart", "demo-tflite",
             "demo-tflite-api"),
    "own-data": ("own-data-make", "own-data-convert", "own-data-train",
                 "own-data-export", "own-data-predict",
                 "own-data-pq", "predictor-api"),
    "config": ("config",),
    "layers": ("layers",),
    "deeplab2": ("deeplab2-import", "deeplab2-export"),
    "coco": ("coco",),
}
# Blocks that are checked rather than run (see the module docstring).
CHECKED_NOT_RUN = ("tests",)
BLOCK_TIMEOUT_S = 420
# Where a journey's shell keeps its exported variables between blocks (in the
# journey's working folder).
SHELL_STATE = ".journey-shell-state"


def _shrunk(command: str, extra: tuple) -> str:
    """`command` with the documented overrides appended."""
    words = shlex.split(command)
    if "trainer.main" in words:
        extra = TRAIN_SHRINK + extra
        return command + "".join(
            f" --config_override={shlex.quote(o)}" for o in extra)
    if "max_deeplab_tf.data.synthetic" in words:
        return command + " " + " ".join(DATA_SHRINK)
    return command


def _shell_script(block: readme_blocks.Block) -> str:
    commands = readme_blocks.shell_commands(block.text)
    demo = block.name == "demo"
    extra = {"demo": DEMO_SHRINK, "demo-tflite": DEMO_SHRINK,
             "coco": COCO_SHRINK}.get(
        block.name, SMALL_MODEL + OWN_DATA_THRESHOLDS
        if block.name.startswith("own-data") else ())
    if demo:
        assert commands[0].startswith(INSTALL_PREFIX), (
            f"{block.where}: the demo command no longer starts with the "
            f"install {INSTALL_PREFIX!r}")
        commands[0] = commands[0][len(INSTALL_PREFIX):]
    # One shell session per journey, as a user's terminal: what a block
    # exports, the next block sees.
    return ("set -euo pipefail\n"
            f"[ -f {SHELL_STATE} ] && source {SHELL_STATE}\n"
            + "\n".join(_shrunk(c, extra) for c in commands)
            + f"\nexport -p > {SHELL_STATE}\n")


def _environment(block=None):
    """The user's shell: the virtual environment first on PATH."""
    env = dict(os.environ)
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.pop("PYTHONPATH", None)
    if block is not None and block.name == "coco":
        env.update(COCO_ENVIRONMENT)
    return env


def _run_block(block, workdir):
    if block.language == "bash":
        argv = ["bash", "-c", _shell_script(block)]
    else:
        argv = [os.path.join(VENV_BIN, "python"), "-c", block.text]
    result = subprocess.run(argv, cwd=workdir, env=_environment(block),
                            capture_output=True, text=True,
                            timeout=BLOCK_TIMEOUT_S)
    assert result.returncode == 0, (
        f"{block.where} ({block.name}) exited {result.returncode}:\n"
        f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n"
        f"{result.stderr[-6000:]}")
    return result


def _workspace(tmp_path):
    for name in ("configs", ".venv"):
        os.symlink(os.path.join(REPO_ROOT, name), tmp_path / name)
    return tmp_path


def _run_journey(name, workdir):
    blocks = readme_blocks.by_name()
    return {step: _run_block(blocks[step], workdir)
            for step in JOURNEYS[name]}


def test_every_block_belongs_to_a_journey():
    blocks = readme_blocks.runnable_blocks()
    unnamed = [b.where for b in blocks if not b.name]
    assert not unnamed, (
        f"README blocks without a '<!-- journey: NAME -->' line: {unnamed}")
    claimed = {step for steps in JOURNEYS.values() for step in steps}
    claimed.update(CHECKED_NOT_RUN)
    names = readme_blocks.by_name()
    assert set(names) == claimed, (
        f"blocks no journey runs: {sorted(set(names) - claimed)}; journey "
        f"steps with no block: {sorted(claimed - set(names))}")


def test_ci_runs_exactly_the_readme_test_command():
    with open(os.path.join(REPO_ROOT, ".ci", "run")) as f:
        ci_lines = [line for line in f.read().splitlines()
                    if line and not line.startswith("#")]
    commands = readme_blocks.shell_commands(readme_blocks.by_name()["tests"].text)
    assert commands == [ci_lines[-1]]


def test_config_journey(tmp_path):
    _run_journey("config", _workspace(tmp_path))


def test_layers_journey(tmp_path):
    workdir = _workspace(tmp_path)
    _run_journey("layers", workdir)
    assert (workdir / "classifier.keras").is_file()


def test_demo_journey(tmp_path):
    workdir = _workspace(tmp_path)
    _run_journey("demo", workdir)
    model_dir = workdir / "demo_output/model"
    metrics = json.loads((model_dir / "eval/metrics-latest.json").read_text())
    # The shrunk run: 6 steps, evaluated on its 4 val images, exported as
    # version 6, its panels drawn.
    assert (metrics["step"], metrics["num_images"]) == (6, 4)
    assert (model_dir / "export/6/saved_model.pb").is_file()
    assert len(list((model_dir / "vis").iterdir())) == 2
    # The LiteRT variants, added to version 6 beside its SavedModel.
    assert sorted(p.name for p in (model_dir / "export/6/assets.extra").glob(
        "*.tflite")) == ["model.tflite", "model_float16.tflite",
                         "model_int8.tflite"]
    assert (workdir / "overlay_int8.png").is_file()
    _check_tflite_agrees_with_the_saved_model(workdir, model_dir / "export/6")
    from PIL import Image
    with Image.open(workdir / "overlay.png") as overlay:
        # The 97x97 image, and a legend beside or below it.
        assert overlay.mode == "RGB" and min(overlay.size) >= 97
        assert overlay.size[0] * overlay.size[1] > 97 * 97


def _check_tflite_agrees_with_the_saved_model(workdir, version):
    """The demo's float32 LiteRT model against its SavedModel on the val
    images: the same maps on >= 99.5% of pixels. After the journey's 6 steps
    the maps are nearly uniform (no slot passes the confidence thresholds),
    so this checks the README's files load and agree; the comparisons on
    maps with many segments are tests/export/test_tflite.py's (a model with
    several segments per image, the deeplab2 fixture) and the fully trained
    demo's figure in README.md (benchmarks/tflite.py)."""
    import glob

    import numpy as np

    from max_deeplab_tf import Predictor

    images = sorted(glob.glob(str(
        workdir / "demo_output/synthetic_coco/val2017/*.jpg")))
    assert images
    saved = Predictor.from_saved_model(str(version))(images)
    lite = Predictor.from_tflite(str(version / "assets.extra/model.tflite"))(
        images)
    for name in ("panoptic", "semantic", "instance"):
        a = np.stack([getattr(r, name) for r in saved])
        b = np.stack([getattr(r, name) for r in lite])
        assert (a == b).mean() >= 0.995, (name, (a == b).mean())


def _pq_tables(path):
    """All / Things / Stuff and each class's pq, sq, rq (and tp, fp, fn)."""
    result = json.loads(path.read_text())
    tables = {group: result[group] for group in ("All", "Things", "Stuff")}
    tables.update(result["per_class"])
    return {group: {key: value for key, value in table.items()
                    if key in ("pq", "sq", "rq", "tp", "fp", "fn", "n")}
            for group, table in tables.items()}


def test_own_data_journey(tmp_path):
    """make data -> convert -> train and eval -> export -> predict -> PQ.

    The PQ command on predict's output is compared with the trainer's own
    eval on the same checkpoint and images: every PQ, SQ and RQ (to 1e-6)
    and every class's true positives, false positives and false negatives.
    """
    workdir = _workspace(tmp_path)
    _run_journey("own-data", workdir)
    predictions = json.loads(
        (workdir / "predictions/panoptic.json").read_text())
    assert sum(len(a["segments_info"])
               for a in predictions["annotations"]) > 0, (
        "predict found no segment: the comparison below would be vacuous")
    trainer = _pq_tables(workdir / "models/my_model/eval/metrics-latest.json")
    command = _pq_tables(workdir / "pq.json")
    assert set(trainer) == set(command)
    differences = []
    for group, table in trainer.items():
        assert set(table) == set(command[group]), group
        differences += [(group, key, value, command[group][key])
                        for key, value in table.items()
                        if abs(value - command[group][key]) > 1e-6]
    # Equal only if predict sees the pixels evaluation sees: with Pillow's
    # JPEG decoder instead of the pipeline's, a segment or two differed here.
    assert not differences, (
        f"trainer eval and predict -> PQ differ (group, key, trainer, "
        f"predict): {differences}")


def test_coco_journey(tmp_path):
    """The COCO recipe's commands on a synthetic set in COCO's layout."""
    workdir = _workspace(tmp_path)
    subprocess.run(
        [os.path.join(VENV_BIN, "python"), "-m", "max_deeplab_tf.data.synthetic",
         "--output_dir=coco", *DATA_SHRINK, "--image_size=97"],
        cwd=workdir, env=_environment(), check=True, timeout=300,
        capture_output=True)
    _run_journey("coco", workdir)
    metrics = json.loads(
        (workdir / "models/max_deeplab_s/eval/metrics-latest.json").read_text())
    assert metrics["step"] == 6


@pytest.mark.skipif(not os.path.isdir(FIXTURE), reason=(
    f"deeplab2 fixture {FIXTURE} is absent (it lives in ../shared beside the "
    "project root)"))
def test_deeplab2_journey(tmp_path):
    workdir = _workspace(tmp_path)
    # The README's file names for a downloaded deeplab2 config and checkpoint.
    os.symlink(os.path.join(FIXTURE, "config.textproto"),
               workdir / "max_deeplab_s_os16_res641_400k.textproto")
    checkpoint_dir = workdir / "max_deeplab_s_os16_res641_400k"
    checkpoint_dir.mkdir()
    for entry in os.listdir(os.path.join(FIXTURE, "ckpt")):
        prefix, _, suffix = entry.partition(".")
        if prefix.startswith("ckpt-"):
            os.symlink(os.path.join(FIXTURE, "ckpt", entry),
                       checkpoint_dir / f"ckpt-400000.{suffix}")
    _run_journey("deeplab2", workdir)
