"""The foundation: fast import, CLI, locked environment, validation messages, 2-replica test devices."""

import importlib.metadata
import pathlib
import re
import subprocess
import sys
import time

import pytest

from tfmoe.utils import validation as v

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_import_tfmoe_is_fast_and_loads_neither_tfx_nor_tensorflow():
    code = (
        "import sys, time; t = time.perf_counter(); import tfmoe; dt = time.perf_counter() - t; "
        "print(dt, 'tfx' in sys.modules, 'tensorflow' in sys.modules, 'apache_beam' in sys.modules)"
    )
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    wall = time.perf_counter() - start
    assert out[1:] == ["False", "False", "False"], f"import tfmoe pulled heavy modules: {out}"
    assert float(out[0]) < 10 and wall < 10


def test_layers_import_does_not_load_tfx():
    code = "import sys; from tfmoe import layers; print('tfx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_cli_help_and_version():
    out = subprocess.run([sys.executable, "-m", "tfmoe.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and re.fullmatch(r"tfmoe \d+\.\d+\.\d+\s*", out.stdout)
    out = subprocess.run([sys.executable, "-m", "tfmoe.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("quickstart", "synthesize", "prepare"):
        assert command in out.stdout


def _locked_versions(lock: str):
    pins = {}
    for line in (ROOT / lock).read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;\\]+)", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def test_tfx_lock_pins_the_verified_stack():
    pins = _locked_versions("requirements.lock")
    assert pins["tensorflow"] == "2.16.2"
    assert pins["tfx"] == "1.16.0"
    assert pins["tensorflow-serving-api"] == "2.16.1"
    assert pins["keras"].startswith("3.") and pins["numpy"].startswith("1.")
    for name in ("dill", "pytest", "ruff", "pip", "apache-beam", "pyyaml", "tensorboard"):
        assert name in pins, f"{name} missing from requirements.lock"
    assert "tensorflow-recommenders" not in pins


def test_modern_lock_pins_the_colab_stack_without_tfx():
    pins = _locked_versions("requirements-modern.lock")
    assert pins["tensorflow"] == "2.21.0" and pins["tensorflow-serving-api"] == "2.21.0"
    assert pins["keras"].startswith("3.15") and pins["numpy"].startswith("2.")
    for name in ("apache-beam", "pyyaml", "tensorboard", "grpcio", "nbclient", "matplotlib", "pytest"):
        assert name in pins, f"{name} missing from requirements-modern.lock"
    assert "tfx" not in pins


def test_the_environment_matches_its_lock():
    lock = "requirements.lock" if sys.version_info[:2] == (3, 10) else "requirements-modern.lock"
    pins = _locked_versions(lock)
    for name in ("tensorflow", "keras", "numpy", "protobuf", "apache-beam", "tensorflow-serving-api", "tensorboard"):
        assert importlib.metadata.version(name) == pins[name], f"{name} installed differs from {lock}"


def test_mirrored_strategy_has_two_replicas_on_cpu():
    import tensorflow as tf

    assert tf.distribute.MirroredStrategy().num_replicas_in_sync == 2


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: v.check_int("Layer", "units", 0, minimum=1), r"Layer: `units` must be an integer >= 1, got 0"),
        (lambda: v.check_int("Layer", "units", 2.5), r"`units` must be an integer, got 2.5 of type float"),
        (lambda: v.check_int("Layer", "k", True), r"`k` must be an integer, got True of type bool"),
        (lambda: v.check_int("R", "k", 9, 1, 8), r"R: `k` must be an integer in \[1, 8\], got 9"),
        (lambda: v.check_float("L", "rate", 1.0, 0.0, 1.0, max_inclusive=False), r"`rate` .* in \[0.0, 1.0\), got 1.0"),
        (lambda: v.check_float("L", "t", float("nan"), 0.0), r"`t` must be a finite number >= 0.0, got nan"),
        (lambda: v.check_choice("L", "mode", "x", ("a", "b")), r"`mode` must be one of 'a', 'b'; got 'x'"),
        (lambda: v.check_bool("L", "flag", 1), r"`flag` must be True or False, got 1 of type int"),
        (lambda: v.check_int_sequence("L", "units", [4, 0]), r"`units\[1\]` must be an integer >= 1, got 0"),
        (lambda: v.check_int_sequence("L", "units", []), r"`units` must not be empty"),
    ],
)
def test_validation_errors_name_owner_argument_and_value(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_validation_returns_normalised_values():
    import numpy as np

    assert v.check_int("L", "n", np.int64(3)) == 3 and isinstance(v.check_int("L", "n", np.int64(3)), int)
    assert v.check_float("L", "x", 2) == 2.0
    assert v.check_int_sequence("L", "u", (1, 2)) == [1, 2]


def test_write_atomic_replaces_whole_files_and_leaves_nothing_behind(tmp_path):
    from tfmoe.utils.files import write_atomic

    path = tmp_path / "models" / "models.config"
    assert write_atomic(str(path), "first") == str(path)  # creates the folder
    write_atomic(path, b"\x00second")
    assert path.read_bytes() == b"\x00second"
    write_atomic(str(path), "dritte \u00fc")
    assert path.read_text(encoding="utf-8") == "dritte \u00fc"
    with pytest.raises(TypeError):  # fails after the temporary file was opened
        write_atomic(str(path), 3)
    assert path.read_text(encoding="utf-8") == "dritte \u00fc"
    assert sorted(p.name for p in path.parent.iterdir()) == ["models.config"]
