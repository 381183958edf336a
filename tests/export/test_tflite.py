"""LiteRT (TFLite) export, run with the LiteRT interpreter against the
SavedModel: the tiny model (three variants written by export_saved_model,
and a Predictor on them), and deeplab2's MaX-DeepLab-S fixture at its own
size (../shared/fixtures/dl2_max_s_small; skipped when absent)."""

import collections
import os

import numpy as np
import pytest
import tensorflow as tf

import max_deeplab_tf
from max_deeplab_tf import cli
from max_deeplab_tf import common
from max_deeplab_tf import export
from max_deeplab_tf.data import dataset_info
from max_deeplab_tf.export import tflite
from tests import conftest
from tests.export import tiny_model

Interpreter = pytest.importorskip(
    "ai_edge_litert.interpreter",
    reason="ai-edge-litert (the LiteRT interpreter) is not installed"
).Interpreter

FIXTURE = os.path.join(conftest.SHARED_FIXTURES, "dl2_max_s_small")
COCO = dataset_info.get_dataset_descriptor("coco_panoptic")
# Area limits on, so that the graph holds the segment-area counts too.
OVERRIDES = tiny_model.OVERRIDES + (
    "evaluator_options.thing_area_limit: 4",
    "evaluator_options.stuff_area_limit: 16")
INT_MAPS = (common.PRED_PANOPTIC_KEY, common.PRED_SEMANTIC_KEY,
            common.PRED_INSTANCE_KEY)


def _config(variants):
    quoted = ", ".join(f'"{v}"' for v in variants)
    return max_deeplab_tf.load_experiment(
        tiny_model.CONFIG,
        overrides=OVERRIDES + (f"export_options.tflite_variants: [{quoted}]",))


def _runner(path):
    return Interpreter(model_path=path).get_signature_runner()


def _op_names(path):
    interpreter = Interpreter(model_path=path)
    return collections.Counter(op["op_name"]
                               for op in interpreter._get_ops_details())  # pylint: disable=protected-access


