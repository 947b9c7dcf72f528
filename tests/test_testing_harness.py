"""tfmoe.testing catches the defects it exists for: each check fails on a layer or model built to break it, and
the whole contract passes on a correct one."""

import keras
import numpy as np
import pytest

from tfmoe import testing
from tfmoe.testing.model_test import assert_fit_step, assert_model_mixed_precision

X = np.random.default_rng(0).normal(size=(4, 3, 5)).astype("float32")


@keras.saving.register_keras_serializable(package="tfmoe_harness_test")
class Scale(keras.layers.Layer):
    """``y = Dense(units)(x) * factor``, written as the contract wants it (``forget_factor`` breaks its config,
    ``own_dtype`` its dtype propagation, ``claimed_units`` its ``compute_output_shape``)."""

    def __init__(self, units=2, factor=2.0, forget_factor=False, own_dtype=True, claimed_units=None, **kwargs):
        super().__init__(**kwargs)
        self.units, self.factor = units, factor
        self.forget_factor, self.own_dtype, self.claimed_units = forget_factor, own_dtype, claimed_units
        self.dense = keras.layers.Dense(units, dtype=self.dtype_policy if own_dtype else None, name="dense")

    def build(self, input_shape):
        self.dense.build(input_shape)

    def call(self, x):
        return self.dense(x) * self.factor

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.claimed_units or self.units)

    def get_config(self):
        config = {**super().get_config(), "units": self.units, "own_dtype": self.own_dtype,
                  "forget_factor": self.forget_factor, "claimed_units": self.claimed_units}
        if not self.forget_factor:
            config["factor"] = self.factor
        return config


def test_a_correct_layer_passes_the_whole_contract(tmp_path, mirrored_strategy):
    testing.run_layer_test(lambda: Scale(units=2), (X,), tmp_path=tmp_path, expected_output_shape=(4, 3, 2),
                           expected_num_trainable_weights=2, expected_num_non_trainable_weights=0,
                           mirrored=mirrored_strategy)


def test_a_config_that_forgets_an_argument_fails_the_round_trip():
    with pytest.raises(AssertionError):
        testing.assert_config_round_trip(lambda: Scale(factor=3.0, forget_factor=True), (X,))


def test_a_sub_layer_without_the_dtype_policy_is_named():
    with pytest.raises(AssertionError, match=r"sub-layers not under mixed_bfloat16: \['.*dense.*float32"):
        testing.assert_dtype_policy_reaches_sublayers(lambda: Scale(own_dtype=False), (X,))


def test_the_output_dtype_is_checked_under_the_policy():
    testing.assert_dtype_policy_reaches_sublayers(lambda: Scale(), (X,), output_dtype="compute")
    with pytest.raises(AssertionError, match="has dtype bfloat16, expected float32"):
        testing.assert_dtype_policy_reaches_sublayers(lambda: Scale(), (X,), output_dtype="float32")


def test_a_wrong_compute_output_shape_fails():
    # Keras's symbolic call itself uses compute_output_shape, so either message names the wrong shape
    expected = r"symbolic shape \(4, 3, 7\), eager \(4, 3, 2\)|compute_output_shape gives \[\(4, 3, 7\)\]"
    with pytest.raises(AssertionError, match=expected):
        testing.assert_symbolic_call(lambda: Scale(units=2, claimed_units=7), (X,))


def test_weight_counts_and_output_shapes_are_checked():
    layer = Scale()
    layer(X)
    with pytest.raises(AssertionError, match="2 trainable weights, expected 3"):
        testing.assert_weight_counts(layer, trainable=3)
    with pytest.raises(AssertionError, match=r"output shapes \[\(4, 3, 2\)\], expected \[\(4, 3, 3\)\]"):
        testing.run_layer_test(lambda: Scale(), (X,), expected_output_shape=(4, 3, 3))


def test_mixed_precision_tolerance_is_the_unit_roundoff_times_the_roundings():
    assert testing.mixed_precision_tolerance("mixed_float16", roundings=1) == 2.0**-11
    assert testing.mixed_precision_tolerance("mixed_bfloat16") == 8 * 2.0**-8
    with pytest.raises(ValueError, match="got 'float32'"):
        testing.mixed_precision_tolerance("float32")


@keras.saving.register_keras_serializable(package="tfmoe_harness_test")
class TinyScorer(keras.Model):
    """Mean-pools item embeddings and scores every item; ``unused`` Dense layers that ``call`` never reaches make
    weights that no gradient moves."""

    def __init__(self, num_items=6, unused=0, **kwargs):
        super().__init__(**kwargs)
        self.num_items, self.unused = num_items, unused
        self.embedding = keras.layers.Embedding(num_items, 4, dtype=self.dtype_policy, name="embedding")
        self.head = keras.layers.Dense(num_items, dtype=self.dtype_policy, name="head")
        self.extra = keras.layers.Dense(4, dtype=self.dtype_policy, name="extra")
        self.spare = [keras.layers.Dense(4, dtype=self.dtype_policy, name=f"spare_{i}") for i in range(unused)]
        for layer in self.spare:
            layer.build((None, 4))

    def call(self, features, training=None):
        return self.head(self.extra(keras.ops.mean(self.embedding(features["history"]), axis=1)))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y, keras.ops.cast(y_pred, "float32"),
                                                                           from_logits=True))

    def predict_step(self, data):
        x = data[0] if isinstance(data, tuple) else data
        return keras.ops.cast(self(x, training=False), "float32")

    def get_config(self):
        return {**super().get_config(), "num_items": self.num_items, "unused": self.unused}


FEATURES = {"history": np.array([[1, 2, 3], [2, 3, 4], [0, 1, 5], [3, 3, 1]], "int32")}
TARGETS = np.array([4, 5, 1, 2], "int32")


def test_a_correct_model_passes_the_whole_contract(tmp_path, mirrored_strategy):
    testing.run_model_test(lambda: TinyScorer(), FEATURES, TARGETS, tmp_path=tmp_path,
                           expected_prediction_shape=(4, 6), expected_num_trainable_weights=5,
                           expected_num_non_trainable_weights=0, strategy=mirrored_strategy)


def test_a_fit_step_that_moves_too_few_weights_fails():
    with pytest.raises(AssertionError, match=r"moved only 5 of 11 trainable weights: unmoved \['spare_0/kernel'"):
        assert_fit_step(lambda: TinyScorer(unused=3), FEATURES, TARGETS)


def test_a_model_whose_sub_layer_ignores_the_policy_fails_mixed_precision():
    class Careless(TinyScorer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.head = keras.layers.Dense(self.num_items, name="head")

    expected = r"Careless: sub-layers not under mixed_bfloat16: \['careless/head \(Dense, float32\)'\]"
    with pytest.raises(AssertionError, match=expected):
        assert_model_mixed_precision(lambda: Careless(), FEATURES)
