"""The TFX pipeline: knobs, run_fn, serving export, TFMA config, anomalies, Kubeflow V2 compile,
and the whole flow through the real ``tfx`` CLI (``tfx pipeline create`` + ``tfx run create``).

The end-to-end test runs the CLI twice on tiny synthetic data: the first run must execute every
component, bless and push a model that the model server then serves over gRPC; the second run,
with an impossible HR@10 threshold, must take every unchanged component from the cache (MLMD
state ``CACHED``), re-evaluate, refuse the blessing and push nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tfmoe.tfx.config import PipelineConfig, from_args

pytestmark = pytest.mark.tfx

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PIPELINE_FILE = ROOT / "pipelines" / "moe_pipeline.py"
TINY = {"TFMOE_SYNTHETIC_PRESET": "tiny", "TFMOE_EPOCHS": "1", "TFMOE_MAX_LEN": "20",
        "TFMOE_MODEL_ARGS": json.dumps({"hidden_dim": 16, "num_blocks": 1})}


# ---- knobs -------------------------------------------------------------------------------------

def test_config_reads_the_environment_and_flags_win(tmp_path):
    env = {"TFMOE_HOME": str(tmp_path), "TFMOE_MODEL": "fame", "TFMOE_EPOCHS": "3", "TFMOE_HR_THRESHOLD": "0.2",
           "TFMOE_TRAIN_OVERRIDES": "optimizer.learning_rate=0.01; training.early_stopping.patience=2",
           "TFMOE_ENABLE_CACHE": "0", "TFMOE_DATA": "a.csv, b.csv", "TFMOE_MODEL_ARGS": '{"hidden_dim": 32}'}
    config = PipelineConfig.from_env(env)
    assert config.pipeline_name == "tfmoe-fame"
    assert config.pipeline_root == str(tmp_path / "pipeline_root" / "tfmoe-fame")
    assert config.metadata_path == str(tmp_path / "metadata" / "tfmoe-fame.db")
    assert config.serving_model_dir == str(tmp_path / "serving" / "recs")
    assert config.data == (os.path.abspath("a.csv"), os.path.abspath("b.csv"))
    assert (config.epochs, config.hr_threshold, config.enable_cache) == (3, 0.2, False)
    assert config.train_overrides == ("optimizer.learning_rate=0.01", "training.early_stopping.patience=2")
    train = config.train_dict()
    assert train["model"] == {"hidden_dim": 32, "name": "fame"}
    assert train["training"] == {"epochs": 3, "seed": 0, "strategy": "mirrored", "verbose": 2,
                                 "early_stopping": {"patience": 2}}
    assert train["optimizer"] == {"learning_rate": 0.01}
    assert train["data"] == {"max_len": 50, "batch_size": 128}

    flagged = from_args(["--model", "sasrec", "--epochs", "5", "--set", "training.seed=4", "--no-cache",
                         "--runner", "kubeflow_v2", "--beam-arg=--direct_num_workers=2"], environ=env)
    assert (flagged.model, flagged.epochs, flagged.hr_threshold) == ("sasrec", 5, 0.2)
    assert flagged.train_overrides == ("training.seed=4",)
    assert flagged.runner == "kubeflow_v2" and flagged.beam_args == ("--direct_num_workers=2",)
    assert flagged.resolved_task() == "next_item"


def test_config_base_file_is_overridden_by_knobs(tmp_path):
    base = tmp_path / "train.yaml"
    base.write_text("model: {name: fame, hidden_dim: 8}\noptimizer: {learning_rate: 0.005}\ntraining: {epochs: 99}\n")
    train = PipelineConfig(home=str(tmp_path), model="sasrec", train_config=str(base), epochs=2).train_dict()
    assert train["optimizer"] == {"learning_rate": 0.005}
    assert train["model"] == {"name": "sasrec", "hidden_dim": 8}
    assert train["training"]["epochs"] == 2
    from_file = PipelineConfig(home=str(tmp_path), train_config=str(base), max_len=30,
                               train_overrides=("data.max_len=40",))
    train = from_file.train_dict()
    assert (train["training"]["epochs"], train["training"]["strategy"]) == (99, "mirrored")  # file, then default
    assert train["model"] == {"name": "sasrec", "hidden_dim": 8} and train["data"]["batch_size"] == 128
    assert train["data"]["max_len"] == 40 == from_file.effective_max_len  # overrides go last


@pytest.mark.parametrize("env, message", [
    ({"TFMOE_EPOCHS": "0"}, "`epochs` must be an integer >= 1, got 0"),
    ({"TFMOE_EPOCHS": "many"}, "bad value of TFMOE_EPOCHS='many'"),
    ({"TFMOE_TASK": "rank"}, "`task` must be one of ('next_item', 'ctr')"),
    ({"TFMOE_RUNNER": "airflow"}, "`runner` must be one of ('local', 'kubeflow_v2')"),
    ({"TFMOE_MODEL_ARGS": "[1]"}, "bad value of TFMOE_MODEL_ARGS"),
    ({"TFMOE_TRAIN_OVERRIDES": "epochs"}, "train overrides must be 'key=value', got 'epochs'"),
    ({"TFMOE_PIPELINE_NAME": "a b"}, "`pipeline_name` must be letters"),
    ({"TFMOE_ENABLE_CACHE": "maybe"}, "expected a boolean"),
    ({"TFMOE_RUNNER": "kubeflow_v2", "TFMOE_PIPELINE_NAME": "my_pipe"}, "must match [a-z0-9][a-z0-9-]"),
])
def test_config_rejects_bad_knobs_by_name(env, message):
    with pytest.raises(ValueError) as caught:
        PipelineConfig.from_env(env)
    assert message in str(caught.value)


def test_input_fingerprint_follows_the_content(tmp_path):
    from tfmoe.tfx.data import input_fingerprint

    path = tmp_path / "logs.csv"
    path.write_text("user_id,item_id\n1,2\n")
    first = input_fingerprint([str(path)])
    assert input_fingerprint([str(tmp_path / "*.csv")]) == first
    path.write_text("user_id,item_id\n1,3\n")
    assert input_fingerprint([str(path)]) != first
    with pytest.raises(FileNotFoundError, match="no input file matches"):
        input_fingerprint([str(tmp_path / "missing-*.csv")])


# ---- run_fn ------------------------------------------------------------------------------------

def test_examples_root_and_data_view(tmp_path):
    from tfmoe.tfx.run_fn import data_view, examples_root

    uri = tmp_path / "examples" / "7"
    assert examples_root([f"{uri}/Split-train/*"]) == str(uri)
    with pytest.raises(ValueError, match="expected an Examples split folder"):
        examples_root(["/somewhere/train/*"])
    with pytest.raises(ValueError, match=r"not a tfmoe prepared Examples artifact \(missing \['Split-train'"):
        data_view(str(uri), str(tmp_path / "view"))
    for name in ("Split-train", "Split-valid", "Split-test", "vocab"):
        (uri / name).mkdir(parents=True)
    (uri / "summary.json").write_text("{}")
    view = Path(data_view(str(uri), str(tmp_path / "view")))
    assert sorted(p.name for p in view.iterdir()) == ["summary.json", "test", "train", "valid", "vocab"]
    assert (view / "train").resolve() == (uri / "Split-train").resolve()
    data_view(str(uri), str(view))  # idempotent (a restarted Trainer)


def test_build_train_config_fills_data_and_output_and_applies_overrides():
    from tfmoe.tfx.run_fn import build_train_config

    custom = {"train_config": PipelineConfig(model="fame", epochs=4).train_dict(),
              "train_overrides": ["model.hidden_dim=24", "training.early_stopping.patience=2"]}
    config = build_train_config(custom, "/data", "/out")
    assert (config.data.dir, config.output_dir, config.model_name) == ("/data", "/out", "fame")
    assert (config.training.epochs, config.training.strategy, config.model["hidden_dim"]) == (4, "mirrored", 24)
    assert config.training.early_stopping.patience == 2
    with pytest.raises(ValueError, match="training.epochs"):
        build_train_config({"train_config": {"model": {"name": "sasrec"}, "training": {"epochs": 0}}}, "/d", "/o")


def test_only_the_chief_writes_the_serving_model():
    from tfmoe.tfx.run_fn import is_chief

    cluster = {"worker": ["a:1", "b:2"]}
    assert is_chief("")
    assert is_chief(json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    assert not is_chief(json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    with_chief = {"chief": ["c:0"], **cluster}
    assert is_chief(json.dumps({"cluster": with_chief, "task": {"type": "chief", "index": 0}}))
    assert not is_chief(json.dumps({"cluster": with_chief, "task": {"type": "worker", "index": 0}}))


def _prepared_examples(tmp_path, tfx_layout: bool = True) -> Path:
    """A tiny prepared dataset, laid out as the PrepareExamples artifact (Split-* folders) by default."""
    from tfmoe.data import synthetic
    from tfmoe.data.prepare import PrepareConfig, prepare

    logs = tmp_path / "logs"
    synthetic.write_files(synthetic.generate(synthetic.preset_config("tiny", seed=1)), logs)
    uri = tmp_path / "examples"
    prepare(PrepareConfig(format="tfmoe-synthetic", inputs=(str(logs / "interactions.csv"),), output_dir=str(uri)))
    for split in ("train", "valid", "test") if tfx_layout else ():
        (uri / split).rename(uri / f"Split-{split}")
    return uri


@pytest.mark.slow
def test_ctr_eval_split_holds_one_labelled_positive_and_exact_negatives_per_user(tmp_path):
    import tensorflow as tf

    from tfmoe.data import schema
    from tfmoe.tfx.ctr_eval import write_ctr_eval_split

    uri = _prepared_examples(tmp_path, tfx_layout=False)
    out = tmp_path / "Split-ctr_eval"
    rows = write_ctr_eval_split(str(uri), str(out), max_len=10, ctr={"num_negatives": 2})
    tests = {}
    for record in tf.data.TFRecordDataset([str(p) for p in (uri / "test").iterdir()], compression_type="GZIP"):
        decoded = schema.decode_example(record.numpy())
        tests[decoded["user_id"]] = decoded
    assert rows == 3 * len(tests)
    by_user = {}
    for record in tf.data.TFRecordDataset([str(p) for p in out.iterdir()], compression_type="GZIP"):
        example = tf.train.Example.FromString(record.numpy()).features.feature
        value = lambda key: list(example[key].int64_list.value)  # noqa: B023
        by_user.setdefault(value("user_id")[0], []).append((value("label")[0], value("target_item")[0],
                                                            value("items"), value("categories")))
    assert sorted(by_user) == sorted(tests)
    for user, rows_of_user in by_user.items():
        record = tests[user]
        assert sorted(label for label, *_ in rows_of_user) == [0, 0, 1]
        seen = set(record["items"]) | {record["target"]}
        for label, target, items, categories in rows_of_user:
            assert items == record["items"][-10:] and len(categories) == len(items)
            assert (target == record["target"]) if label else (target not in seen)


def numpy_test_metrics(serving_dir, examples_dir, k: int = 10) -> dict:
    """NDCG@k / HR@k of the test split from the SavedModel's scores, ranked in numpy: candidates are the items
    1..V-1 minus the user's whole history except the target, ties pessimistic (tfmoe's protocol); and HR@k
    unfiltered with ties as hits (TFMA's top-k accuracy)."""
    import tensorflow as tf

    from tfmoe.data import schema

    files = sorted(str(p) for p in Path(examples_dir, "Split-test").iterdir())
    records = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    signature = tf.saved_model.load(str(serving_dir)).signatures["serving_default"]
    scores = np.concatenate([signature(examples=tf.constant(records[i:i + 64]))["scores"].numpy()
                             for i in range(0, len(records), 64)])
    ndcg, hits, hits_unfiltered = [], [], []
    for row, record in zip(scores, map(schema.decode_example, records)):
        target, seen = record["target"], set(record["items"]) - {record["target"]}
        candidates = [j for j in range(1, len(row)) if j != target and j not in seen]
        rank = sum(row[j] >= row[target] for j in candidates)
        ndcg.append((rank < k) / np.log2(rank + 2))
        hits.append(float(rank < k))
        hits_unfiltered.append(float(np.sum(row > row[target]) < k))
    return {f"NDCG@{k}": float(np.mean(ndcg)), f"HR@{k}": float(np.mean(hits)),
            f"HR@{k} unfiltered": float(np.mean(hits_unfiltered))}


@pytest.mark.slow
def test_run_fn_trains_with_tfmoe_and_exports_a_servable_model(tmp_path):
    import tensorflow as tf

    from tfmoe.data import schema
    from tfmoe.tfx.run_fn import run_fn
    from tfmoe.tfx.serving_export import read_metrics

    uri = _prepared_examples(tmp_path)
    from tfx.components.trainer.fn_args_utils import FnArgs

    fn_args = FnArgs(
        train_files=[f"{uri}/Split-train/*"], eval_files=[f"{uri}/Split-valid/*"],
        model_run_dir=str(tmp_path / "model_run"), serving_model_dir=str(tmp_path / "model" / "Format-Serving"),
        custom_config={"train_config": PipelineConfig(epochs=1, max_len=12, strategy="default",
                                                      model_args={"hidden_dim": 8, "num_blocks": 1}).train_dict(),
                       "serving_model_name": "recs"})
    run_fn(fn_args)
    serving_dir = Path(fn_args.serving_model_dir)
    assert (serving_dir / "saved_model.pb").exists()
    assert (serving_dir / "assets.extra" / "tf_serving_warmup_requests").exists()
    assert (tmp_path / "model_run" / "train" / "model.keras").exists()  # tfmoe's trainer ran there
    recorded = read_metrics(str(serving_dir))
    assert recorded["model"] == "sasrec" and recorded["epochs_run"] == 1
    reference = numpy_test_metrics(serving_dir, uri)  # the exported scores, ranked by numpy
    assert recorded["metrics"]["test"]["NDCG@10"] == pytest.approx(reference["NDCG@10"], abs=1e-6)
    assert recorded["metrics"]["test"]["HR@10"] == pytest.approx(reference["HR@10"], abs=1e-6)
    assert json.loads((tmp_path / "model_run" / "tfmoe_metrics.json").read_text()) == recorded

    # what TFMA feeds it: serialized test examples -> scores [B, V] with a finite padding column
    records = [r.numpy() for r in tf.data.TFRecordDataset(
        sorted(str(p) for p in (uri / "Split-test").iterdir()), compression_type="GZIP").take(4)]
    loaded = tf.saved_model.load(str(serving_dir))
    scores = loaded.signatures["serving_default"](examples=tf.constant(records))["scores"].numpy()
    num_items = len((uri / "vocab" / "items.txt").read_text().split())
    assert scores.shape == (4, num_items + 1) and np.isfinite(scores).all()
    assert (scores[:, 0] < scores[:, 1:].min(axis=1)).all()
    targets = [schema.decode_example(r)["target"] for r in records]
    in_top = tf.math.in_top_k(tf.constant(targets), tf.constant(scores), num_items).numpy()
    assert in_top.all()  # every target is rankable: no row is poisoned by a non-finite score


# ---- TFMA config, anomalies --------------------------------------------------------------------

@pytest.mark.slow
def test_eval_configs_gate_the_blessing_per_task():
    from tfmoe.tfx.eval_config import eval_config

    next_item = eval_config("next_item", threshold=0.05, change_tolerance=0.01)
    spec = next_item.model_specs[0]
    assert (spec.signature_name, spec.label_key, spec.prediction_key) == ("serving_default", "target", "scores")
    metrics = {m.class_name: m for m in next_item.metrics_specs[0].metrics}
    assert sorted(metrics) == ["ExampleCount", "SparseTopKCategoricalAccuracy"]
    top_k = metrics["SparseTopKCategoricalAccuracy"]
    assert json.loads(top_k.config) == {"k": 10}
    assert top_k.threshold.value_threshold.lower_bound.value == 0.05
    assert top_k.threshold.change_threshold.absolute.value == -0.01

    ctr = eval_config("ctr", threshold=0.6, change_tolerance=0.0)
    assert (ctr.model_specs[0].label_key, ctr.model_specs[0].prediction_key) == ("label", "probability")
    metrics = {m.class_name: m for m in ctr.metrics_specs[0].metrics}
    assert sorted(metrics) == ["AUC", "AUCPrecisionRecall", "BinaryCrossEntropy", "Calibration", "ExampleCount"]
    assert metrics["AUC"].threshold.value_threshold.lower_bound.value == 0.6
    with pytest.raises(ValueError, match="`task` must be one of"):
        eval_config("ranking", 0.1)


def _write_examples(path: Path, examples) -> None:
    import tensorflow as tf

    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path), "GZIP") as writer:
        for example in examples:
            writer.write(example.SerializeToString())


