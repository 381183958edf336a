"""Tests for max_deeplab_tf.data.input_pipeline."""

import io
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from max_deeplab_tf import common
from max_deeplab_tf.data import build_coco_panoptic
from max_deeplab_tf.data import dataset_info
from max_deeplab_tf.data import input_pipeline
from max_deeplab_tf.data import synthetic
from max_deeplab_tf.data import tfrecord
from max_deeplab_tf.protos import dataset_pb2

SYNTHETIC = dataset_info.get_dataset_descriptor("synthetic_panoptic")
DIV = SYNTHETIC.label_divisor  # 256; things 1..3, stuff 4..6, void 0.


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    synthetic.generate(str(root / "coco"), 8, 3, 48, seed=2)
    # Training shards keep crowd pixels (class, instance 0).
    for split, num_shards, crowd_void in (("train", 2, False),
                                          ("val", 3, True)):
        build_coco_panoptic.convert(str(root / "coco"), split,
                                    str(root / "shards"),
                                    num_shards=num_shards, num_workers=1,
                                    treat_crowd_as_ignore=crowd_void)
    return str(root / "shards")


def _options(pattern, crop=33, batch=4, **kwargs):
    options = dataset_pb2.DatasetOptions(
        dataset="synthetic_panoptic", file_pattern=[pattern],
        batch_size=batch, crop_size=[crop, crop], **kwargs)
    return options


def _reference_targets(panoptic, thing_classes, div, ignore, max_thing_id,
                       threshold=None, small_weight=1.0):
    """Brute force, pixel by pixel in raster order."""
    semantic = panoptic // div
    instance = panoptic % div
    is_thing = np.isin(semantic, thing_classes)
    order = []
    for value, thing, inst in zip(panoptic.ravel(), is_thing.ravel(),
                                  instance.ravel()):
        if thing and inst > 0 and value not in order:
            order.append(value)
    mask = np.full(panoptic.shape, -1)
    classes = np.full([max_thing_id], -1)
    for k, value in enumerate(order[:max_thing_id]):
        mask[panoptic == value] = k
        classes[k] = value // div
    weight = np.ones(panoptic.shape, np.float32)
    for value in order:
        if threshold and (panoptic == value).sum() < threshold:
            weight[panoptic == value] = small_weight
    weight[semantic == ignore] = 0
    canonical = np.where(is_thing, panoptic, semantic * div)
    return canonical, semantic, mask, classes, weight


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_targets_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    # Blocky maps: classes 0..6, instance ids 0..3 (stuff and void too).
    coarse = rng.integers(0, 7, (4, 5)) * DIV + rng.integers(0, 4, (4, 5))
    panoptic = np.kron(coarse, np.ones((3, 2), np.int64)).astype(np.int32)
    panoptic[rng.random(panoptic.shape) < 0.1] = 2 * DIV + 3
    got = input_pipeline.panoptic_targets(
        tf.constant(panoptic), SYNTHETIC, max_thing_id=5,
        small_instance_threshold=7, small_instance_weight=3.0)
    want = _reference_targets(panoptic, [1, 2, 3], DIV, 0, 5, 7, 3.0)
    keys = (common.GT_PANOPTIC_KEY, common.GT_SEMANTIC_KEY,
            common.GT_THING_ID_MASK_KEY, common.GT_THING_ID_CLASS_KEY,
            common.SEMANTIC_LOSS_WEIGHT_KEY)
    for key, expected in zip(keys, want):
        np.testing.assert_array_equal(got[key].numpy(), expected, key)


