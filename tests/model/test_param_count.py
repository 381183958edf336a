"""Parameter counts of the full MaX-DeepLab-S and -L against deeplab2's.

deeplab2 (commit 64bc1c1) builds, with the COCO configs (134 classes incl.
void, N = 128, D = 128), MaX-DeepLab-S with 77,756,942 trainable parameters
(encoder incl. transformer: 61,726,624; auxiliary semantic decoder:
15,749,344) and MaX-DeepLab-L with 450,871,278. The models are built
symbolically at a 65x65 crop; random initialisation is replaced by zeros to
keep the 450M-parameter build fast (counts depend on shapes only).
"""

import time

import numpy as np
import pytest

import max_deeplab_tf
from tests.model import helpers

DEEPLAB2_COUNTS = {
    "max_deeplab_s": {"total": 77_756_942, "encoder": 61_726_624,
                      "semantic_decoder": 15_749_344},
    "max_deeplab_l": {"total": 450_871_278},
}


@pytest.fixture
def zero_initializers(monkeypatch):
    helpers.use_zero_initializers(monkeypatch)


def _count(variables):
    return int(sum(np.prod(v.shape) for v in variables))


@pytest.mark.parametrize("name", ["max_deeplab_s", "max_deeplab_l"])
def test_parameter_counts_match_deeplab2(name, zero_initializers):
    with open(f"{helpers.REPO_ROOT}/configs/{name}.textproto") as f:
        text = f.read().replace("${TRAIN_SET}", "train").replace(
            "${VAL_SET}", "val")
    config = helpers.parse_config(text)
    start = time.time()
    model = max_deeplab_tf.build_model(config)
    model.build((None, 65, 65, 3))
    seconds = time.time() - start
    counts = {"total": _count(model.trainable_variables)}
    for key, item in model.checkpoint_items.items():
        counts[key] = _count(item.trainable_variables)
    reference = DEEPLAB2_COUNTS[name]
    print(f"\n{name}: built in {seconds:.1f} s (symbolic, 65x65)")
    print(f"{'part':36s}{'ours':>14s}{'deeplab2':>14s}{'diff %':>9s}")
    for key, value in counts.items():
        theirs = reference.get(key)
        if theirs is None:
            print(f"{key:36s}{value:14,d}{'':>14s}{'':>9s}")
        else:
            diff = 100.0 * (value - theirs) / theirs
            print(f"{key:36s}{value:14,d}{theirs:14,d}{diff:9.3f}")
    for key, theirs in reference.items():
        assert abs(counts[key] - theirs) <= 0.005 * theirs, (key, counts[key])