@pytest.mark.slow
def test_curated_schema_passes_prepared_data_and_names_anomalies_in_bad_data(tmp_path):
    """The checks ExampleValidator runs (TFDV on the curated schema), read back the way AnomaliesGate reads them."""
    import tensorflow_data_validation as tfdv
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tfx.utils import writer_utils

    from tfmoe.data import schema
    from tfmoe.tfx.anomalies import AnomaliesFound, raise_if_anomalies, read_anomalies
    from tfmoe.tfx.config import CURATED_SCHEMA

    curated = text_format.Parse(Path(CURATED_SCHEMA).read_text(), schema_pb2.Schema())
    good = [schema.encode_example(user_id=u, items=[1, 2, u], session_ids=[0, 0, 1]) for u in range(1, 5)]
    bad = good[:2] + [schema.encode_example(user_id=0, items=[3, -1], session_ids=[0, 0])]
    anomalies_uri = tmp_path / "anomalies"
    for split, examples in (("train", good), ("valid", bad)):
        data = tmp_path / split / "part-00000-of-00001.tfrecord.gz"
        _write_examples(data, examples)
        stats = tfdv.generate_statistics_from_tfrecord(str(data))
        writer_utils.write_anomalies(str(anomalies_uri / f"Split-{split}" / "SchemaDiff.pb"),
                                     tfdv.validate_statistics(stats, curated))
    found = read_anomalies(str(anomalies_uri), ["train", "valid"])
    assert list(found) == ["valid"]
    assert {feature for feature, _, _ in found["valid"]} == {"items", "user_id"}
    with pytest.raises(AnomaliesFound) as caught:
        raise_if_anomalies(str(anomalies_uri), ["train", "valid"])
    message = str(caught.value)
    assert "split 'valid', feature 'user_id'" in message and "split 'valid', feature 'items'" in message
    assert "the run stops before training" in message


