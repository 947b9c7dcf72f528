"""benchmarks/train_speed.py: a tiny synthetic run writes a valid record whose ratios are the epoch-time quotients,
tfmoe's SASRec and the keras-hub SASRec train on the same batches, and the FLOP counter matches hand counts."""

import doctest
import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import records, train_speed  # noqa: E402
from tfmoe.utils import flops  # noqa: E402

TINY = {"max_len": 20, "batch_size": 32, "bucket_boundaries": [5, 10], "ctr_max_len": 50, "ctr_batch_size": 32,
        "mos": {"session_length": 5, "num_themes": 4, "sessions_per_theme": 3, "short_window": 10}}


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    from tfmoe.utils.devices import quiet_tensorflow

    quiet_tensorflow()
    root = tmp_path_factory.mktemp("records")
    return train_speed.run(epochs=2, users=64, synthetic=True, overrides=TINY, matmul={"size": 128, "repeats": 2},
                           out_records=str(root), command=["benchmarks/train_speed.py", "--test"])


@pytest.mark.slow
def test_the_record_holds_every_model_and_its_ratios_are_epoch_time_quotients(record):
    saved = records.read_record(record["path"])
    assert saved["benchmark"] == "train_speed" and saved["variant"] == "synthetic" and not saved["partial"]
    metrics = saved["metrics"]
    assert set(metrics["models"]) == set(train_speed.MODELS) == set(saved["config"]["models"])
    times = {name: r["epoch_time_s"] for name, r in metrics["models"].items()}
    for key, (slower, faster) in train_speed.RATIOS.items():
        if slower not in times:  # TWIN's models run on request only
            assert metrics[key] is None and "twin" in slower
            continue
        assert metrics[key] > 0
        assert metrics[key] == pytest.approx(times[slower] / times[faster], rel=1e-12)
    for r in metrics["models"].values():
        assert len(r["epoch_times_s"]) == 2
        assert r["epoch_time_s"] == pytest.approx(r["epoch_times_s"][1], abs=1e-4)
        assert r["train_flops_per_epoch"] > 0 and r["gflops_per_s"] > 0
        assert r["gflops_per_s"] == pytest.approx(r["train_flops_per_epoch"] / r["epoch_time_s"] / 1e9)
        peak = metrics["matmul_peak"]
        assert r["peak_fraction_fp32"] == pytest.approx(r["gflops_per_s"] / peak["float32"]["gflops_per_s"])
        assert r["peak_fraction_bf16"] == pytest.approx(r["gflops_per_s"] / peak["bfloat16"]["gflops_per_s"])
    assert len(metrics["load_average_before"]) == 3 and len(metrics["load_average_after"]) == 3
    assert metrics["load_warning"] == (metrics["load_average_before"][0] > train_speed.SETTINGS["max_load"])
    assert {"tensorflow", "keras", "keras_hub"} <= set(metrics["environment"])
    assert saved["machine"]["tensorflow"] and saved["machine"]["keras"]
    assert "sasrec_speedup_over_keras_hub" in train_speed.summary(saved)


@pytest.mark.slow
def test_the_report_shows_the_record(record):
    from benchmarks import report

    saved = records.read_record(record["path"])
    text = report.render([saved])
    assert "## Training speed: synthetic" in text and "| sasrec_peer |" in text and "| mos_din_over_din_time |" in text


@pytest.mark.slow
def test_tfmoe_and_keras_hub_sasrec_train_on_the_same_batches(record):
    models = record["metrics"]["models"]
    ours, theirs = models["sasrec_peer"], models["keras_hub_sasrec"]
    assert ours["steps_per_epoch"] == theirs["steps_per_epoch"] == [2, 2]  # 64 users, batches of 32
    assert ours["sequences_per_epoch"] == theirs["sequences_per_epoch"] == 64
    assert ours["batches"] == theirs["batches"]
    assert ours["train_flops_per_epoch"] == theirs["train_flops_per_epoch"]
    for name in train_speed.MAIN_MODELS:  # the main models share their batches too
        assert models[name]["batches"] == models["sasrec"]["batches"]
    for name in train_speed.ctr_family("din"):  # so do DIN, MoS-DIN and the MoE baselines
        assert models[name]["batches"] == models["din"]["batches"]
    # the models in length groups count the work they do: each group's rows (MoS: its global expert's; the
    # baselines: their routing and expert buffers) at the group's width, less than padded
    for name in ("din", "mos_din", "gshard_din", "expert_choice_din"):
        assert 0 < models[f"{name}_length_groups"]["train_flops_per_epoch"] < models[name]["train_flops_per_epoch"]
    for name, r in models.items():
        batch = record["config"]["models"][name]["batch_size"]
        assert all(steps * batch == r["sequences_per_epoch"] for steps in r["steps_per_epoch"]), name


