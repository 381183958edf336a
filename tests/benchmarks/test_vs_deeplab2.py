"""benchmarks/vs_deeplab2.py: the float32 floor of the forward pass."""

import importlib.util
import os

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO_ROOT, "benchmarks", "vs_deeplab2.py")


@pytest.fixture(name="bench")
def _bench_module():
    spec = importlib.util.spec_from_file_location("vs_deeplab2_bench",
                                                  SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows():
    """Two rounds of forward641 rows as the children report them; round 1
    of ours failed."""
    timings = {"forward_post_s": 1.0, "forward_first_s": 5.0,
               "peak_rss_mib": 1000.0}
    rows = [
        {"label": "forward:ours", "round": 0, "forward_s": 0.90,
         "forward_gflop": 256.0, "matmul_gflops": 400.0,
         "load_before": 1.0, "load_after": 1.2},
        {"label": "forward:deeplab2", "round": 0, "forward_s": 0.80,
         "load_before": 0.9, "load_after": 1.1},
        {"label": "forward:ours", "round": 1, "error": "timed out",
         "load_before": 2.0},
        {"label": "forward:deeplab2", "round": 1, "forward_s": 1.00,
         "load_before": 1.3, "load_after": 1.4},
    ]
    return [dict(timings, **row) if "error" not in row else row
            for row in rows]


def test_forward_floor_is_flops_over_the_matmul_rate(bench):
    table = bench.summarise(_rows(), rounds=2)
    floor = table["forward641_float32_floor"]
    # 256 GFLOP at 400 GFLOP/s: 0.64 s, against deeplab2's 0.80 s of the
    # same round; round 1 has no figures of ours.
    assert floor["ours"] == [pytest.approx(0.64)]
    assert floor["deeplab2"] == [0.80]
    assert floor["ratio_per_round"] == [pytest.approx(0.8)]
    assert floor["ratio_of_medians"] == pytest.approx(0.8)
    assert floor["load_average_range"] == [0.9, 1.2]
    # The measured forward pass row is still there: 0.90 / 0.80.
    assert table["forward641"]["ratio_of_medians"] == pytest.approx(1.125)


def test_no_floor_without_forward_rows(bench):
    table = bench.summarise([
        {"label": "train:ours:xla_off", "round": 0, "step_s": 1.0,
         "first_step_s": 5.0, "import_s": 1.0, "build_s": 1.0,
         "peak_rss_mib": 100.0, "load_before": 1.0, "load_after": 1.0},
        {"label": "train:deeplab2", "round": 0, "step_s": 2.0,
         "first_step_s": 10.0, "import_s": 1.0, "build_s": 1.0,
         "peak_rss_mib": 200.0, "load_before": 1.0, "load_after": 1.0}],
        rounds=1)
    assert "forward641_float32_floor" not in table
    assert table["train_step"]["ratio_of_medians"] == pytest.approx(0.5)