def test_too_many_things_are_counted_not_fatal():
    # Four instances of class 1 in raster order 1, 2, 3, 4; room for two.
    panoptic = np.array([[4 * DIV, 1 * DIV + 2, 1 * DIV + 1],
                         [1 * DIV + 4, 1 * DIV + 3, 5 * DIV]], np.int32)
    input_pipeline.reset_thing_overflow_count()
    dataset = tf.data.Dataset.from_tensors(panoptic).map(
        lambda p: input_pipeline.panoptic_targets(
            p, SYNTHETIC, max_thing_id=2, image_name=tf.constant("crowded")))
    got = next(iter(dataset))
    np.testing.assert_array_equal(got[common.GT_THING_ID_MASK_KEY].numpy(),
                                  [[-1, 0, 1], [-1, -1, -1]])
    np.testing.assert_array_equal(got[common.GT_THING_ID_CLASS_KEY].numpy(),
                                  [1, 1])
    assert input_pipeline.thing_overflow_count() == {
        "images": 1, "dropped_instances": 2}


def test_class_outside_dataset_names_the_image():
    panoptic = tf.constant([[9 * DIV]], tf.int32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="img_42"):
        input_pipeline.panoptic_targets(panoptic, SYNTHETIC,
                                        image_name=tf.constant("img_42"))


