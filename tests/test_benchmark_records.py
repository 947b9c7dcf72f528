"""benchmarks/records.py: record round trip, schema errors, data hash; benchmarks/README.md is report.py's output."""

import hashlib
import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import records  # noqa: E402


def _record(**overrides):
    record = records.make_record("toy", "ml-1m/sasrec dropout=0.3", {"model": {"name": "sasrec", "dropout": 0.3}},
                                 {"test": {"NDCG@10": 0.125}}, epochs=4, seed=2, partial=True, data_files=[],
                                 command=["python", "benchmarks/toy.py", "--seeds", "2"])
    return {**record, **overrides}


def test_a_record_round_trips_through_its_file(tmp_path):
    record = _record()
    path = records.write_record(record, str(tmp_path))
    relative = pathlib.Path(path).relative_to(tmp_path)
    digest = records.config_hash(record["config"])[:10]
    assert relative == pathlib.Path("toy", "ml-1m", "sasrec_dropout=0.3", f"seed2-{digest}.json")
    assert records.read_record(path) == record
    assert records.load_records(str(tmp_path), "toy") == [record] == records.load_records(str(tmp_path))
    assert records.load_records(str(tmp_path), "other") == []
    # the same variant, seed and config: the finished run replaces the partial one; another config is another file
    records.write_record({**record, "partial": False, "epochs": 9}, str(tmp_path))
    (finished,) = records.load_records(str(tmp_path))
    assert not finished["partial"] and finished["epochs"] == 9
    records.write_record({**record, "config": {"model": {"name": "sasrec", "dropout": 0.5}}}, str(tmp_path))
    assert len(records.load_records(str(tmp_path))) == 2
    # what every record carries about its run
    assert record["command"] == ["python", "benchmarks/toy.py", "--seeds", "2"] and record["seed"] == 2
    assert set(record["machine"]) >= {"cpu", "cores", "gpus", "python", "tensorflow", "keras"}
    assert record["machine"]["python"] == sys.version.split()[0]
    assert set(record["commit"]) == {"sha", "dirty"} and len(record["commit"]["sha"]) == 40
    assert record["date"].endswith("+00:00")
    over_seeds = records.make_record("toy", "v", {}, {}, epochs=None, seed=[0, 1], partial=False, data_files=[])
    assert over_seeds["seeds"] == [0, 1] and "seed" not in over_seeds
    assert records.record_path(over_seeds, "r").endswith("seeds0-1-" + records.config_hash({})[:10] + ".json")


@pytest.mark.parametrize("key", records.REQUIRED)
def test_a_record_without_a_required_key_is_an_error_naming_the_key_and_file(tmp_path, key):
    record = _record()
    del record[key]
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=f"{path}: record is missing required key '{key}'"):
        records.read_record(str(path))
    with pytest.raises(ValueError, match=f"record is missing required key '{key}'"):
        records.write_record(record, str(tmp_path))


def test_schema_errors_name_the_key():
    record = _record()
    del record["seed"]
    with pytest.raises(ValueError, match=r"x.json: record is missing required key 'seed' \(or 'seeds'\)"):
        records.validate(record, "x.json")
    with pytest.raises(ValueError, match="record key 'partial' must be bool, got str"):
        records.validate(_record(partial="yes"))
    with pytest.raises(ValueError, match="record key 'metrics' must be dict, got list"):
        records.validate(_record(metrics=[0.1]))
    with pytest.raises(ValueError, match="record key 'commit' must hold 'sha' and 'dirty'"):
        records.validate(_record(commit={"sha": "abc"}))
    with pytest.raises(ValueError, match="record key 'seed'/'seeds' must be an int or a list of ints"):
        records.validate(_record(seed="0"))
    with pytest.raises(ValueError, match="record key 'command' is null"):
        records.validate(_record(command=None))
    with pytest.raises(ValueError, match="a record is a JSON object, got list"):
        records.validate([])
    # a converted record keeps null where its source file had nothing, and says where it came from
    unknown = dict.fromkeys(("machine", "command", "commit", "date", "data_hash"))
    assert records.validate(_record(**unknown, converted_from="old.json"))["machine"] is None


def test_data_hash_of_a_tiny_file_is_sha256_over_its_size_and_bytes(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"1 2\n1 3\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_bytes(b"x")
    expected = hashlib.sha256((8).to_bytes(8, "little") + b"1 2\n1 3\n").hexdigest()
    assert records.data_hash([str(tmp_path / "a.txt")]) == "sha256:" + expected
    both = hashlib.sha256((8).to_bytes(8, "little") + b"1 2\n1 3\n" + (1).to_bytes(8, "little") + b"x").hexdigest()
    assert records.data_hash([str(tmp_path)]) == "sha256:" + both  # a folder: its files in path order
    assert records.data_hash([str(tmp_path / "sub" / "b.txt"), str(tmp_path / "a.txt")]) == "sha256:" + both
    assert records.data_hash([]) == "sha256:" + hashlib.sha256().hexdigest()
