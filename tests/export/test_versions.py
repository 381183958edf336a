"""Versioned exports (EXPORT_DIR/<global_step>/, as TF Serving reads them):
a user's folder is refused and left intact, versions accumulate, the root
resolves to the newest, a step is never overwritten, and consumers pointed
at the wrong folder get one line."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from max_deeplab_tf import cli
from max_deeplab_tf import export
from max_deeplab_tf.export import versions
from tests import conftest
from tests.export import file_tree
from tests.export import tiny_model


@pytest.fixture(scope="module")
def model_and_config():
    return tiny_model.mini_model(), tiny_model.config()


def test_refuses_a_users_folder_and_leaves_it_intact(model_and_config,
                                                      tmp_path):
    model, config = model_and_config
    precious = tmp_path / "precious"
    before = file_tree.users_folder(precious)
    with pytest.raises(cli.UserError) as error:
        export.export_saved_model(model, config, str(precious), 7)
    message = str(error.value)
    assert str(precious) in message and "notes.txt" in message
    assert "\n" not in message
    assert file_tree.snapshot(precious) == before
    assert sorted(os.listdir(precious)) == ["notes.txt", "sub"]
    assert sorted(os.listdir(tmp_path)) == ["precious"]  # nothing beside it


def test_refuses_a_file_and_an_unversioned_export(model_and_config, tmp_path):
    model, config = model_and_config
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(cli.UserError, match="is a file"):
        export.export_saved_model(model, config, str(path), 1)
    assert path.read_text() == "x"
    # An export of the old layout: saved_model.pb at the top.
    old = tmp_path / "old"
    (old / "variables").mkdir(parents=True)
    (old / "saved_model.pb").write_bytes(b"old")
    with pytest.raises(cli.UserError, match="unversioned SavedModel"):
        export.export_saved_model(model, config, str(old), 1)
    assert (old / "saved_model.pb").read_bytes() == b"old"
    # Consumers still read it: it is a SavedModel folder.
    assert export.resolve_saved_model(str(old)) == str(old)


def test_versions_accumulate_and_the_root_resolves_to_the_newest(
        model_and_config, tmp_path):
    model, config = model_and_config
    root = str(tmp_path / "export")
    first = export.export_saved_model(model, config, root, 7)
    # A numeric name that is not a version of ours (no SavedModel parts)
    # would make the folder foreign; an interrupted object-store copy (only
    # SavedModel parts, no saved_model.pb yet) is tolerated, never resolved.
    os.makedirs(f"{root}/30/variables")
    second = export.export_saved_model(model, config, root, 12)
    assert (first, second) == (f"{root}/7", f"{root}/12")
    assert sorted(os.listdir(root)) == ["12", "30", "7"]
    assert versions.list_versions(root) == [7, 12]
    assert export.resolve_saved_model(root) == second
    assert export.resolve_saved_model(first) == first
    assert export.resolve_saved_model(root + "/") == second
    # Numeric order, not text order: 100 is newer than 12.
    os.rename(f"{root}/7", f"{root}/100")
    assert export.resolve_saved_model(root) == f"{root}/100"
    # Both versions serve.
    for version in (f"{root}/100", second):
        served = tf.saved_model.load(version).signatures["serving_default"]
        out = served(images=tf.zeros([1, 9, 11, 3], tf.uint8))
        assert out["panoptic_pred"].shape == (1, 9, 11)


def test_same_step_writes_nothing_or_is_refused(model_and_config, tmp_path):
    model, config = model_and_config
    root = str(tmp_path / "export")
    version = export.export_saved_model(model, config, root, 4)
    before = file_tree.snapshot(version)
    stamp = os.stat(f"{version}/saved_model.pb").st_mtime_ns
    # The same export again (a re-run of a finished command): nothing new.
    assert export.export_saved_model(model, config, root, 4) == version
    assert os.stat(f"{version}/saved_model.pb").st_mtime_ns == stamp
    assert sorted(os.listdir(root)) == ["4"]
    # The same export from a run whose data paths differ (a later
    # --mode=export without ${TRAIN_SET}): nothing new either.
    elsewhere = tiny_model.config()
    elsewhere.train_dataset_options.file_pattern[:] = ["${TRAIN_SET}"]
    elsewhere.export_options.export_dir = "/somewhere/else"
    assert export.export_saved_model(model, elsewhere, root, 4) == version
    assert os.stat(f"{version}/saved_model.pb").st_mtime_ns == stamp
    # Other weights at the same step: refused, the version untouched.
    other = tiny_model.mini_model()
    other.set_weights([w + 1.0 for w in model.get_weights()])
    with pytest.raises(cli.UserError, match="version 4 exists and is a "
                       "different export"):
        export.export_saved_model(other, config, root, 4)
    # Another config at the same step: refused too.
    changed = tiny_model.config()
    changed.evaluator_options.stuff_area_limit = 3
    with pytest.raises(cli.UserError, match="different export"):
        export.export_saved_model(model, changed, root, 4)
    assert file_tree.snapshot(version) == before
    assert sorted(os.listdir(root)) == ["4"]


def test_a_leftover_temporary_is_ours(model_and_config, tmp_path):
    model, config = model_and_config
    root = tmp_path / "export"
    leftover = root / versions.temporary_name(9)
    (leftover / "variables").mkdir(parents=True)
    version = export.export_saved_model(model, config, str(root), 9)
    assert version == f"{root}/9"
    assert leftover.exists()  # never removed: it may be another writer's
    assert export.resolve_saved_model(str(root)) == version
    assert not versions.is_version_name(leftover.name)


def test_resolve_names_the_export_of_a_model_dir(tmp_path):
    model_dir = tmp_path / "model"
    (model_dir / "export").mkdir(parents=True)
    (model_dir / "checkpoint").write_text('model_checkpoint_path: "ckpt-8"')
    (model_dir / "ckpt-8.index").write_bytes(b"")
    with pytest.raises(cli.UserError) as error:
        export.resolve_saved_model(str(model_dir))
    assert str(error.value) == (f"{model_dir} is not a SavedModel; the export "
                                f"is in {model_dir}/export")
    (model_dir / "export").rmdir()
    with pytest.raises(cli.UserError, match="model_dir without an export"):
        export.resolve_saved_model(str(model_dir))
    with pytest.raises(cli.UserError, match="no such SavedModel"):
        export.resolve_saved_model(str(tmp_path / "missing"))
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"")
    with pytest.raises(cli.UserError, match="not a SavedModel"):
        export.resolve_saved_model(str(tmp_path / "photos"))


EXPORT_CONFIG = """
export_options { export_dir: "%s" }
"""


def test_trainer_export_mode_refuses_a_users_folder(tmp_path):
    """`python -m trainer.main --mode=export` pointed at a user's folder (the
    issue's command): exit 2, one line naming the folder, files intact."""
    model = tiny_model.build()
    model_dir = tmp_path / "model"
    from max_deeplab_tf.training import checkpoints
    tf.train.Checkpoint(model=checkpoints.model_view(model)).write(
        str(model_dir / "ckpt-3"))
    precious = tmp_path / "precious"
    before = file_tree.users_folder(precious)
    args = [sys.executable, "-m", "trainer.main",
            f"--config_file={tiny_model.CONFIG}", "--mode=export",
            f"--model_dir={model_dir}"]
    args += [f"--config_override={o}" for o in tiny_model.OVERRIDES]
    args += [f"--config_override=export_options.export_dir: \"{precious}\"",
             "--config_override=model_options.initial_checkpoint: "
             f"\"{model_dir}/ckpt-3\""]
    run = subprocess.run(args, capture_output=True, text=True, timeout=300,
                         cwd=conftest.REPO_ROOT,
                         env=dict(os.environ, TRAIN_SET="unused",
                                  VAL_SET="unused"))
    assert run.returncode == 2, run.stderr[-3000:]
    assert str(precious) in run.stderr and "notes.txt" in run.stderr
    assert "Traceback" not in run.stderr
    assert file_tree.snapshot(precious) == before
    np.testing.assert_equal(sorted(os.listdir(precious)), ["notes.txt", "sub"])
