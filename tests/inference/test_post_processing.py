"""Post-processing: deeplab2's maps on deeplab2's raw outputs (fixture), and
hand-built cases for each rule (class mapping, thresholds, area limits,
upsampling, the empty result)."""

import os

import numpy as np
import pytest
import tensorflow as tf

from max_deeplab_tf import common
from max_deeplab_tf.data import dataset_info
from max_deeplab_tf.inference import post_processing
from max_deeplab_tf.protos import evaluator_pb2
from tests import conftest

FIXTURE = os.path.join(conftest.SHARED_FIXTURES, "dl2_max_s_small")

# Void 0; thing class 2 only; stuff 1 and 3. Transformer classes: index 0 ->
# semantic 2 (thing), 1 -> 1, 2 -> 3 (stuff), 3 -> void.
DESCRIPTOR = dataset_info.DatasetDescriptor(
    name="pp_test", num_classes=4, ignore_label=0, label_divisor=10,
    thing_class_ids=(2,))
BIG = 30.0


def class_logits(*classes, confidence=BIG):
    """One row per slot: a large logit on the given class index."""
    logits = np.zeros([1, len(classes), 4], np.float32)
    for slot, index in enumerate(classes):
        logits[0, slot, index] = confidence
    return logits


def mask_logits(slot_map, num_slots, value=BIG):
    """[1, h, w, N] with `value` on the slot given per pixel."""
    slot_map = np.asarray(slot_map)
    logits = np.zeros(slot_map.shape + (num_slots,), np.float32)
    for slot in range(num_slots):
        logits[..., slot][slot_map == slot] = value
    return logits[None]


def run(classes, masks, size, **options):
    defaults = dict(transformer_class_confidence_threshold=0.7,
                    pixel_confidence_threshold=0.4, thing_area_limit=0,
                    stuff_area_limit=0)
    defaults.update(options)
    out = post_processing.panoptic_post_process(
        classes, masks, size, DESCRIPTOR.thing_class_ids,
        DESCRIPTOR.stuff_class_ids, DESCRIPTOR.ignore_label,
        DESCRIPTOR.label_divisor, **defaults)
    return {k: v.numpy()[0] for k, v in out.items()}


def test_class_index_to_semantic_id_and_instances():
    # Slots: 0 -> thing (semantic 2), 1 -> stuff 1, 2 -> stuff 3, 3 -> thing.
    classes = class_logits(0, 1, 2, 0)
    masks = mask_logits([[0, 1, 2, 3]], 4)
    out = run(classes, masks, [1, 4])
    # Things keep slot + 1 as instance, stuff has instance 0.
    assert out[common.PRED_PANOPTIC_KEY].tolist() == [[21, 10, 30, 24]]
    assert out[common.PRED_SEMANTIC_KEY].tolist() == [[2, 1, 3, 2]]
    assert out[common.PRED_INSTANCE_KEY].tolist() == [[1, 2, 3, 4]]
    np.testing.assert_allclose(out[common.PRED_SEMANTIC_SCORES_KEY], 1.0,
                               rtol=1e-5)


def test_unconfident_slot_makes_its_pixels_void():
    # Slot 1's best class has probability 0.5 (< 0.7): dropped. Its pixels
    # are void even though slot 0 is their runner-up; the semantic map (no
    # thresholds) still shows slot 1's class.
    classes = class_logits(1, 2)
    # Slot 1: class index 2 (semantic 3) with probability 0.5 / 1.001.
    classes[0, 1] = np.log(np.array([1e-3, 0.25, 0.5, 0.25]))
    masks = np.zeros([1, 1, 2, 2], np.float32)
    masks[0, 0, 0] = [BIG, 0]
    masks[0, 0, 1] = [BIG / 2, BIG]
    out = run(classes, masks, [1, 2])
    assert out[common.PRED_PANOPTIC_KEY].tolist() == [[10, 0]]
    assert out[common.PRED_SEMANTIC_KEY].tolist() == [[1, 3]]


def test_pixel_confidence_threshold_is_strict():
    # Two detected stuff slots; at pixel 0 the mask softmax gives 0.8 to
    # slot 0, at pixel 1 exactly 0.5 to each (0.5 is not > 0.5).
    classes = class_logits(1, 2)
    masks = np.zeros([1, 1, 2, 2], np.float32)
    masks[0, 0, 0] = [np.log(0.8), np.log(0.2)]
    masks[0, 0, 1] = [0.0, 0.0]
    out = run(classes, masks, [1, 2], pixel_confidence_threshold=0.5)
    assert out[common.PRED_PANOPTIC_KEY].tolist() == [[10, 0]]
    np.testing.assert_allclose(out[common.PRED_INSTANCE_SCORES_KEY],
                               [[0.8, 0.5]], rtol=1e-5)
    # Ties go to the first slot.
    assert out[common.PRED_INSTANCE_KEY].tolist() == [[1, 1]]


def test_area_limits_things_per_slot_and_stuff_per_class():
    # Row of 10: thing slot 0 on 3 px, thing slot 1 on 2 px, stuff class 3
    # from slots 2 and 3 (2 px each, 4 together), stuff 1 (slot 4) on 3 px.
    row = [0, 0, 0, 1, 1, 2, 2, 3, 3, 4]
    classes = class_logits(0, 0, 2, 2, 1)
    masks = mask_logits([row], 5)
    out = run(classes, masks, [1, 10], thing_area_limit=3, stuff_area_limit=4)
    # Thing of exactly 3 px kept, of 2 px void; stuff 3 (4 px merged over
    # two slots) kept, stuff 1 (3 px) void.
    assert out[common.PRED_PANOPTIC_KEY].tolist() == [
        [21, 21, 21, 0, 0, 30, 30, 30, 30, 0]]
    assert out[common.PRED_INSTANCE_KEY].tolist() == [
        [1, 1, 1, 2, 2, 3, 3, 4, 4, 5]]


