"""Overlays, legends and evaluation panels (hand-computed pixels)."""

import numpy as np

from max_deeplab_tf.data import dataset_info
from max_deeplab_tf.inference import visualization

DESCRIPTOR = dataset_info.DatasetDescriptor(
    name="overlay", num_classes=3, ignore_label=0, label_divisor=10,
    thing_class_ids=(1,), class_names=("void", "apple", "sky"),
    colormap=((0, 0, 0), (200, 0, 0), (0, 200, 0)))
COLOURS = np.array(DESCRIPTOR.colormap, np.uint8)


def test_blend_colours_boundaries_and_void():
    image = np.full([12, 40, 3], 100, np.uint8)
    panoptic = np.zeros([12, 40], np.int64)
    panoptic[:, 20:] = 20  # class 2 on the right half, void on the left
    drawn = visualization.blend(image, panoptic, DESCRIPTOR)
    alpha = visualization.OVERLAY_ALPHA
    assert drawn[0, 0].tolist() == [100, 100, 100]  # void keeps the image
    assert drawn[0, 20].tolist() == [255, 255, 255]  # boundary
    expected = np.round([(1 - alpha) * 100, (1 - alpha) * 100 + alpha * 200,
                         (1 - alpha) * 100])
    assert drawn[5, 30].tolist() == expected.tolist()


def test_legend_lists_the_present_classes_with_their_colours():
    panoptic = np.array([[0, 11, 11], [20, 20, 12]])
    assert visualization.present_classes(DESCRIPTOR, panoptic) == [1, 2]
    assert visualization.present_classes(DESCRIPTOR, panoptic[:1]) == [1]
    both = visualization.legend([1, 2], DESCRIPTOR, height=10)
    one = visualization.legend([1], DESCRIPTOR, height=10)
    # Rows of 12 px font: two rows need more height than one.
    assert both.shape[0] > one.shape[0] >= 10
    for class_id in (1, 2):
        assert np.all(both == COLOURS[class_id], axis=-1).any()
    assert not np.all(one == COLOURS[2], axis=-1).any()
    # Text is drawn: a longer name makes the legend wider.
    longer = dataset_info.DatasetDescriptor(
        name="overlay", num_classes=3, ignore_label=0, label_divisor=10,
        thing_class_ids=(1,), class_names=("void", "apple pie tree", "sky"),
        colormap=DESCRIPTOR.colormap)
    assert visualization.legend([1], longer, 10).shape[1] > one.shape[1]
    assert visualization.class_name(DESCRIPTOR, 7) == "class_7"


def test_overlay_puts_the_legend_to_the_right():
    image = np.zeros([50, 60, 3], np.uint8)
    panoptic = np.full([50, 60], 11)
    drawn = visualization.overlay(image, panoptic, DESCRIPTOR)
    assert drawn.shape[0] == 50 and drawn.shape[1] > 60
    np.testing.assert_array_equal(
        drawn[:, :60], visualization.blend(image, panoptic, DESCRIPTOR))
    assert np.all(drawn[:, 60:] == COLOURS[1], axis=-1).any()
    assert visualization.overlay(image, panoptic, DESCRIPTOR,
                                 show_legend=False).shape == (50, 60, 3)


def test_font_grows_with_the_picture():
    assert visualization.font_size_for(97) == 12
    assert visualization.font_size_for(1500) == 38
    assert visualization.font_size_for(10000) == 48


def test_enlarge_repeats_pixels_by_an_integer_factor():
    picture = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    big = visualization.enlarge(picture, 5)  # factor ceil(5 / 2) = 3
    assert big.shape == (6, 9, 3)
    np.testing.assert_array_equal(big[::3, ::3], picture)
    np.testing.assert_array_equal(big[2, 8], picture[0, 2])
    assert visualization.enlarge(picture, 2) is picture


def test_panels_are_readable_and_carry_a_legend():
    # The demo's 97 px: enlarged 3x to 291 px, one size for the batch.
    images = np.full([2, 97, 97, 3], 50.0)
    gt = np.full([2, 97, 97], 20)
    gt[0, :40] = 11
    pred = np.full([2, 97, 97], 20)
    panels = visualization.panels(images, gt, pred, DESCRIPTOR)
    assert panels.dtype == np.uint8 and panels.shape[0] == 2
    assert panels.shape[1] >= 291 and panels.shape[2] > 3 * 291
    strips = visualization.side_by_side(images, gt, pred, COLOURS, 10)
    for index in range(2):
        np.testing.assert_array_equal(
            panels[index, :291, :3 * 291],
            visualization.enlarge(strips[index], 291))
    legends = panels[:, :, 3 * 291:]
    # Image 0 shows apple (gt) and sky; image 1 only sky.
    assert np.all(legends[0] == COLOURS[1], axis=-1).any()
    assert not np.all(legends[1] == COLOURS[1], axis=-1).any()
    assert np.all(legends[1] == COLOURS[2], axis=-1).any()
