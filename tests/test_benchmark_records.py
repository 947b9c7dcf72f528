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


def _git_repo(path):
    """A fresh git repository at ``path``: returns ``git(*args) -> stdout`` run in it."""
    import subprocess

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=path,
                              capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q")
    return git


def test_git_commit_is_dirty_for_changed_code_but_not_for_changed_results(tmp_path):
    git = _git_repo(tmp_path)
    results = tmp_path / records.RESULTS_IN_REPO / "records"
    results.mkdir(parents=True)
    (results / "r.json").write_text("{}\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("commit", "-qm", "one")
    assert records.git_commit(str(tmp_path)) == {"sha": git("rev-parse", "HEAD"), "dirty": False}
    (results / "r.json").write_text('{"written": "by a benchmark"}\n')
    assert records.git_commit(str(tmp_path))["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert records.git_commit(str(tmp_path))["dirty"] is True


def test_package_tree_changes_with_the_packages_code_and_is_none_while_it_has_uncommitted_changes(tmp_path):
    git = _git_repo(tmp_path)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "notes.md").write_text("n\n")
    git("add", ".")
    git("commit", "-qm", "one")
    first = records.package_tree(str(tmp_path), "pkg")
    assert first == git("rev-parse", "HEAD:pkg")
    (tmp_path / "notes.md").write_text("changed outside the package\n")
    assert records.package_tree(str(tmp_path), "pkg") == first
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    assert records.package_tree(str(tmp_path), "pkg") is None
    git("commit", "-qam", "two")
    assert records.package_tree(str(tmp_path), "pkg") not in (None, first)
    assert records.package_tree(str(tmp_path / "nowhere"), "pkg") is None


def test_benchmarks_readme_is_what_report_renders_from_the_committed_records(tmp_path):
    """benchmarks/README.md is regenerated from benchmarks/results/records and compared; every committed record
    passes the schema check."""
    from benchmarks import report

    committed = records.load_records(str(ROOT / "benchmarks" / "results" / "records"))
    assert {r["benchmark"] for r in committed} >= {"next_item", "next_item_cost", "next_item_throughput"}
    rendered = report.render(committed)
    assert (ROOT / "benchmarks" / "README.md").read_text() == rendered, "run .venv/bin/python benchmarks/report.py"
    assert report.main(["--check", "--records", str(ROOT / "benchmarks" / "results" / "records"),
                        "--out", str(ROOT / "benchmarks" / "README.md")]) == 0
    stale = tmp_path / "README.md"
    stale.write_text(rendered + "edited by hand\n")
    assert report.main(["--check", "--out", str(stale)]) == 1
    # each section names its protocol, command, machine and date
    for section in rendered.split("\n## ")[1:]:
        assert "Protocol: " in section and "- command" in section and "- machine" in section, section[:60]
        assert "- date" in section, section[:60]


def test_converted_records_keep_what_their_source_recorded_and_nothing_else():
    committed = records.load_records(str(ROOT / "benchmarks" / "results" / "records"))
    converted = [r for r in committed if r.get("converted_from")]
    assert converted and all(r["data_hash"] is None for r in converted)
    source = json.loads((ROOT / "benchmarks" / "results" / "archive" / "converted" / "next_item.json").read_text())
    main = [r for r in converted if r["converted_from"] == "benchmarks/results/next_item.json"
            and r["benchmark"] == "next_item"]
    assert len(main) == sum(len(entry["runs"]) for name, section in source.items() if not name.startswith("_")
                            for entry in section.values())
    assert all(r["machine"] == source["_meta"]["machine"] and r["command"] == source["_meta"]["command"]
               and r["commit"] is None and r["date"] is None for r in main)
    (sasrec_seed1,) = [r for r in main if r["variant"] == "ml-1m/sasrec" and r["seed"] == 1]
    (run,) = [run for run in source["ml-1m"]["sasrec"]["runs"] if run["seed"] == 1]
    assert sasrec_seed1["metrics"]["test"] == run["test"] and sasrec_seed1["epochs"] == run["epochs"]