def test_no_detection_gives_the_empty_result():
    classes = class_logits(3, 3)  # both slots predict void
    masks = mask_logits([[0, 1]], 2)
    out = run(classes, masks, [1, 2])
    assert out[common.PRED_PANOPTIC_KEY].tolist() == [[0, 0]]
    assert out[common.PRED_INSTANCE_KEY].tolist() == [[1, 1]]
    assert not out[common.PRED_INSTANCE_SCORES_KEY].any()
    assert not out[common.PRED_SEMANTIC_SCORES_KEY].any()


def test_upsampling_aligns_corners():
    # 1x2 logits -> 1x5: slot 0 = 1 - 2x, slot 1 = 2x - 1 at x = 0, .25, .5,
    # .75, 1; the tie at x = .5 goes to slot 0.
    masks = np.array([[[[1.0, -1.0], [-1.0, 1.0]]]], np.float32)
    out = run(class_logits(1, 2), masks, [1, 5],
              pixel_confidence_threshold=0.0)
    assert out[common.PRED_INSTANCE_KEY].tolist() == [[1, 1, 1, 2, 2]]
    assert out[common.PRED_SEMANTIC_KEY].tolist() == [[1, 1, 1, 3, 3]]


def test_post_processor_reads_options_and_checks_inputs():
    options = evaluator_pb2.EvaluatorOptions(thing_area_limit=3)
    processor = post_processing.PostProcessor(options, DESCRIPTOR)
    outputs = {
        common.PRED_TRANSFORMER_CLASS_LOGITS_KEY: class_logits(0, 1),
        common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY: mask_logits(
            [[0, 1], [1, 1]], 2)}
    out = processor(outputs)
    # Output size 4 * (2 - 1) + 1 = 5.
    assert out[common.PRED_PANOPTIC_KEY].shape == (1, 5, 5)
    with pytest.raises(ValueError, match="transformer_class_logits has 5"):
        processor({**outputs, common.PRED_TRANSFORMER_CLASS_LOGITS_KEY:
                   np.zeros([1, 2, 5], np.float32)})
    with pytest.raises(ValueError, match="only 'pixelwise'"):
        post_processing.PostProcessor(evaluator_pb2.EvaluatorOptions(
            transformer_post_processing="maskwise"), DESCRIPTOR)


def _fixture():
    if not os.path.isdir(FIXTURE):
        pytest.skip(f"deeplab2 fixture folder {FIXTURE} is absent")
    return np.load(os.path.join(FIXTURE, "outputs.npz"))


def _fixture_processor():
    options = evaluator_pb2.EvaluatorOptions(
        transformer_class_confidence_threshold=0.7,
        pixel_confidence_threshold=0.4, thing_area_limit=100,
        stuff_area_limit=1600)
    coco = dataset_info.get_dataset_descriptor("coco_panoptic")
    return post_processing.PostProcessor(options, coco, [129, 129])


@pytest.mark.parametrize("jit_compile", [False, True])
def test_reproduces_deeplab2_on_its_outputs(jit_compile):
    reference = _fixture()
    processor = _fixture_processor()
    outputs = {k: tf.constant(reference[k]) for k in (
        common.PRED_TRANSFORMER_CLASS_LOGITS_KEY,
        common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY)}
    if jit_compile:
        got = tf.function(processor, jit_compile=True)(outputs)
    else:
        got = processor(outputs)
    for key in (common.PRED_PANOPTIC_KEY, common.PRED_SEMANTIC_KEY,
                common.PRED_INSTANCE_KEY):
        assert got[key].dtype == tf.int32
        np.testing.assert_array_equal(got[key].numpy(), reference[key],
                                      err_msg=key)
    for key in (common.PRED_INSTANCE_SCORES_KEY,
                common.PRED_SEMANTIC_SCORES_KEY):
        if jit_compile:
            np.testing.assert_allclose(got[key].numpy(), reference[key],
                                       atol=1e-5, err_msg=key)
        else:
            # Bit for bit on an Intel Xeon with AVX-512, where the fixture
            # was written; TensorFlow's softmax and exp kernels for another
            # vector width round differently in the last bits (up to 5 ulp
            # on an AMD EPYC with AVX2, on 60% of the scores).
            np.testing.assert_array_max_ulp(got[key].numpy(),
                                            reference[key], maxulp=8)
    # The fixture README's segment list.
    ids, counts = np.unique(got[common.PRED_PANOPTIC_KEY].numpy(),
                            return_counts=True)
    assert dict(zip(ids.tolist(), counts.tolist()))[22784] == 2598
    assert len(ids) == 19


def test_batch_items_are_independent():
    reference = _fixture()
    processor = _fixture_processor()
    classes = reference[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY]
    masks = reference[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY]
    # Second item: every slot void -> empty result; must not disturb the
    # first (area counts are per image).
    void = np.zeros_like(classes)
    void[..., -1] = BIG
    got = processor({
        common.PRED_TRANSFORMER_CLASS_LOGITS_KEY: np.concatenate(
            [classes, void]),
        common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY: np.concatenate(
            [masks, masks])})
    panoptic = got[common.PRED_PANOPTIC_KEY].numpy()
    np.testing.assert_array_equal(panoptic[0],
                                  reference[common.PRED_PANOPTIC_KEY][0])
    assert not panoptic[1].any()