@pytest.mark.parametrize("backbone", ["din", "twin"])
def test_the_moe_baselines_are_the_backbone_with_their_routing_at_the_same_length_and_batches(backbone):
    configs = train_speed.model_configs(3416)
    alone = configs[backbone]
    assert alone["max_len"] == 1000
    assert alone["options"] == {"embedding_dim": 64, "mlp_units": [200, 80], "dropout": 0.1,
                                **({"backbone_options": {"top_k": 50}} if backbone == "twin" else {})}
    routing = {f"gshard_{backbone}": {"num_experts": 8, "k": 2, "capacity_factor": 1.25, "load_balance_weight": 0.01},
               f"expert_choice_{backbone}": {"num_experts": 8, "capacity_factor": 2.0}}
    for name, options in routing.items():
        config = configs[name]
        assert config["options"] == {**alone["options"], **options}
        assert {k: config[k] for k in ("max_len", "batch_size", "optimizer", "num_items")} == {
            k: alone[k] for k in ("max_len", "batch_size", "optimizer", "num_items")}
        assert train_speed.arrays_key(name, config) == train_speed.arrays_key("din", configs["din"])  # same batches
    mos = configs[f"mos_{backbone}"]["options"]
    assert mos["num_themes"] == 8  # as many themes as the baselines have experts
    assert mos.get("backbone_options") == alone["options"].get("backbone_options")
    for name in (backbone, f"mos_{backbone}", *routing):  # the same model, options and batches, in length groups
        grouped = configs[f"{name}_length_groups"]
        assert grouped["model"] == name and grouped["options"] == {**configs[name]["options"], "length_groups": 8}
        assert train_speed.arrays_key(f"{name}_length_groups", grouped) == train_speed.arrays_key("din", alone)
        assert train_speed.RATIOS[f"{name}_length_groups_speedup"] == (name, f"{name}_length_groups")
    assert train_speed.RATIOS[f"mos_{backbone}_over_{backbone}_length_groups_time"] == (
        f"mos_{backbone}_length_groups", f"{backbone}_length_groups")
    assert train_speed.RATIOS[f"gshard_{backbone}_over_{backbone}_time"] == (f"gshard_{backbone}", backbone)
    assert train_speed.RATIOS[f"expert_choice_{backbone}_over_{backbone}_time"] == (f"expert_choice_{backbone}",
                                                                                    backbone)
    for name in routing:
        assert train_speed.RATIOS[f"{name}_over_{backbone}_length_groups_time"] == (
            f"{name}_length_groups", f"{backbone}_length_groups")
    assert (backbone in train_speed.MODELS) == (backbone == "din")  # TWIN's models run on request


def test_the_flop_counter_matches_hand_counts():
    assert doctest.testmod(train_speed, optionflags=doctest.ELLIPSIS).failed == 0
    # FAME: L 2, d 4, 2 heads of d' 2, 2 expert queries; block 1 plain (f 4), block 2 the facet block (FFN' 2 -> 2)
    parts = train_speed.sequence_model_flops(2, 4, 2, 4, 2, num_items=4, loss="softmax", scored_positions=1,
                                             facet_experts=2)
    mm = flops.matmul_flops
    assert parts["attention_projections"] == 4 * mm(2, 4, 4) + 4 * mm(2, 4, 4)  # Q K V O; 2 Q + K V
    assert parts["attention_scores"] == parts["attention_weighted_sums"] == mm(2, 4, 2) + 2 * mm(2, 4, 2)
    assert parts["routers"] == 2 * mm(2, 2 * 2, 2)
    assert parts["ffn"] == 2 * mm(2, 4, 4) + 2 * 2 * mm(2, 2, 2)
    assert parts["facet_head"] == mm(2, 4, 2) + mm(2, 4, 4)
    assert parts["scoring"] == mm(1, 4, 5) and parts["embeddings"] == 8
    assert parts["total"] == 1104


def test_moe_experts_count_the_routed_rows_of_the_dense_count():
    moe = {"num_experts": 4, "k": 2, "expert_hidden_dim": 16}
    parts = train_speed.sequence_model_flops(10, 8, 1, 8, num_items=5, loss="bce", scored_positions=10, moe=moe)
    dense = flops.moe_ffn_forward_flops("dense_4", 10, 8, 16, 4, 2, 1.0)
    assert parts["experts"] == dense["experts"] * 2 / 4
    assert parts["routers"] == dense["router"]


def test_the_peer_sasrec_costs_about_half_a_teraflop_per_ml1m_epoch():
    forward = train_speed.sequence_model_flops(200, 50, 2, 50, num_items=3416, loss="bce", scored_positions=200)
    assert 0.45e12 < 3 * forward["total"] * 6040 < 0.55e12