def _png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_deeplab2_record_through_the_eval_pipeline(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    sky, disc, box, tri = 4 * DIV, 1 * DIV, 2 * DIV, 3 * DIV
    label = np.array([
        [sky, sky, sky, sky, sky, sky, sky],
        [sky, box + 1, box + 1, sky, disc + 1, disc + 1, 0],
        [sky, box + 1, box + 1, sky, disc + 1, disc + 1, 0],
        [tri, tri, sky, disc + 2, disc + 2, sky, sky],
        [tri, tri, sky, disc + 2, 0, 0, sky]], np.int32)
    # Literal deeplab2 keys (see test_tfrecord), one record per file.
    feature = {
        "image/encoded": _png(image), "image/filename": b"hand",
        "image/format": b"png",
        "image/segmentation/class/encoded": label.astype("<i4").tobytes(),
        "image/segmentation/class/format": b"raw"}
    feature = {k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))
               for k, v in feature.items()}
    for key, value in (("image/height", 5), ("image/width", 7),
                       ("image/channels", 3)):
        feature[key] = tf.train.Feature(
            int64_list=tf.train.Int64List(value=[value]))
    path = str(tmp_path / "hand.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(tf.train.Example(features=tf.train.Features(
            feature=feature)).SerializeToString())
    options = _options(path, crop=9, batch=1)
    sample = next(iter(input_pipeline.build_dataset(options, False)))
    sample = {k: v[0].numpy() for k, v in sample.items()}
    np.testing.assert_array_equal(sample[common.IMAGE][:5, :7], image)
    assert (sample[common.IMAGE][5:] == 127.5).all()
    panoptic = sample[common.GT_PANOPTIC_KEY]
    np.testing.assert_array_equal(panoptic[:5, :7], label)
    assert (panoptic[5:] == 0).all() and (panoptic[:, 7:] == 0).all()
    np.testing.assert_array_equal(sample[common.GT_SEMANTIC_KEY][:5, :7],
                                  label // DIV)
    # Raster order of first pixels: box+1 (row 1), disc+1, disc+2; the
    # triangle is crowd (instance 0): no id, but keeps its class.
    expected_ids = np.full((9, 9), -1)
    expected_ids[:5, :7] = np.select(
        [label == box + 1, label == disc + 1, label == disc + 2],
        [0, 1, 2], -1)
    np.testing.assert_array_equal(sample[common.GT_THING_ID_MASK_KEY],
                                  expected_ids)
    assert sample[common.GT_THING_ID_CLASS_KEY][:4].tolist() == [2, 1, 1, -1]
    assert sample[common.GT_THING_ID_CLASS_KEY].shape == (128,)
    weight = sample[common.SEMANTIC_LOSS_WEIGHT_KEY]
    np.testing.assert_array_equal(weight, sample[common.GT_SEMANTIC_KEY] > 0)
    assert sample[common.IMAGE_NAME] == b"hand"
    assert sample[common.GT_SIZE_RAW].tolist() == [5, 7]


def _check_sample(sample, max_thing_id=128):
    image = sample[common.IMAGE]
    panoptic = sample[common.GT_PANOPTIC_KEY]
    semantic = sample[common.GT_SEMANTIC_KEY]
    ids = sample[common.GT_THING_ID_MASK_KEY]
    classes = sample[common.GT_THING_ID_CLASS_KEY]
    weight = sample[common.SEMANTIC_LOSS_WEIGHT_KEY]
    assert image.min() >= 0 and image.max() <= 255
    np.testing.assert_array_equal(panoptic // DIV, semantic)
    is_thing = np.isin(semantic, SYNTHETIC.thing_class_ids)
    instance = panoptic % DIV
    assert (instance[~is_thing] == 0).all()
    # Targets agree with the labels: a pixel has a thing id exactly when
    # it is a non-crowd thing pixel.
    np.testing.assert_array_equal(ids >= 0, is_thing & (instance > 0))
    used = np.unique(ids[ids >= 0])
    np.testing.assert_array_equal(used, np.arange(used.size))
    assert (classes[used.size:] == -1).all()
    seen = set()
    for k in used:
        values = np.unique(panoptic[ids == k])
        assert values.size == 1  # One instance per mask: no overlap.
        assert values[0] not in seen
        seen.add(values[0])
        assert classes[k] == values[0] // DIV  # One class per instance.
    np.testing.assert_array_equal(weight, (semantic != 0).astype(np.float32))


def test_training_batches_keep_the_invariants(shards):
    options = _options(os.path.join(shards, "train-*"), crop=33, batch=4)
    options.min_resize_value[:] = [41]
    options.max_resize_value[:] = [33]
    options.augmentations.min_scale_factor = 0.5
    options.augmentations.max_scale_factor = 1.5
    options.augmentations.scale_factor_step_size = 0.1
    dataset = input_pipeline.build_dataset(options, True)
    assert dataset.element_spec[common.IMAGE].shape == (4, 33, 33, 3)
    assert dataset.element_spec[common.GT_THING_ID_CLASS_KEY].shape == (4,
                                                                        128)
    assert common.IMAGE_NAME not in dataset.element_spec
    things = crowd = 0
    for batch in dataset.take(6):
        for i in range(4):
            sample = {k: v[i].numpy() for k, v in batch.items()}
            _check_sample(sample)
            things += (sample[common.GT_THING_ID_MASK_KEY] >= 0).any()
            crowd += (np.isin(sample[common.GT_PANOPTIC_KEY],
                              [DIV, 2 * DIV, 3 * DIV])).any()
    assert things >= 12
    assert crowd >= 1


def test_augmented_values_come_from_the_source(shards):
    # One image, many augmentations: every panoptic value in a crop is
    # one of the source label's values, or padding (void).
    path = os.path.join(shards, "val-00000-of-00003.tfrecord")
    record = next(iter(tf.data.TFRecordDataset(path)))
    source = tfrecord.decode_example(record)["label"].numpy()
    options = _options(path, crop=41, batch=8)
    options.augmentations.min_scale_factor = 0.5
    options.augmentations.max_scale_factor = 2.0
    options.augmentations.scale_factor_step_size = 0.25
    options.shuffle_buffer_size = 1
    batch = next(iter(input_pipeline.build_dataset(options, True)))
    allowed = set(np.unique(source)) | {0}
    for i in range(8):
        sample = {k: v[i].numpy() for k, v in batch.items()}
        assert set(np.unique(sample[common.GT_PANOPTIC_KEY])) <= allowed
        _check_sample(sample)


def test_padding_is_ignore_in_targets():
    generator = input_pipeline.SampleGenerator(
        SYNTHETIC, True, [17, 19], min_scale_factor=0.5,
        max_scale_factor=1.0, scale_factor_step_size=0.25)
    label = np.full((10, 10), 5 * DIV, np.int32)
    label[2:6, 3:8] = 1 * DIV + 1
    decoded = {"image": tf.fill([10, 10, 3], tf.constant(255, tf.uint8)),
               "label": tf.constant(label), "image_name": tf.constant("x"),
               "height": tf.constant(10), "width": tf.constant(10)}
    for _ in range(5):
        sample = {k: v.numpy() for k, v in generator(decoded).items()}
        padded = (sample[common.IMAGE] == 127.5).all(axis=-1)
        assert padded.any()
        np.testing.assert_array_equal(
            sample[common.GT_PANOPTIC_KEY] == 0, padded)
        assert (sample[common.SEMANTIC_LOSS_WEIGHT_KEY][padded] == 0).all()
        assert (sample[common.GT_THING_ID_MASK_KEY][padded] == -1).all()
        _check_sample(sample)


@pytest.mark.parametrize("pattern", ["val-*", "val-00000-*"])
def test_input_context_splits_the_data(shards, pattern):
    # 3 shards: one per pipeline at most; 1 shard: records are split.
    options = _options(os.path.join(shards, pattern), batch=2)
    everything = [n.decode() for b in input_pipeline.build_dataset(
        options, False, drop_remainder=False)
                  for n in b[common.IMAGE_NAME].numpy()]
    parts = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=pipeline,
            num_replicas_in_sync=2)
        dataset = input_pipeline.build_dataset(options, False, context,
                                               drop_remainder=False)
        names = [n.decode() for b in dataset
                 for n in b[common.IMAGE_NAME].numpy()]
        assert all(b[common.IMAGE].shape[0] == 1 for b in dataset)
        parts.append(names)
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(everything)


def test_eval_reads_in_file_order(shards):
    options = _options(os.path.join(shards, "val-*"), batch=1)
    names = [b[common.IMAGE_NAME][0].numpy().decode()
             for b in input_pipeline.build_dataset(options, False)]
    assert names == sorted(names) and len(names) == 3


@pytest.mark.parametrize("change, message", [
    (lambda o: o.crop_size.pop(), "crop_size"),
    (lambda o: o.file_pattern.__setitem__(0, "/nonexistent/x-*"),
     "matches no file"),
    (lambda o: setattr(o.augmentations, "autoaugment_policy_name", "simple"),
     "autoaugment"),
    (lambda o: o.max_resize_value.append(99), "exceeds crop_size"),
    (lambda o: setattr(o, "dataset", "nope"), "unknown dataset"),
])
def test_bad_options_are_named(shards, change, message):
    options = _options(os.path.join(shards, "val-*"))
    change(options)
    with pytest.raises(ValueError, match=message):
        input_pipeline.build_dataset(options, True)


def test_descriptor_path_as_dataset(shards):
    options = _options(os.path.join(shards, "val-*"), batch=1)
    options.dataset = build_coco_panoptic.descriptor_path(shards)
    batch = next(iter(input_pipeline.build_dataset(options, False)))
    assert batch[common.GT_PANOPTIC_KEY].shape == (1, 33, 33)


def test_unlabelled_records_for_inference(tmp_path):
    image = np.full((6, 4, 3), 50, np.uint8)
    path = str(tmp_path / "unlabelled.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(tfrecord.make_example(_png(image), "png", "u", 6, 4)
                     .SerializeToString())
    options = _options(path, crop=9, batch=1)
    options.decode_groundtruth_label = False
    batch = next(iter(input_pipeline.build_dataset(options, False)))
    assert sorted(batch) == sorted([common.IMAGE, common.IMAGE_NAME,
                                    common.GT_SIZE_RAW])
    # 6 x 4 fits 9 x 9 without resizing (max_resize only shrinks).
    np.testing.assert_array_equal(batch[common.IMAGE][0, :6, :4], image)
    with pytest.raises(ValueError, match="decode_groundtruth_label"):
        input_pipeline.build_dataset(options, True)
