"""Tests for max_deeplab_tf.config.load_experiment."""

import os
import textwrap

import pytest

from max_deeplab_tf.config import ConfigError, load_experiment

VALID = textwrap.dedent("""\
    experiment_name: "unit"
    model_options {
      backbone { name: "max_deeplab_s" output_stride: 16 }
      max_deeplab {
        pixel_space_head { output_channels: 128 head_channels: 256 }
        auxiliary_semantic_head { output_channels: 134 head_channels: 256 }
      }
    }
    trainer_options {
      solver_options { base_learning_rate: 0.001 }
    }
    train_dataset_options {
      dataset: "coco_panoptic"
      file_pattern: "${DATA_DIR}/train*.tfrecord"
      batch_size: 8
      crop_size: 641
      crop_size: 641
    }
    eval_dataset_options {
      dataset: "coco_panoptic"
      file_pattern: "${DATA_DIR}/val*.tfrecord"
      batch_size: 1
      crop_size: 641
      crop_size: 641
    }
    evaluator_options { pixel_confidence_threshold: 0.4 }
    """)

ENV = {"DATA_DIR": "/data/coco"}


def write(tmp_path, text, name="experiment.textproto"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def problems_of(path, overrides=(), environ=ENV):
    with pytest.raises(ConfigError) as info:
        load_experiment(path, overrides, environ=environ)
    return info.value.problems


def test_valid_config_loads_and_expands_variables(tmp_path):
    experiment = load_experiment(write(tmp_path, VALID), environ=ENV)
    assert experiment.experiment_name == "unit"
    assert list(experiment.train_dataset_options.file_pattern) == [
        "/data/coco/train*.tfrecord"]
    assert experiment.eval_dataset_options.file_pattern[0] == (
        "/data/coco/val*.tfrecord")
    # Defaults of deeplab2 survive.
    assert experiment.trainer_options.solver_options.optimizer == "adam"
    assert experiment.model_options.max_deeplab.num_mask_slots == 128


def test_reads_environment_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_DIR", "/env/dir")
    experiment = load_experiment(write(tmp_path, VALID))
    assert experiment.train_dataset_options.file_pattern[0].startswith(
        "/env/dir/")


def test_overrides_apply_in_order_dotted_and_nested(tmp_path):
    experiment = load_experiment(
        write(tmp_path, VALID),
        overrides=[
            "trainer_options.solver_options.base_learning_rate: 0.0005",
            "trainer_options { solver_options { base_learning_rate: 0.0002 "
            "warmup_steps: 7 } }",
            "train_dataset_options.crop_size: [65, 65]",
            "train_dataset_options.file_pattern: '${DATA_DIR}/x-*'",
        ],
        environ=ENV)
    solver = experiment.trainer_options.solver_options
    assert solver.base_learning_rate == pytest.approx(0.0002)
    assert solver.warmup_steps == 7
    # A repeated field set by an override replaces, not appends.
    assert list(experiment.train_dataset_options.crop_size) == [65, 65]
    assert list(experiment.train_dataset_options.file_pattern) == [
        "/data/coco/x-*"]
    # Untouched siblings keep their values.
    assert experiment.train_dataset_options.batch_size == 8


def test_unreadable_file(tmp_path):
    path = str(tmp_path / "missing.textproto")
    problems = problems_of(path)
    assert len(problems) == 1
    assert path in problems[0] and "cannot read" in problems[0]


def test_syntax_error_names_file_and_line(tmp_path):
    text = VALID.replace("batch_size: 8", "batch_size 8")
    path = write(tmp_path, text)
    problems = problems_of(path)
    line = next(i for i, l in enumerate(text.splitlines(), 1)
                if "batch_size 8" in l)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:{line}: syntax error")


def test_value_of_wrong_type(tmp_path):
    text = VALID.replace("batch_size: 8", 'batch_size: "eight"')
    path = write(tmp_path, text)
    (problem,) = problems_of(path)
    line = next(i for i, l in enumerate(text.splitlines(), 1)
                if '"eight"' in l)
    assert problem.startswith(f"{path}:{line}:")
    assert "batch_size" in problem


def test_every_unknown_field_is_listed_with_line_and_path(tmp_path):
    text = VALID.replace(
        'backbone { name: "max_deeplab_s" output_stride: 16 }',
        'backbone { name: "max_deeplab_s" output_stride: 16 colour: 3 }'
    ).replace("evaluator_options {", "evaluator_options { foo { bar: 1 }")
    text += 'unknown_top: "x"\n'
    path = write(tmp_path, text)
    problems = problems_of(path)
    lines = text.splitlines()
    expected = {
        "model_options.backbone.colour": next(
            i for i, l in enumerate(lines, 1) if "colour" in l),
        "evaluator_options.foo": next(
            i for i, l in enumerate(lines, 1) if "foo {" in l),
        "unknown_top": len(lines),
    }
    assert len(problems) == 3
    for field, line in expected.items():
        assert any(p.startswith(f"{path}:{line}: {field}: unknown field")
                   for p in problems), (field, problems)


def test_unset_variable_names_variable_field_and_line(tmp_path):
    path = write(tmp_path, VALID)
    problems = problems_of(path, environ={})
    assert len(problems) == 2
    lines = VALID.splitlines()
    for field, token in (("train_dataset_options.file_pattern", "train*"),
                         ("eval_dataset_options.file_pattern", "val*")):
        line = next(i for i, l in enumerate(lines, 1) if token in l)
        assert any(p.startswith(f"{path}:{line}: {field}: environment "
                                "variable DATA_DIR is not set")
                   for p in problems), problems


@pytest.mark.parametrize("old, new, field, words", [
    ("crop_size: 641\n  crop_size: 641\n}\neval",
     "crop_size: 640\n  crop_size: 641\n}\neval",
     "train_dataset_options.crop_size", "k * output_stride + 1"),
    ("pixel_confidence_threshold: 0.4", "pixel_confidence_threshold: 1.5",
     "evaluator_options.pixel_confidence_threshold", "outside [0, 1]"),
    ("evaluator_options {", "evaluator_options { "
     "transformer_class_confidence_threshold: -0.1",
     "evaluator_options.transformer_class_confidence_threshold",
     "outside [0, 1]"),
    ("batch_size: 8", "batch_size: 0", "train_dataset_options.batch_size",
     "must be positive"),
    ("batch_size: 1", "batch_size: -2", "eval_dataset_options.batch_size",
     "must be positive"),
    ("output_channels: 134", "output_channels: 0",
     "model_options.max_deeplab.auxiliary_semantic_head.output_channels",
     "must be positive"),
    ("output_channels: 134", "output_channels: 133",
     "model_options.max_deeplab.auxiliary_semantic_head.output_channels",
     "differs from the 134 classes"),
    ('name: "max_deeplab_s"', 'name: "resnet50"',
     "model_options.backbone.name", "'resnet50' is not one of"),
    ("output_stride: 16", "output_stride: 8",
     "model_options.backbone.output_stride", "is not 16 or 32"),
    ('dataset: "coco_panoptic"\n  file_pattern: "${DATA_DIR}/train',
     'dataset: "cocoo"\n  file_pattern: "${DATA_DIR}/train',
     "train_dataset_options.dataset", "neither a built-in dataset"),
    ("base_learning_rate: 0.001", "base_learning_rate: 0.0",
     "trainer_options.solver_options.base_learning_rate", "must be positive"),
])
def test_semantic_problem(tmp_path, old, new, field, words):
    assert old in VALID, old
    text = VALID.replace(old, new, 1)
    path = write(tmp_path, text)
    problems = problems_of(path)
    assert len(problems) == 1, problems
    changed_line = next(i for i, l in enumerate(text.splitlines(), 1)
                        if new.splitlines()[0].strip() in l)
    assert problems[0].startswith(f"{path}:{changed_line}: {field}: "), (
        problems[0], changed_line)
    assert words in problems[0]


def test_all_kinds_of_problems_reported_together(tmp_path):
    text = (VALID.replace("batch_size: 8", "batch_size: 0")
            .replace("pixel_confidence_threshold: 0.4",
                     "pixel_confidence_threshold: 2.0 mystery: 1"))
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_experiment(path, ["model_options.backbone.output_stride: 8"],
                        environ={})
    problems = info.value.problems
    message = str(info.value)
    # unknown field, 2 unset variables, batch size, threshold, stride and
    # the two crop sizes that no longer fit stride 8... crops 641 = 80*8+1 fit.
    assert any("mystery: unknown field" in p for p in problems)
    assert sum("DATA_DIR is not set" in p for p in problems) == 2
    assert any("batch_size: 0 must be positive" in p for p in problems)
    assert any("pixel_confidence_threshold: 2 is outside" in p
               for p in problems)
    assert any(p.startswith("override 1") and "output_stride" in p
               for p in problems)
    assert message.startswith(f"{len(problems)} problem(s) in experiment "
                              f"config {path}")


def test_bad_override_is_reported(tmp_path):
    path = write(tmp_path, VALID)
    problems = problems_of(path, ["trainer_options.no_such_field: 3"])
    assert len(problems) == 1
    assert problems[0].startswith("override 1")
    assert "trainer_options.no_such_field: unknown field" in problems[0]


def test_shipped_example_configs_of_deeplab2_style_comments(tmp_path):
    # Comments and deeplab2's list syntax are accepted.
    text = "# comment\n" + VALID.replace(
        "crop_size: 641\n  crop_size: 641\n}\neval",
        "crop_size: [641, 641]  # inline comment\n}\neval")
    experiment = load_experiment(write(tmp_path, text), environ=ENV)
    assert list(experiment.train_dataset_options.crop_size) == [641, 641]


def test_config_is_read_through_gfile():
    import tensorflow as tf

    path = "ram://configs/experiment.textproto"
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(VALID)
    experiment = load_experiment(path, environ=ENV)
    assert experiment.experiment_name == "unit"
