"""The README's Python examples run as written, and its two commands are the scripts CI runs."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks, "README has no python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_readme_two_commands_exist_and_ci_runs_the_test_command():
    commands = re.search(r"## Two commands.*?```bash\n(.*?)```", README, flags=re.S).group(1).splitlines()
    scripts = [line.split()[0] for line in commands if line.strip()]
    assert scripts == ["./scripts/quickstart.sh", "./scripts/test.sh"]
    for script in scripts:
        assert (ROOT / script).stat().st_mode & 0o111, f"{script} is not executable"
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_readme_next_item_tables_are_the_committed_results():
    """The next-item main and cost tables are rendered from the committed records, and every ablation row of a
    variant in the archived ablation results from that file (benchmarks/next_item_tables.py), so the README cannot
    drift from them."""
    import json
    import sys

    sys.path.insert(0, str(ROOT))
    from benchmarks import next_item_tables as tables
    from benchmarks import records

    committed = ROOT / "benchmarks" / "results"  # not the modules' paths: another test may have patched them
    found = records.load_records(str(committed / "records"))
    results = tables.aggregate(found)
    ablation = json.load(open(committed / "archive" / "next_item_ablation.json"))
    assert len(results["ml-1m"]) >= 3 and len(results["beauty"]) >= 3
    assert tables.main_table(results) in README
    assert tables.cost_table(tables.cost_rows(found, "ml-1m"), "ml-1m") in README
    checked = 0
    variant_table = r"^\| (ml-1m|beauty), [^|]*variants(?:, seed 0 | \(seed 0 unless named\) )(\|.*?)\n(.*?)\n\n"
    for dataset, header, body in re.findall(variant_table, README, flags=re.S | re.M):
        epochs = [int(n) for n in re.findall(r"\| epoch (\d+) ", header)]
        for row in body.splitlines()[1:]:  # after the |---| line
            label = row.split(" | ")[0].lstrip("| ")
            key = label.removesuffix(tables.MAIN_LABEL)
            if key not in ablation[dataset]:
                continue
            entry = ablation[dataset][key]
            test = tables.main_run_test(results, dataset, key, entry["valid_ndcg@10"]) if key != label else None
            assert row == tables.ablation_row(label, entry, epochs, test), label
            checked += 1
    assert checked >= 30
    means = re.findall(r"^\| (ml-1m|beauty), variants over their seeds \|.*?\n\|[-|]+\n(.*?)\n\n", README,
                       flags=re.S | re.M)
    assert means
    for dataset, body in means:
        for row in body.splitlines():
            assert row == tables.seed_means_row(row.split(" | ")[0].lstrip("| "), ablation[dataset]), row


def test_readme_tables_have_a_header():
    """Every Markdown table starts with a header and its |---| line (rows without one would escape the checks
    above, which find tables by their header)."""
    tables = re.findall(r"(?:^\|.*\n)+", README + "\n", flags=re.M)
    assert len(tables) >= 10
    for table in tables:
        lines = table.splitlines()
        assert len(lines) >= 2 and re.fullmatch(r"\|(-+\|)+", lines[1].replace(" ", "")), lines[0]
