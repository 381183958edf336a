"""benchmarks/gpu.py: the batch-size search, MFU and the no-GPU exit."""

import importlib.util
import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO_ROOT, "benchmarks", "gpu.py")


@pytest.fixture(name="gpu")
def _gpu_module():
    spec = importlib.util.spec_from_file_location("gpu_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


XLA_OUT_OF_MEMORY = ("RESOURCE_EXHAUSTED: Out of memory while trying to "
                     "allocate 12.50GiB.")
TF_OUT_OF_MEMORY = ("tensorflow.python.framework.errors_impl."
                    "ResourceExhaustedError: OOM when allocating tensor")


def _fake_runs(gpu, monkeypatch, fits_up_to, other_error=None,
               out_of_memory=TF_OUT_OF_MEMORY):
    """Children that run out of memory above `fits_up_to` images."""
    calls = []

    def run(command, timeout):
        batch = int(next(a for a in command if a.startswith("--batch_size="))
                    .split("=")[1])
        calls.append(batch)
        if other_error:
            return None, other_error
        if batch > fits_up_to:
            return None, "Traceback ...\n" + out_of_memory
        return {"batch_size": batch, "images_per_s": 10.0 * batch}, None

    monkeypatch.setattr(gpu, "_run", run)
    return calls


@pytest.mark.parametrize("out_of_memory", [TF_OUT_OF_MEMORY,
                                           XLA_OUT_OF_MEMORY])
def test_largest_batch_that_fits_is_measured_with_its_mfu(gpu, monkeypatch,
                                                          out_of_memory):
    calls = _fake_runs(gpu, monkeypatch, fits_up_to=16,
                       out_of_memory=out_of_memory)
    args = gpu.argparse.Namespace(batch_sizes="48,32,16,8", crop=641,
                                  steps=3, timeout=10)
    row = gpu._train(args, "mixed_bfloat16", "on", forward_flops=2e11,
                     peak=1000.0)
    assert calls == [48, 32, 16]  # 8 is not tried once 16 fits
    assert row["batch_size"] == 16
    assert row["batch_sizes_out_of_memory"] == [48, 32]
    # 3 x 2e11 FLOPs an image x 160 images/s against 1000 TFLOPS.
    assert row["model_tflops_per_s"] == pytest.approx(96.0)
    assert row["mfu"] == pytest.approx(0.096)


def test_other_failures_stop_the_search_with_their_last_line(gpu,
                                                             monkeypatch):
    calls = _fake_runs(gpu, monkeypatch, fits_up_to=64,
                       other_error="Traceback ...\nValueError: bad config\n")
    args = gpu.argparse.Namespace(batch_sizes="32,16", crop=641, steps=3,
                                  timeout=10)
    assert gpu._train(args, "float32", "off", 1.0, 1.0) == {
        "error": "ValueError: bad config"}
    assert calls == [32]
    calls = _fake_runs(gpu, monkeypatch, fits_up_to=4)
    assert gpu._train(args, "float32", "off", 1.0, 1.0) == {
        "error": "out of memory at every batch size [32, 16]"}


def test_peak_rates_by_device_name(gpu):
    assert gpu._peak_tflops("NVIDIA H200", "float32", {}) == 494.0
    assert gpu._peak_tflops("NVIDIA H200", "mixed_bfloat16", {}) == 989.0
    assert gpu._peak_tflops("NVIDIA L4", "float32", {}) is None
    assert gpu._peak_tflops("NVIDIA L4", "float32", {"L4": 120.0}) == 120.0


def test_without_a_gpu_it_stops_with_one_line():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    out = subprocess.run([sys.executable, SCRIPT], capture_output=True,
                         text=True, env=env, timeout=300, cwd=REPO_ROOT)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "error: no GPU visible to TensorFlow; this script measures a GPU "
        "(--allow_cpu runs its steps on the CPU as a smoke run)"]