# ---- Kubeflow V2 / Vertex ----------------------------------------------------------------------

@pytest.mark.slow
def test_kubeflow_v2_runner_compiles_the_same_pipeline(tmp_path):
    pytest.importorskip("kfp.pipeline_spec", reason="the Kubeflow V2 runner needs kfp-pipeline-spec (tfx[kfp])")
    from tfmoe.tfx.pipeline import compile_kubeflow_v2

    config = PipelineConfig(home=str(tmp_path), synthetic_preset="tiny", runner="kubeflow_v2",
                            image="gcr.io/example/tfmoe:test", epochs=2)
    path = compile_kubeflow_v2(config)
    spec = json.loads(Path(path).read_text())
    pipeline_spec = spec.get("pipelineSpec", spec)
    assert pipeline_spec["pipelineInfo"]["name"] == "tfmoe-sasrec"
    tasks = set(pipeline_spec["root"]["dag"]["tasks"])
    assert {"PrepareExamples", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "AnomaliesGate", "Trainer",
            "latest_blessed_model_resolver-model-resolver", "Evaluator", "Pusher"} <= tasks
    evaluator = pipeline_spec["root"]["dag"]["tasks"]["Evaluator"]
    assert evaluator["inputs"]["artifacts"]["baseline_model"]["taskOutputArtifact"]["producerTask"] == (
        "latest_blessed_model_resolver-model-resolver")
    text = json.dumps(spec)
    assert "tfmoe.tfx.run_fn.run_fn" in text and "gcr.io/example/tfmoe:test" in text
    assert "sparse_top_k_categorical_accuracy" in text.lower() or "SparseTopKCategoricalAccuracy" in text


