"""Models saved by earlier releases load and compute the same function (fixtures in tests/fixtures/<release>/).

The fixtures are written by tests/fixtures/make_keras_fixtures.py from the code of the release they are
named after: small random models, their inputs and outputs. A later release must load each file and
reproduce the outputs, or refuse it with an error that names the release and says what to do.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from tfmoe.models import load_model

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
RELEASES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir() and (p / "release.json").exists())


def _cases():
    for release in RELEASES:
        for name in json.loads((FIXTURES / release / "release.json").read_text())["models"]:
            yield pytest.param(release, name, id=f"{release}-{name}")


@pytest.mark.parametrize(("release", "name"), list(_cases()))
def test_saved_model_of_an_earlier_release_loads_and_computes_the_same_outputs(release, name):
    folder = FIXTURES / release
    io = np.load(folder / "io.npz")
    features = {key[len("input_"):]: io[key] for key in io.files if key.startswith("input_")}
    model = load_model(str(folder / f"{name}.keras"))
    if name in ("sasrec", "fame", "hymoerec"):
        got = np.asarray(model.last_scores({"history": features["history"]}))
    else:
        got = np.asarray(model.probabilities(features))
    expected = io[f"output_{name}"]
    assert got.shape == expected.shape
    finite = np.isfinite(expected)
    assert np.array_equal(finite, np.isfinite(got)), "the padding column's -inf moved"
    # float32, a few layers deep: kernels of another TF version may round differently by ~1e-6 relative
    np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-5, atol=1e-5)


def test_fixtures_exist_for_the_models_that_matter():
    assert "v0.1.0" in RELEASES
    models = json.loads((FIXTURES / "v0.1.0" / "release.json").read_text())["models"]
    assert models == ["fame", "hymoerec", "mos_din", "sasrec"]