def test_batches_are_shifted_left_padded_and_full():
    sequences = [np.arange(1, 8), np.arange(10, 14), np.arange(20, 23)]  # the last is too short to train on
    arrays = train_speed.next_item_arrays(sequences, max_len=6, batch_size=4)
    assert arrays["history"].tolist() == [[0, 0, 1, 2, 3, 4], [0, 0, 0, 0, 0, 10]] * 2
    assert arrays["labels"].tolist() == [[0, 0, 2, 3, 4, 5], [0, 0, 0, 0, 0, 11]] * 2
    negatives = train_speed.uniform_negatives(np.array([[0, 1, 2, 3]] * 200), 3, seed=0)
    assert (negatives[:, 0] == 0).all() and (negatives[:, 1:] != np.array([1, 2, 3])).all()
    assert set(np.unique(negatives[:, 1:])) == {1, 2, 3}
    ctr = train_speed.ctr_arrays(sequences, 30, max_len=5, batch_size=4, samples_per_user=1, seed=0)
    assert ctr["labels"].tolist() == [1, 0, 1, 0]
    assert ctr["history"][0].tolist() == [0, 1, 2, 3, 4] and ctr["target_item"][0] == 5
    assert ctr["target_item"][1] != 5


def test_ratios_and_steady_time():
    assert train_speed.steady_time([10.0, 1.0, 3.0]) == 2.0
    out = train_speed.ratios({"sasrec": 2.0, "fame": 3.0})
    assert out["fame_over_sasrec_time"] == 1.5 and out["sasrec_speedup_over_keras_hub"] is None
    with pytest.raises(SystemExit):
        train_speed.main(["--epochs", "1"])


def test_bucketed_batches_hold_every_row_once_cut_to_its_bucket():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 21, 70)
    history = np.zeros((70, 20), np.int32)
    for row, n in enumerate(lengths):
        history[row, 20 - n:] = rng.integers(1, 50, n)
    labels = np.roll(history, -1, axis=1) * (history > 0)
    batches = train_speed.bucketed_batches(history, labels, [5, 10], batch_size=8, seed=0)
    seen = sorted(tuple(row[row > 0]) for h, _ in batches for row in h)
    assert seen == sorted(tuple(row[row > 0]) for row in history)  # every row once, nothing cut off
    for h, y in batches:
        real = np.count_nonzero(h, axis=1)
        bound = h.shape[1]
        assert bound in (5, 10, 20) and len(h) <= 8 and h.shape == y.shape
        assert np.all(real <= bound) and np.all(real > {5: 0, 10: 5, 20: 10}[bound])


def test_profile_breakdown_doctests():
    from benchmarks import profile_train_step

    assert doctest.testmod(profile_train_step).failed == 0


def test_profile_breakdown_attributes_mos_parts_and_lists_the_unattributed_scopes():
    from benchmarks import profile_train_step

    times = [("StatefulPartitionedCall/mo_sdin/interest/sessions/GatherV2:GatherV2", 2.0),
             ("StatefulPartitionedCall/gradient_tape/mo_sdin/interest/theme_experts/din/MatMul:_MklMatMul", 1.0),
             ("StatefulPartitionedCall/gradient_tape/mo_sdin/interest/strided_slice_4/Grad:StridedSliceGrad", 0.5),
             ("StatefulPartitionedCall/mo_sdin/interest/strided_slice_4/Slice:StridedSlice", 0.25),
             ("StatefulPartitionedCall/adam/Sqrt:Sqrt", 0.25)]
    result = profile_train_step.breakdown(times)
    assert result["total_ms"] == 4.0
    assert result["by_part"] == {"MoS session grid": 0.5, "backward MoS theme experts": 0.25, "backward other": 0.125,
                                 "other": 0.0625, "optimizer": 0.0625}
    assert result["other_scopes"] == {"mo_sdin/interest/strided_slice_4": 0.1875}
    assert result["by_op_type"]["GatherV2"] == 0.5


@pytest.mark.slow
def test_a_profiled_step_is_attributed_to_the_models_parts():
    from benchmarks import profile_train_step

    result, steps = profile_train_step.profile("sasrec_peer", users=64, synthetic=True, overrides=TINY)
    assert steps == 2 and result["total_ms"] > 0
    assert sum(result["by_part"].values()) == pytest.approx(1.0)
    # forward and backward attention, the optimizer and the dropouts all ran and were recognised by name
    assert {"attention", "backward attention", "optimizer", "dropout"} <= set(result["by_part"])
    assert result["by_part"].get("other", 0.0) < 0.5