# ---- a run stopped by anomalies -----------------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.slow
def test_anomalies_stop_the_run_before_training_with_a_clear_message(tmp_path):
    from tfmoe.tfx.config import CURATED_SCHEMA
    from tfmoe.tfx.run_report import run_states

    strict = tmp_path / "strict_schema.pbtxt"  # item ids above 5 are out of the domain: the data breaks it
    text = Path(CURATED_SCHEMA).read_text()
    strict.write_text(text.replace('name: "items"\n  type: INT\n  int_domain { min: 1 }',
                                   'name: "items"\n  type: INT\n  int_domain { min: 1 max: 5 }'))
    assert strict.read_text() != text
    env = {**os.environ, **TINY, "TFMOE_HOME": str(tmp_path), "TFMOE_SCHEMA": str(strict), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, str(PIPELINE_FILE)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "ExampleValidator found anomalies in 3 split(s); the run stops before training" in done.stderr
    assert "split 'train', feature 'items': Out-of-range values: Unexpectedly large value" in done.stderr
    assert "Traceback" not in done.stderr
    states = run_states(PipelineConfig.from_env(env).metadata_path)
    assert states["ExampleValidator"] == "COMPLETE" and states["AnomaliesGate"] == "FAILED"
    assert "Trainer" not in states and "Pusher" not in states


# ---- end to end through the real CLI -----------------------------------------------------------

def _cli(args, env, timeout=600) -> str:
    started = time.monotonic()
    done = subprocess.run([str(VENV_BIN / "tfx"), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    output = done.stdout + done.stderr
    print(f"$ tfx {' '.join(args)}  ({time.monotonic() - started:.0f} s)")
    assert done.returncode == 0, f"tfx {' '.join(args)} failed ({done.returncode}):\n{output[-6000:]}"
    return output


@pytest.mark.e2e
@pytest.mark.slow
def test_tfx_cli_runs_caches_gates_and_pushes_a_servable_model(tmp_path):
    from tfmoe.serving import layout
    from tfmoe.tfx.demo import sample_users, serve_and_recommend
    from tfmoe.tfx.run_report import is_blessed, latest_artifact_uri, run_states, tfma_metrics
    from tfmoe.tfx.serving_export import read_metrics

    assert shutil.which("pip", path=str(VENV_BIN)), "the tfx CLI runs `pip freeze`: pip must be in the venv"
    name = "tfmoe_e2e"
    env = {**os.environ, **TINY, "TFMOE_HOME": str(tmp_path), "TFMOE_PIPELINE_NAME": name,
           "LOCAL_HOME": str(tmp_path / "cli"), "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    config = PipelineConfig.from_env(env)
    out = _cli(["pipeline", "create", "--engine", "local", "--pipeline_path", str(PIPELINE_FILE)], env)
    assert f'Pipeline "{name}" created successfully' in out

    _cli(["run", "create", "--engine", "local", "--pipeline_name", name], env)
    first = run_states(config.metadata_path)
    assert first == dict.fromkeys(["ImportSchemaGen", "PrepareExamples", "latest_blessed_model_resolver",
                                   "StatisticsGen", "ExampleValidator", "AnomaliesGate", "Trainer", "Evaluator",
                                   "Pusher"], "COMPLETE") | {}, first
    root = config.pipeline_root
    examples = latest_artifact_uri(root, "PrepareExamples", "examples")
    for split in ("train", "valid", "test"):
        assert any(Path(examples, f"Split-{split}").glob("part-*.tfrecord.gz"))
    assert Path(examples, "vocab", "items.txt").exists()
    assert any(Path(latest_artifact_uri(root, "StatisticsGen", "statistics"), "Split-train").iterdir())
    assert Path(latest_artifact_uri(root, "ImportSchemaGen", "schema"), "schema.pbtxt").exists()
    model = Path(latest_artifact_uri(root, "Trainer", "model"), "Format-Serving")
    assert (model / "saved_model.pb").exists()
    assert is_blessed(latest_artifact_uri(root, "Evaluator", "blessing"))
    metrics = tfma_metrics(latest_artifact_uri(root, "Evaluator", "evaluation"))
    users = int(json.loads(Path(examples, "summary.json").read_text())["counts"]["users"])
    assert metrics["example_count"] == users
    model_dir = Path(latest_artifact_uri(root, "Trainer", "model"), "Format-Serving")
    reference = numpy_test_metrics(model_dir, examples)
    # TFMA's top-k accuracy: unfiltered, ties count as hits (tf.math.in_top_k)
    assert metrics["sparse_top_k_categorical_accuracy"] == pytest.approx(reference["HR@10 unfiltered"], abs=1e-6)

    versions = layout.complete_versions(config.serving_model_dir)
    assert len(versions) == 1
    pushed = Path(config.serving_model_dir, str(versions[0]))
    recorded = read_metrics(str(pushed))  # tfmoe's full-ranking NDCG@10 travels with the pushed model
    assert recorded["metrics"]["test"]["NDCG@10"] == pytest.approx(reference["NDCG@10"], abs=1e-6)

    histories = [u["history"] for u in sample_users(examples, count=2)]
    served = serve_and_recommend(config.serving_dir, config.serving_model_name, histories, in_process=True)
    assert served["version"] == versions[0] and served["item_ids"].shape == (2, 10)
    for row, history in zip(served["item_ids"], histories):
        assert all(1 <= i <= users * 10 for i in row)
        assert not set(row.tolist()) & set(history[-config.effective_max_len:])  # exclude_seen over the served window

    # rerun: same data and code, impossible HR@10 bound -> cached ingestion/training, no blessing, no push
    _cli(["run", "create", "--engine", "local", "--pipeline_name", name], {**env, "TFMOE_HR_THRESHOLD": "1.01"})
    second = run_states(config.metadata_path)
    cached = ["PrepareExamples", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "AnomaliesGate", "Trainer"]
    assert {node: second[node] for node in cached} == dict.fromkeys(cached, "CACHED"), second
    assert second["Evaluator"] == "COMPLETE" and second["Pusher"] == "COMPLETE"
    assert not is_blessed(latest_artifact_uri(root, "Evaluator", "blessing"))
    assert layout.complete_versions(config.serving_model_dir) == versions
