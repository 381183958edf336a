"""Learning-rate schedules against their closed forms."""

import math

import keras
import numpy as np
import pytest

from max_deeplab_tf.optimizers import LinearWarmup
from max_deeplab_tf.optimizers import build_learning_rate_schedule
from max_deeplab_tf.protos import trainer_pb2


def solver(**fields):
    options = trainer_pb2.SolverOptions()
    for name, value in fields.items():
        setattr(options, name, value)
    return options


def poly_truth(step, base, total, power, end, warmup):
    if step < warmup:
        return base * step / warmup
    p = min(step, total) / total
    return (base - end) * (1 - p) ** power + end


@pytest.mark.parametrize("step", [0, 1, 50, 99, 100, 101, 500, 999, 1000, 1500])
def test_poly_with_warmup(step):
    options = solver(base_learning_rate=0.001, training_number_of_steps=1000,
                     warmup_steps=100, poly_learning_power=0.9,
                     poly_end_learning_rate=1e-5, learning_policy="poly")
    schedule = build_learning_rate_schedule(options)
    assert float(schedule(step)) == pytest.approx(
        poly_truth(step, 0.001, 1000, 0.9, 1e-5, 100), rel=1e-5, abs=1e-12)


@pytest.mark.parametrize("step", [0, 10, 250, 999, 1000, 2000])
def test_cosine_without_warmup_and_multiplier(step):
    options = solver(base_learning_rate=0.002, training_number_of_steps=1000,
                     learning_policy="cosine")
    schedule = build_learning_rate_schedule(options, multiplier=0.1)
    truth = 0.0002 * 0.5 * (1 + math.cos(math.pi * min(step, 1000) / 1000))
    # float32 arithmetic: absolute error relative to the peak rate.
    assert float(schedule(step)) == pytest.approx(truth, rel=1e-5,
                                                  abs=0.0002 * 1e-6)


def test_warmup_ramp_is_continuous_with_decay():
    options = solver(base_learning_rate=0.01, training_number_of_steps=100,
                     warmup_steps=10)
    schedule = build_learning_rate_schedule(options)
    values = np.array([float(schedule(s)) for s in range(0, 12)])
    np.testing.assert_allclose(values[:10], 0.01 * np.arange(10) / 10,
                               rtol=1e-6)
    assert values[10] == pytest.approx(0.01 * (1 - 0.1) ** 0.9, rel=1e-5)


def test_errors_name_the_field():
    with pytest.raises(ValueError, match="learning_policy"):
        build_learning_rate_schedule(solver(learning_policy="step"))
    with pytest.raises(ValueError, match="training_number_of_steps"):
        build_learning_rate_schedule(solver(training_number_of_steps=0))


def test_serialises():
    schedule = build_learning_rate_schedule(
        solver(training_number_of_steps=100, warmup_steps=5))
    clone = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(schedule))
    assert isinstance(clone, LinearWarmup)
    for step in (0, 3, 5, 50):
        assert float(clone(step)) == pytest.approx(float(schedule(step)))
