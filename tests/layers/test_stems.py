"""Tests for max_deeplab_tf.layers.stems."""

import numpy as np

from max_deeplab_tf.layers import stems
from tests.layers import helpers


def test_inception_stem_is_three_convs_with_last_not_activated():
    x = np.random.RandomState(0).normal(size=(1, 9, 9, 3)).astype(np.float32)
    stem = stems.InceptionStem(width_multiplier=0.125)
    assert stem.name == "stem"
    stem(x)
    helpers.randomize_weights(stem)
    out = stem(x, training=False).numpy()
    assert out.shape == (1, 5, 5, 16)
    shapes = [tuple(v.shape) for v in stem.weights if v.path.endswith("kernel")]
    assert shapes == [(3, 3, 3, 8), (3, 3, 8, 8), (3, 3, 8, 16)]
    y = x.astype(np.float64)
    for conv, stride, relu in ((stem._conv1_bn_act, 2, True),
                               (stem._conv2_bn_act, 1, True),
                               (stem._conv3_bn, 1, False)):
        y = helpers.conv2d_reference(y, conv._conv.kernel.numpy(), stride, 1,
                                     1, 1)
        y = helpers.bn_inference(y, conv._batch_norm)
        y = np.maximum(y, 0) if relu else y
    np.testing.assert_allclose(out, y, rtol=1e-4, atol=1e-4)
    assert (out < 0).any()
