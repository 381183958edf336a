"""Colour panoptic maps and image | ground truth | prediction panels."""

import numpy as np
import tensorflow as tf

from max_deeplab_tf.training import visualization


def test_default_colormap_is_distinct():
    colours = visualization.default_colormap(64)
    assert colours.shape == (64, 3) and colours.dtype == np.uint8
    assert len({tuple(c) for c in colours}) == 64
    # PASCAL VOC's map: class 1 is (128, 0, 0), class 2 (0, 128, 0).
    assert tuple(colours[1]) == (128, 0, 0)
    assert tuple(colours[2]) == (0, 128, 0)


def test_colorize_classes_instances_and_boundaries():
    divisor = 10
    colormap = np.array([[0, 0, 0], [100, 100, 100], [10, 200, 30]],
                        np.uint8)
    panoptic = np.array([[20, 20, 11, 11],
                         [20, 20, 12, 12],
                         [20, 20, 12, 12]])
    rgb = visualization.colorize_panoptic(panoptic, colormap, divisor)
    assert rgb.shape == (3, 4, 3)
    # Interior stuff pixel: its class colour.
    assert tuple(rgb[2, 0]) == (10, 200, 30)
    # Pixels where the segment changes from the left or the top are white.
    assert tuple(rgb[0, 2]) == (255, 255, 255)
    assert tuple(rgb[1, 2]) == (255, 255, 255)
    # Two instances of class 1 get different colours.
    assert tuple(rgb[0, 3]) != tuple(rgb[2, 3])


def test_side_by_side_and_png_files(tmp_path):
    images = np.full((2, 5, 6, 3), 300.0)  # Clipped to 255.
    gt = np.zeros((2, 4, 4), np.int64)
    pred = np.ones((2, 4, 4), np.int64)
    panels = visualization.side_by_side(
        images, gt, pred, visualization.default_colormap(3), 10)
    assert panels.shape == (2, 4, 12, 3)
    assert (panels[:, :, :4] == 255).all()
    visualization.write_panels(panels, ["a/img1.jpg", "img2"],
                               str(tmp_path), step=7)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["img1_step-7.png", "img2_step-7.png"]
    decoded = tf.io.decode_png((tmp_path / names[0]).read_bytes()).numpy()
    np.testing.assert_array_equal(decoded, panels[0])


def test_eval_panels_fn_draws_readable_panels_with_a_legend():
    from max_deeplab_tf.data import dataset_info
    from max_deeplab_tf.inference import visualization as drawing

    descriptor = dataset_info.get_dataset_descriptor("synthetic_panoptic")
    images = np.zeros((1, 97, 97, 3))
    gt = np.full((1, 97, 97), 4 * 256)  # sky
    pred = np.full((1, 97, 97), 5 * 256)  # ground
    panels = visualization.panels_fn(descriptor)(images, gt, pred)
    np.testing.assert_array_equal(
        panels, drawing.panels(images, gt, pred, descriptor))
    assert panels.shape[1] >= 291 and panels.shape[2] > 3 * 291
    legend = panels[0, :, 3 * 291:]
    for name in ("sky", "ground"):
        colour = descriptor.colormap[descriptor.class_names.index(name)]
        assert np.all(legend == colour, axis=-1).any(), name
