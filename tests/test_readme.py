"""The README is a short user guide whose examples run, whose links resolve, whose two commands are the scripts CI
runs, and whose results table is what the committed run records say; no page narrates history."""

import pathlib
import re
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
HISTORY = r"this release|[Uu]ntil this|issue #"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert len(blocks) >= 2, "README has fewer than two python examples"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_docs_python_blocks_run():
    """Every python example in the docs guides runs as written (the README's are checked above)."""
    pages = sorted((ROOT / "docs").rglob("*.md"))
    blocks = [(page, block) for page in pages
              for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)]
    assert len(blocks) >= 4
    for page, block in blocks:
        exec(compile(block, str(page.relative_to(ROOT)), "exec"), {})


def test_readme_two_commands_exist_and_ci_runs_the_test_command():
    commands = re.search(r"## Two commands.*?```bash\n(.*?)```", README, flags=re.S).group(1).splitlines()
    scripts = [line.split()[0] for line in commands if line.strip()]
    assert scripts == ["./scripts/quickstart.sh", "./scripts/test.sh"]
    for script in scripts:
        assert (ROOT / script).stat().st_mode & 0o111, f"{script} is not executable"
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_readme_results_table_is_the_committed_records():
    """The next-item results table is rendered from the committed records (benchmarks/next_item_tables.py), so the
    README cannot drift from them."""
    import sys

    sys.path.insert(0, str(ROOT))
    from benchmarks import next_item_tables as tables
    from benchmarks import records

    found = records.load_records(str(ROOT / "benchmarks" / "results" / "records"))
    results = tables.aggregate(found)
    assert len(results["ml-1m"]) >= 3 and len(results["beauty"]) >= 3
    assert tables.main_table(results) in README


def test_readme_is_a_short_guide_with_the_sections_a_newcomer_needs():
    assert len(README.splitlines()) <= 220
    for section in ("## Two commands", "## Install", "## Quickstart 1", "## Quickstart 2", "## Quickstart 3",
                    "## Results", "## Documentation"):
        assert section in README, section
    for paper in ("arxiv.org/abs/2411.11926", "arxiv.org/abs/2511.06388", "docs/specs/mos.md"):
        assert paper in README, paper


def test_readme_links_resolve():
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    local = [link for link in links if not link.startswith(("http://", "https://"))]
    assert len(local) >= 10
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README links to missing files: {missing}"


def test_readme_tables_have_a_header():
    """Every Markdown table starts with a header and its |---| line."""
    tables = re.findall(r"(?:^\|.*\n)+", README + "\n", flags=re.M)
    assert len(tables) >= 3
    for table in tables:
        lines = table.splitlines()
        assert len(lines) >= 2 and re.fullmatch(r"\|(-+\|)+", lines[1].replace(" ", "")), lines[0]


def test_no_page_narrates_history():
    """Docs, code, benchmarks and tests describe what is, not when it changed (CHANGELOG.md holds history)."""
    found = subprocess.run(["git", "grep", "-nE", HISTORY, "--", "README.md", "docs", "tfmoe", "benchmarks", "tests",
                            ":!tests/test_readme.py"], cwd=ROOT, capture_output=True, text=True)
    if found.returncode == 128:  # not a git checkout (an installed copy): search the files directly
        found = subprocess.run(["grep", "-rnE", HISTORY, "README.md", "docs", "tfmoe", "benchmarks", "tests",
                                "--exclude=test_readme.py"], cwd=ROOT, capture_output=True, text=True)
    assert found.stdout == "", f"history narrated:\n{found.stdout}"
