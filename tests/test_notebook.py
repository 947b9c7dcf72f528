"""examples/quickstart.ipynb is a clean, valid notebook (no kernel here: CI runs it with scripts/run_notebook.py)."""

import json
import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"


def _notebook() -> dict:
    return json.loads(NOTEBOOK.read_text())


def _code_cells() -> list[str]:
    return ["".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            for cell in _notebook()["cells"] if cell["cell_type"] == "code"]


def test_notebook_is_valid_nbformat_with_a_python3_kernelspec():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.metadata["kernelspec"]["language"] == "python"


def test_notebook_has_no_stored_outputs():
    for index, cell in enumerate(_notebook()["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"cell {index} has stored outputs"
            assert cell.get("execution_count") is None, f"cell {index} has an execution count"
        assert "attachments" not in cell or not cell["attachments"], f"cell {index} has attachments"


def test_notebook_uses_keras_3_never_tf_keras():
    code = "\n".join(_code_cells())
    assert re.search(r"^import keras$", code, flags=re.M), "the notebook must `import keras`"
    assert "tf.keras" not in code and "tensorflow.keras" not in code
    text = NOTEBOOK.read_text()
    assert "tf.keras" not in text, "not even the markdown should suggest tf.keras"


def test_first_code_cell_installs_tfmoe_only_on_colab():
    first = _code_cells()[0]
    homepage = re.search(r'^Homepage = "(.+?)"', (ROOT / "pyproject.toml").read_text(), flags=re.M).group(1)
    assert '"google.colab" in sys.modules' in first
    install = re.search(r'^( +)%pip install -q "tfmoe\[serving\] @ git\+(\S+)"$', first, flags=re.M)
    assert install, "the Colab cell must `%pip install` tfmoe[serving] from the repository"
    assert install.group(2) == homepage
    assert re.search(r"^else:\n +print\(", first, flags=re.M), "outside Colab the cell must only print"
    # Outside Colab the cell must not touch the network: the install line is the only %pip / !pip in the notebook.
    assert sum(len(re.findall(r"^\s*[%!]\s*pip\b", cell, flags=re.M)) for cell in _code_cells()) == 1


def test_notebook_covers_the_quickstart_steps():
    code = "\n".join(_code_cells())
    for needle in ("HyMoERec(", "synthetic.", "evaluate_ranking(", "popularity", "collect_routing_statistics(",
                   "plt.", "export_model(", "tf.saved_model.load(", 'signatures["top_k"]'):
        assert needle in code, f"the notebook no longer uses {needle!r}"


def test_notebook_cells_compile_after_ipython_transforms():
    """Every code cell is valid Python once IPython rewrites its magics (skipped without IPython)."""
    transformer = pytest.importorskip("IPython.core.inputtransformer2").TransformerManager()
    for index, source in enumerate(_code_cells()):
        compile(transformer.transform_cell(source), f"cell {index}", "exec")


def test_run_notebook_script_is_importable():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import run_notebook
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert run_notebook.KERNEL_NAME == "python3"
    with pytest.raises(SystemExit):
        run_notebook.main(["does/not/exist.ipynb"])
