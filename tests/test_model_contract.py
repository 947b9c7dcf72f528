"""Every tfmoe model family passes tfmoe.testing's model contract: predict's scores, config round trip, a symbolic
call, weight counts, one fit step, .keras save/load, XLA, mixed bfloat16 reaching every sub-layer, and a 2-replica
MirroredStrategy."""

import keras
import numpy as np
import pytest

from tfmoe.models import registry
from tfmoe.testing import run_model_test

N_ITEMS, N_CATS, L, B = 30, 5, 8, 4

NEXT_ITEM = {"hidden_dim": 8, "num_heads": 2, "inner_dim": 16, "dropout": 0.1}
# name: (options, trainable weights, non-trainable weights)
NEXT_ITEM_MODELS = {
    "sasrec": ({}, 40, 0),
    "fame": ({"num_experts": 2}, 41, 10),
    "hymoerec": ({"num_experts": 4, "k": 2}, 52, 22),
}
CTR = {"embedding_dim": 8, "category_dim": 4, "mlp_units": [8], "dropout": 0.1}
MOS = {"session_length": 2, "num_sessions": 4, "sessions_per_theme": 2, "num_themes": 2, "short_window": 3}
CTR_MODELS = {
    "din": ({}, 10, 0),
    "transact": ({}, 21, 0),
    "twin": ({"backbone_options": {"top_k": 3}}, 11, 0),
    "mos_din": (MOS, 24, 17),
    "gshard_din": ({}, 23, 0),
    "expert_choice_din": ({}, 23, 0),
}


def next_item_data():
    rng = np.random.default_rng(0)
    items = rng.integers(1, N_ITEMS + 1, size=(B, L)).astype("int32")
    items[0, :3] = 0
    items[1, :6] = 0
    labels = np.where(items > 0, items % N_ITEMS + 1, 0).astype("int32")
    return {"history": items}, labels


def ctr_data():
    rng = np.random.default_rng(0)
    lengths = np.array([L, 5, 1, 3])
    real = np.arange(L)[None, :] >= L - lengths[:, None]
    features = {
        "history": np.where(real, rng.integers(1, N_ITEMS + 1, (B, L)), 0).astype("int32"),
        "history_categories": np.where(real, rng.integers(1, N_CATS + 1, (B, L)), 0).astype("int32"),
        "history_length": lengths.astype("int32"),
        "target_item": rng.integers(1, N_ITEMS + 1, B).astype("int32"),
        "target_category": rng.integers(1, N_CATS + 1, B).astype("int32"),
    }
    return features, np.array([1, 0, 1, 0], "float32")


def factory(name, options):
    def make():
        keras.utils.set_random_seed(0)
        if registry.model_task(name) == "next_item":
            return registry.build_model(name, num_items=N_ITEMS, max_len=L, **NEXT_ITEM, **options)
        return registry.build_model(name, num_items=N_ITEMS, max_len=L, num_categories=N_CATS, **CTR, **options)

    return make


@pytest.mark.parametrize("name", list(NEXT_ITEM_MODELS))
def test_next_item_model_contract(name, tmp_path, mirrored_strategy):
    options, trainable, non_trainable = NEXT_ITEM_MODELS[name]
    x, y = next_item_data()
    run_model_test(factory(name, options), x, y, tmp_path=tmp_path, expected_prediction_shape=(B, N_ITEMS + 1),
                   expected_num_trainable_weights=trainable, expected_num_non_trainable_weights=non_trainable,
                   strategy=mirrored_strategy)


@pytest.mark.parametrize("name", list(CTR_MODELS))
def test_ctr_model_contract(name, tmp_path, mirrored_strategy):
    options, trainable, non_trainable = CTR_MODELS[name]
    x, y = ctr_data()
    run_model_test(factory(name, options), x, y, tmp_path=tmp_path, expected_prediction_shape=(B,),
                   expected_num_trainable_weights=trainable, expected_num_non_trainable_weights=non_trainable,
                   policies=("mixed_float16", "mixed_bfloat16"), strategy=mirrored_strategy)


def test_every_model_family_is_covered():
    families = {name.split("_")[0] if name.startswith(("mos_", "gshard_")) else
                "expert_choice" if name.startswith("expert_choice_") else name
                for name in registry.available_models()}
    covered = {name.split("_")[0] if name.startswith(("mos_", "gshard_")) else
               "expert_choice" if name.startswith("expert_choice_") else name
               for name in [*NEXT_ITEM_MODELS, *CTR_MODELS]}
    assert families <= covered, f"model families without a contract test: {sorted(families - covered)}"
