"""Weights of the flat-layout CTR models, transplanted into the composed ones, compute the same function.

tests/fixtures/make_ctr_transplant_fixtures.py wrote, with the flat-layout model code, every registered
CTR model's checkpoint weights (keyed by their ``.weights.h5`` paths), inputs, probabilities and loss.
Each test builds the model with the current classes, maps every saved path to its composed path with the
table below (written out here, checked against ``tfmoe.models.ctr.checkpoints``), loads the weights and
compares: checkpoints of runs started on the flat layout keep their meaning.
"""

from __future__ import annotations

import pathlib
import sys

import h5py
import keras
import numpy as np
import pytest

from tfmoe.models import registry
from tfmoe.models.ctr import checkpoints

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from make_ctr_transplant_fixtures import model_options  # noqa: E402

NAMES = sorted(p.stem for p in (FIXTURES / "transplant_ctr").glob("*.npz"))
SHORT = {"din": "target_attention", "transact": "trans_act_encoder", "twin": "twin_attention"}


def flat_to_composed(name: str) -> dict:
    """``{flat prefix: composed prefix}`` of registered model ``name``."""
    family, _, backbone = name.rpartition("_")
    common = {"embedding/": "embedding/", "head/": "head/", "interaction/": "interaction/"}
    if family == "":
        return {**common, "backbone/": "interest/encoder/"}
    if family in ("gshard", "expert_choice"):
        router = "top_k_router" if family == "gshard" else "expert_choice_router"
        return {**common, "experts/": "interest/experts/", f"layers/{router}/": "interest/router/"}
    return {**common, "grouper/": "interest/grouper/", "layers/session_theme_router/": "interest/theme_router/",
            "layers/expert_set/": "interest/theme_experts/", f"layers/{SHORT[backbone]}/": "interest/short_backbone/",
            "global_expert/": "interest/global_backbone/", "fusion/": "interest/fusion/"}


def composed(name: str, path: str) -> str:
    matches = [(old, new) for old, new in flat_to_composed(name).items() if path.startswith(old)]
    assert len(matches) == 1, (name, path, matches)
    old, new = matches[0]
    return new + path[len(old):]


def saved(name: str):
    data = np.load(FIXTURES / "transplant_ctr" / f"{name}.npz")
    weights = {key[len("weight:"):]: data[key] for key in data.files if key.startswith("weight:")}
    features = {key[len("input:"):]: data[key] for key in data.files if key.startswith("input:")}
    return weights, features, data


def write_h5(path, weights: dict) -> None:
    with h5py.File(path, "w") as file:
        for key, value in weights.items():
            file.create_dataset(key, data=value)


def new_model(name: str):
    keras.utils.set_random_seed(123)  # other initial values than the fixture's: every weight must be loaded
    return registry.build_model(name, **model_options(name))


def assert_same_function(model, features, data):
    np.testing.assert_allclose(np.asarray(model.probabilities(features)), data["probabilities"], rtol=1e-5,
                               atol=1e-5)
    loss = float(model.compute_loss(features, data["labels"], training=False))
    np.testing.assert_allclose(loss, float(data["loss"]), rtol=1e-5, atol=1e-5)


def test_every_registered_ctr_model_has_a_fixture():
    assert NAMES == registry.available_models("ctr")


@pytest.mark.parametrize("name", NAMES)
def test_transplanted_weights_give_the_saved_probabilities_and_loss(name, tmp_path):
    weights, features, data = saved(name)
    model = new_model(name)
    mapping = {path: composed(name, path) for path in weights}
    assert mapping == checkpoints.composed_paths(model, list(weights))
    model.save_weights(str(tmp_path / "fresh.weights.h5"))
    with h5py.File(tmp_path / "fresh.weights.h5", "r") as file:
        fresh = checkpoints.read_datasets(file)
    assert sorted(mapping.values()) == sorted(fresh), "the mapping covers exactly the composed model's weights"
    write_h5(tmp_path / "composed.weights.h5", {mapping[path]: value for path, value in weights.items()})
    model.load_weights(str(tmp_path / "composed.weights.h5"))
    assert_same_function(model, features, data)


@pytest.mark.parametrize("name", ["din", "mos_twin", "gshard_transact", "expert_choice_din"])
def test_load_weights_reads_a_flat_layout_checkpoint(name, tmp_path):
    weights, features, data = saved(name)
    write_h5(tmp_path / "flat.weights.h5", weights)
    model = new_model(name)
    model.load_weights(str(tmp_path / "flat.weights.h5"))
    assert_same_function(model, features, data)
    model.save_weights(str(tmp_path / "again.weights.h5"))  # written in the composed layout, and read back
    with h5py.File(tmp_path / "again.weights.h5", "r") as file:
        assert not checkpoints.is_flat_layout(file)
    other = new_model(name)
    other.load_weights(str(tmp_path / "again.weights.h5"))
    assert_same_function(other, features, data)