def _agreement(a, b):
    assert a.shape == b.shape
    return float(np.mean(a == b))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model, version folder): the tiny model exported with the three
    variants."""
    model = tiny_model.build(_config([]))
    root = str(tmp_path_factory.mktemp("tflite") / "export")
    version = export.export_saved_model(model, _config(tflite.VARIANTS),
                                        root, global_step=7)
    return model, version


@pytest.fixture(scope="module")
def served(exported):
    return tf.saved_model.load(exported[1]).signatures["serving_default"]


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.RandomState(3)
    # Smooth colour blobs (upsampled noise): large segments.
    small = rng.randint(0, 256, [3, 5, 5, 3]).astype(np.float32)
    return tf.cast(tf.image.resize(small, tiny_model.CROP), tf.uint8).numpy()


def test_export_writes_the_variants_beside_the_descriptor(exported):
    _, version = exported
    extra = os.path.join(version, tflite.TFLITE_DIR)
    assert sorted(os.listdir(extra)) == sorted(
        ["dataset_descriptor.json", "experiment.textproto",
         "export_info.json", "model.tflite", "model_float16.tflite",
         "model_int8.tflite"])
    assert sorted(os.listdir(os.path.dirname(version))) == ["7"]
    sizes = {v: os.path.getsize(tflite.tflite_path(version, v))
             for v in tflite.VARIANTS}
    assert sizes["int8"] < sizes["float16"] < sizes["float32"]
    ops = _op_names(tflite.tflite_path(version, "float32"))
    # Builtins only (no Flex/custom ops), the post-processing included.
    assert not [name for name in ops if "FLEX" in name.upper()
                or name == "CUSTOM"], ops
    for name in ("ARG_MAX", "UNSORTED_SEGMENT_SUM", "RESIZE_BILINEAR"):
        assert name in ops, name


def test_variants_match_the_saved_model(exported, served, inputs):
    _, version = exported
    runners = {variant: _runner(tflite.tflite_path(version, variant))
               for variant in tflite.VARIANTS}
    agreement = collections.defaultdict(list)
    for image in inputs:
        want = served(images=tf.constant(image[None]))
        assert len(np.unique(want[common.PRED_PANOPTIC_KEY])) > 2
        for variant, runner in runners.items():
            got = runner(images=image[None].astype(np.float32))
            for key in INT_MAPS:
                agreement[variant, key].append(
                    _agreement(got[key], want[key].numpy()))
            if variant == "float32":
                for key in (common.PRED_INSTANCE_SCORES_KEY,
                            common.PRED_SEMANTIC_SCORES_KEY):
                    np.testing.assert_allclose(got[key], want[key].numpy(),
                                               atol=1e-4, err_msg=key)
    means = {k: float(np.mean(v)) for k, v in agreement.items()}
    print(means)
    for key in INT_MAPS:
        assert means["float32", key] >= 0.995, means
        assert means["float16", key] >= 0.99, means
        # Random weights: int8 moves a few near-tied argmaxes.
        assert means["int8", key] >= 0.9, means


def test_predictor_runs_the_tflite_file(exported, served):
    _, version = exported
    # Predictor.from_saved_model(version), without loading it again.
    by_saved_model = max_deeplab_tf.Predictor(
        lambda images: served(images=images), COCO)
    by_tflite = max_deeplab_tf.Predictor.from_tflite(version)
    assert by_tflite.source == tflite.tflite_path(version)
    assert by_tflite.descriptor.to_json() == COCO.to_json()
    int8 = max_deeplab_tf.Predictor.from_saved_model(
        tflite.tflite_path(version, "int8"))
    rng = np.random.RandomState(4)
    small = rng.randint(0, 256, [4, 6, 3]).astype(np.uint8)
    # Another size than the crop: resized, padded and mapped back.
    image = tf.cast(tf.image.resize(small, [50, 71]), tf.uint8).numpy()
    want = by_saved_model(image)
    got = by_tflite(image)
    assert len(want.segments) >= 2
    for attr in ("panoptic", "semantic", "instance"):
        assert getattr(got, attr).shape == (50, 71)
        assert _agreement(getattr(got, attr), getattr(want, attr)) >= 0.995
    assert int8(image).panoptic.shape == (50, 71)
    batch = by_tflite([image, image[:30]])
    assert [p.panoptic.shape for p in batch] == [(50, 71), (30, 71)]
    np.testing.assert_array_equal(batch[0].panoptic, got.panoptic)


def test_variants_are_added_to_an_existing_version(tmp_path):
    # The smallest model: this checks files, not numbers.
    model = tiny_model.mini_model()
    root = str(tmp_path / "export")
    version = export.export_saved_model(model, _config([]), root, 1)
    before = {name: os.path.getmtime(os.path.join(version, "assets.extra",
                                                  name))
              for name in os.listdir(os.path.join(version, "assets.extra"))}
    assert not [name for name in before if name.endswith(".tflite")]
    # The same export asked for with a LiteRT model: only the file is added.
    assert export.export_saved_model(model, _config(["int8"]), root,
                                     1) == version
    path = tflite.tflite_path(version, "int8")
    with open(path, "rb") as f:
        data = f.read()
    assert export.export_saved_model(model, _config(["int8"]), root,
                                     1) == version
    with open(path, "rb") as f:
        assert f.read() == data
    after = os.listdir(os.path.join(version, "assets.extra"))
    assert sorted(after) == sorted(list(before) + ["model_int8.tflite"])
    for name, mtime in before.items():
        assert os.path.getmtime(os.path.join(version, "assets.extra",
                                             name)) == mtime, name
    assert os.listdir(root) == ["1"]
    got = _runner(path)(images=np.zeros([1, 33, 33, 3], np.float32))
    assert got[common.PRED_PANOPTIC_KEY].shape == (1, 33, 33)


def test_unknown_variant_is_refused_before_writing(tmp_path):
    model = tiny_model.mini_model()
    root = str(tmp_path / "export")
    with pytest.raises(cli.UserError, match="unknown 'int4'"):
        export.export_saved_model(model, _config(["float32", "int4"]), root,
                                  global_step=1)
    assert not os.path.exists(root)


def test_predictor_errors_are_one_line(exported, tmp_path):
    _, version = exported
    with pytest.raises(cli.UserError, match="no such LiteRT"):
        max_deeplab_tf.Predictor.from_tflite(str(tmp_path / "none.tflite"))
    (tmp_path / "bad.tflite").write_bytes(b"not a flatbuffer" * 8)
    with pytest.raises(cli.UserError, match="not a LiteRT model"):
        max_deeplab_tf.Predictor.from_tflite(str(tmp_path / "bad.tflite"),
                                             dataset="coco_panoptic")
    # Copied away from its dataset_descriptor.json: the dataset is asked for.
    alone = tmp_path / "alone.tflite"
    with open(tflite.tflite_path(version), "rb") as f:
        alone.write_bytes(f.read())
    with pytest.raises(cli.UserError, match="dataset_descriptor.json"):
        max_deeplab_tf.Predictor.from_tflite(str(alone))
    assert max_deeplab_tf.Predictor.from_tflite(
        str(alone), dataset="coco_panoptic").descriptor.name == COCO.name


def test_deeplab2_fixture_float32_matches_tf_and_deeplab2():
    if not os.path.isdir(FIXTURE):
        pytest.skip(f"deeplab2 fixture folder {FIXTURE} is absent (see "
                    "its README: ../shared/fixtures/dl2_max_s_small)")
    from max_deeplab_tf.model import deeplab2_variable_map
    from max_deeplab_tf.tools import deeplab2_config

    config = deeplab2_config.translate_config_file(
        os.path.join(FIXTURE, "config.textproto")).experiment
    config.export_options.crop_size[:] = [129, 129]
    model = max_deeplab_tf.build_model(config)
    model.build((None, 129, 129, 3))
    report = deeplab2_variable_map.load_deeplab2_checkpoint(
        model, os.path.join(FIXTURE, "ckpt", "ckpt-0"))
    assert report.complete
    module = tflite.build_tflite_module(model, config, COCO)
    data = tflite.convert(module, "float32")
    runner = Interpreter(model_content=data).get_signature_runner()
    with np.load(os.path.join(FIXTURE, "input.npz")) as fixture_input:
        image = fixture_input["image"][None].astype(np.float32)
    got = runner(images=image)
    # The graph that was converted, run by TensorFlow: what the SavedModel's
    # signature computes at the crop size (its network equals deeplab2's,
    # tests/model/test_deeplab2_parity.py).
    want = module.concrete_function()(tf.constant(image))
    with np.load(os.path.join(FIXTURE, "outputs.npz")) as reference:
        deeplab2 = reference[common.PRED_PANOPTIC_KEY]
    assert len(np.unique(deeplab2)) > 10
    for key in INT_MAPS:
        assert _agreement(got[key], want[key].numpy()) >= 0.995, key
    assert _agreement(got[common.PRED_PANOPTIC_KEY], deeplab2) >= 0.995
