"""Packaging: every imported package is declared, and the wheel installs and imports on the Colab stack.

The wheel test builds ``tfmoe`` as ``pip`` would, installs it with its ``[serving]`` extra into a fresh
Python 3.12 venv (versions constrained to ``requirements-modern.lock``), and imports it from a directory
outside the repository, where the generic top-level names ``serving`` and ``pipelines`` must not exist.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Import name -> distribution, where they differ.
DISTRIBUTION = {"yaml": "pyyaml", "grpc": "grpcio", "tensorflow_serving": "tensorflow-serving-api",
                "apache_beam": "apache-beam", "google.protobuf": "protobuf", "absl": "absl-py",
                "tensorflow_model_analysis": "tensorflow-model-analysis", "ml_metadata": "ml-metadata",
                "tensorflow_metadata": "tensorflow-metadata"}
# Which requirement group must declare the imports of a subpackage (the rest of tfmoe: the core).
GROUP = {"serving": "serving", "tfx": "tfx"}


def _third_party_imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        for module in modules:
            top = module.split(".")[0]
            if top == "tfmoe" or top in sys.stdlib_module_names:
                continue
            names.add("google.protobuf" if module.startswith("google.protobuf") else top)
    return names


def _declared() -> dict[str, set[str]]:
    groups: dict[str, set[str]] = {"core": set()}
    for requirement in importlib.metadata.requires("tfmoe") or []:
        name = re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0).lower().replace("_", "-")
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", requirement)
        groups.setdefault(extra.group(1) if extra else "core", set()).add(name)
    return groups


def test_every_imported_package_is_declared_in_its_group():
    declared = _declared()
    missing = []
    for path in sorted((ROOT / "tfmoe").rglob("*.py")):
        parts = path.relative_to(ROOT / "tfmoe").parts
        group = GROUP.get(parts[0], "core") if len(parts) > 1 else "core"
        allowed = declared["core"] | declared.get(group, set())
        for module in _third_party_imports(path):
            distribution = DISTRIBUTION.get(module, module).lower().replace("_", "-")
            if distribution not in allowed:
                missing.append(f"{path.relative_to(ROOT)} imports {module} ({distribution}, group {group!r})")
    assert not missing, "undeclared imports:\n" + "\n".join(missing)


def test_declared_groups_and_the_dropped_dependency():
    declared = _declared()
    assert {"tensorflow", "keras", "numpy", "pyyaml", "tensorboard", "apache-beam"} <= declared["core"]
    assert {"tensorflow-serving-api", "grpcio"} <= declared["serving"]
    assert "tfx" in declared["tfx"] and "tfx" not in declared["core"]
    assert not any("recommenders" in name for names in declared.values() for name in names)
    numpy = [r for r in importlib.metadata.requires("tfmoe") if r.startswith("numpy")]
    assert any("<2" in r and "python_version < \"3.11\"" in r.replace("'", '"') for r in numpy), numpy


def test_top_level_folders_hold_no_importable_packages():
    for folder in ("serving", "pipelines"):
        assert not list((ROOT / folder).glob("*.py")) or folder == "pipelines"
        assert not (ROOT / folder / "__init__.py").exists(), f"{folder}/ must not be a package"
    assert [p.name for p in (ROOT / "pipelines").glob("*.py")] == ["moe_pipeline.py"]


def _python312() -> str:
    """A Python 3.12 interpreter, found as scripts/_find_python.sh finds it."""
    pyenv = pathlib.Path(os.environ.get("PYENV_ROOT", pathlib.Path.home() / ".pyenv"))
    candidates = [os.environ.get("TFMOE_PYTHON312"), shutil.which("python3.12"),
                  *map(str, sorted(pyenv.glob("versions/3.12*/bin/python3.12"))), "/usr/bin/python3.12"]
    for candidate in filter(None, candidates):
        done = subprocess.run([candidate, "-c", "import sys; print(sys.executable, sys.version_info[:2] == (3, 12))"],
                              capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.split()[-1] == "True":
            return done.stdout.split()[0]
    pytest.fail("Python 3.12 not found: put python3.12 on PATH or set TFMOE_PYTHON312")


@pytest.mark.e2e
@pytest.mark.slow
def test_wheel_installs_into_a_fresh_python312_venv_and_imports_outside_the_repo(tmp_path):
    uv = ROOT / ".tools" / "bin" / "uv"
    if not uv.exists():
        pytest.fail("uv is missing: run bash scripts/setup_env.sh first")
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(dist), str(ROOT)], check=True, cwd=tmp_path)
    wheel = next(dist.glob("tfmoe-*.whl"))
    assert wheel.name.startswith("tfmoe-0.2.0-py3-none-any")
    # the lock's pins without its hashes, as constraints
    pins = [line.split(" ")[0] for line in (ROOT / "requirements-modern.lock").read_text().splitlines()
            if re.match(r"^[A-Za-z0-9]", line)]
    (tmp_path / "constraints.txt").write_text("\n".join(pins) + "\n")
    python312 = _python312()
    venv = tmp_path / "venv"
    subprocess.run([str(uv), "venv", "--quiet", "--python", python312, str(venv)], check=True, cwd=tmp_path)
    subprocess.run([str(uv), "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"),
                    "-c", str(tmp_path / "constraints.txt"), f"tfmoe[serving] @ {wheel.as_uri()}"],
                   check=True, cwd=tmp_path)
    code = (
        "import importlib, sys\n"
        "import tfmoe.layers, tfmoe.models, tfmoe.serving.client, tfmoe.serving.export, tfmoe.metrics\n"
        "import tensorflow as tf, numpy as np, keras\n"
        "layer = tfmoe.layers.MixtureOfExperts(num_experts=2, hidden_dim=4)\n"
        "print(tuple(layer(np.zeros((1, 3, 4), 'float32')).shape), tf.__version__, np.__version__, keras.__version__)\n"
        "for name in ('serving', 'pipelines'):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError:\n"
        "        print(name, 'absent')\n"
    )
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    done = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=outside, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("(1, 3, 4) 2.21.0 2.")
    assert lines[1:] == ["serving absent", "pipelines absent"]
