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


def all_float_fields(descriptor, prefix=""):
    """Dotted path of every float/double field of a message type, found by
    walking the descriptors (the independent enumeration the validation's
    generic walk must agree with)."""
    from google.protobuf import descriptor as descriptor_lib
    paths = []
    for field in descriptor.fields:
        path = f"{prefix}{field.name}"
        if field.cpp_type == descriptor_lib.FieldDescriptor.CPPTYPE_MESSAGE:
            paths += all_float_fields(field.message_type, path + ".")
        elif field.cpp_type in (descriptor_lib.FieldDescriptor.CPPTYPE_FLOAT,
                                descriptor_lib.FieldDescriptor.CPPTYPE_DOUBLE):
            paths.append(path)
    return paths


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_every_float_field_rejects_non_finite_values(tmp_path, value):
    from max_deeplab_tf.protos import config_pb2
    fields = all_float_fields(config_pb2.ExperimentOptions.DESCRIPTOR)
    assert "trainer_options.solver_options.base_learning_rate" in fields
    assert len(fields) > 20
    path = write(tmp_path, VALID)
    for field in fields:
        problems = problems_of(path, [f"{field}: {value}"])
        matching = [p for p in problems if f": {field}: " in p]
        assert len(matching) == 1, (field, problems)
        assert "not a finite number" in matching[0], matching
        # Located at the override that set it.
        assert matching[0].startswith("override 1"), matching


def test_non_finite_value_in_the_file_names_its_line(tmp_path):
    text = VALID.replace("base_learning_rate: 0.001",
                         "base_learning_rate: inf")
    problems = problems_of(write(tmp_path, text))
    line = 1 + text.splitlines().index(
        "  solver_options { base_learning_rate: inf }")
    assert problems == [
        f"{tmp_path}/experiment.textproto:{line}: trainer_options."
        "solver_options.base_learning_rate: inf is not a finite number; "
        "expected a finite value"]


def test_a_mode_requires_variables_only_where_it_reads(tmp_path):
    path = write(tmp_path, VALID)
    # Export reads no data; evaluation no training data.
    experiment = load_experiment(path, environ={}, mode="export")
    assert list(experiment.train_dataset_options.file_pattern) == [
        "${DATA_DIR}/train*.tfrecord"]
    text = VALID.replace("${DATA_DIR}/train", "${TRAIN_DIR}/train").replace(
        "${DATA_DIR}/val", "${VAL_DIR}/val")
    path = write(tmp_path, text)
    load_experiment(path, environ={"VAL_DIR": "/v"}, mode="eval")
    load_experiment(path, environ={"VAL_DIR": "/v"}, mode="continuous_eval")
    load_experiment(path, environ={"TRAIN_DIR": "/t"}, mode="train")
    for mode, environ, missing in (
            ("eval", {"TRAIN_DIR": "/t"}, "VAL_DIR"),
            ("train", {"VAL_DIR": "/v"}, "TRAIN_DIR"),
            ("train_and_eval", {"VAL_DIR": "/v"}, "TRAIN_DIR"),
            (None, {"TRAIN_DIR": "/t"}, "VAL_DIR")):
        with pytest.raises(ConfigError) as info:
            load_experiment(path, environ=environ, mode=mode)
        assert len(info.value.problems) == 1, info.value.problems
        assert f"environment variable {missing} is not set" in (
            info.value.problems[0])


def test_variables_outside_quotes_fill_numeric_fields(tmp_path):
    text = VALID.replace("auxiliary_semantic_head { output_channels: 134",
                         "auxiliary_semantic_head { output_channels: "
                         "${NUM_CLASSES}")
    # A variable inside a comment or a string is not a numeric one.
    text = text.replace('experiment_name: "unit"',
                        '# output_channels: ${COMMENTED}\n'
                        'experiment_name: "${NAME}x"')
    path = write(tmp_path, text)
    experiment = load_experiment(
        path, environ=dict(ENV, NUM_CLASSES="134", NAME="n"))
    assert (experiment.model_options.max_deeplab.auxiliary_semantic_head
            .output_channels == 134)
    assert experiment.experiment_name == "nx"
    problems = problems_of(path, environ=dict(ENV, NAME="n"))
    line = 1 + text.splitlines().index(
        "    auxiliary_semantic_head { output_channels: ${NUM_CLASSES} "
        "head_channels: 256 }")
    assert problems == [f"{path}:{line}: environment variable NUM_CLASSES "
                        "is not set (used as ${NUM_CLASSES})"]


def test_own_data_template_takes_its_dataset_from_the_environment(tmp_path):
    from max_deeplab_tf.data import dataset_info
    path = os.path.join(os.path.dirname(__file__), "..", "..", "configs",
                        "own_data.textproto")
    descriptor = dataset_info.DatasetDescriptor(
        name="mine", num_classes=5, ignore_label=0, label_divisor=1000,
        thing_class_ids=(1, 2), class_names=("void", "a", "b", "c", "d"))
    descriptor_path = tmp_path / "dataset_descriptor.json"
    descriptor_path.write_text(descriptor.to_json())
    environ = {"DATASET": str(descriptor_path), "NUM_CLASSES": "5",
               "TRAIN_SET": "/d/train-*", "VAL_SET": "/d/val-*"}
    experiment = load_experiment(path, environ=environ)
    assert experiment.train_dataset_options.dataset == str(descriptor_path)
    assert experiment.eval_dataset_options.dataset == str(descriptor_path)
    assert list(experiment.train_dataset_options.file_pattern) == [
        "/d/train-*"]
    assert (experiment.model_options.max_deeplab.auxiliary_semantic_head
            .output_channels == 5)
    assert not experiment.trainer_options.HasField("synthetic_data")
    # Export needs only what builds the model.
    load_experiment(path, environ={"DATASET": str(descriptor_path),
                                   "NUM_CLASSES": "5"}, mode="export")
    # A class count that disagrees with the descriptor is named.
    problems = problems_of(path, environ=dict(environ, NUM_CLASSES="7"))
    assert any("output_channels: 7 differs from the 5 classes" in p
               for p in problems), problems


def test_coco_configs_export_and_evaluate_without_data_variables():
    root = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
    for name in ("max_deeplab_s.textproto", "max_deeplab_l.textproto"):
        path = os.path.join(root, name)
        load_experiment(path, environ={}, mode="export")
        load_experiment(path, environ={"VAL_SET": "/v"}, mode="eval")
        with pytest.raises(ConfigError, match="TRAIN_SET is not set"):
            load_experiment(path, environ={"VAL_SET": "/v"}, mode="train")
