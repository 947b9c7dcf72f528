"""The quickstart's Evaluator gate: a model that learned nothing is not blessed, the quickstart's model is.

The gate is TFMA's top-k accuracy, HR@10 over the whole catalogue with seen items not filtered and ties
counted as hits; here it is computed with tfmoe's evaluator in that setting, on the quickstart's data and
with the quickstart's training settings (tfmoe.tfx.config.PipelineConfig), without TFX.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfmoe.commands.quickstart import HR_THRESHOLD
from tfmoe.data import dataset, prepare, synthetic
from tfmoe.metrics import evaluate_ranking
from tfmoe.models import registry
from tfmoe.tfx.config import PipelineConfig
from tfmoe.training import TrainConfig, train


def tfma_hr10(scores_fn, test_ds) -> float:
    return evaluate_ranking(scores_fn, test_ds, filter_seen=False, ks=(10,), mrr_ks=(), ties="optimistic")["HR@10"]


@pytest.mark.slow
@pytest.mark.e2e
def test_the_gate_blesses_the_quickstart_model_and_nothing_that_learned_nothing(tmp_path):
    logs = synthetic.generate(synthetic.preset_config("small", seed=0))  # the quickstart's defaults
    files = synthetic.write_files(logs, str(tmp_path / "logs"))
    prepare.prepare(prepare.PrepareConfig(format="tfmoe-synthetic", inputs=(files[synthetic.INTERACTIONS_FILE],),
                                          output_dir=str(tmp_path / "prepared")))
    settings = PipelineConfig(home=str(tmp_path), synthetic_preset="small", model="sasrec", epochs=10, max_len=50,
                              model_args={"hidden_dim": 32}, strategy="default").train_dict()
    settings.update(output_dir=str(tmp_path / "run"))
    settings["data"]["dir"] = str(tmp_path / "prepared")
    settings["training"]["verbose"] = 0
    config = TrainConfig.from_dict(settings)
    test_ds = dataset.make_dataset(config.data.dir, "test", max_len=config.data.max_len, batch_size=256,
                                   sequence_features=())
    num_items = dataset.read_num_items(config.data.dir)

    untrained = registry.build_model("sasrec", num_items=num_items, max_len=50, hidden_dim=32, seed=1)
    counts = np.zeros(num_items + 1, np.float32)
    for features, _ in test_ds:
        counts += np.bincount(features["seen"].numpy().ravel(), minlength=num_items + 1)
    counts[0] = 0.0
    popularity = tf.constant(counts)
    trained = train(config).model

    untrained_hr = tfma_hr10(untrained.last_scores, test_ds)
    popularity_hr = tfma_hr10(lambda f: tf.tile(popularity[None], [tf.shape(f["history"])[0], 1]), test_ds)
    trained_hr = tfma_hr10(trained.last_scores, test_ds)
    print(f"HR@10 (TFMA): untrained {untrained_hr:.4f}, popularity {popularity_hr:.4f}, trained {trained_hr:.4f}; "
          f"gate {HR_THRESHOLD}")
    assert untrained_hr < HR_THRESHOLD and popularity_hr < HR_THRESHOLD
    assert trained_hr > 2 * HR_THRESHOLD  # blessed with a margin
