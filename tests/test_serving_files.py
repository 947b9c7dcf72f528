"""The deployment folder serving/: its config files and commands are what tfmoe.serving.config writes."""

from __future__ import annotations

import pathlib

from tfmoe.serving import config

ROOT = pathlib.Path(__file__).resolve().parents[1]
FOLDER = ROOT / "serving"


def test_committed_configs_equal_what_write_server_configs_writes(tmp_path):
    files = config.write_server_configs(tmp_path, [config.ModelEntry("recs")], mount_point="/models")
    assert files.model_config_file == "/models/models.config"
    for name in (config.MODEL_CONFIG_FILE, config.BATCHING_CONFIG_FILE, config.MONITORING_CONFIG_FILE):
        assert (FOLDER / name).read_text() == (tmp_path / name).read_text(), f"serving/{name} is stale"
    entry = config.read_model_config(FOLDER / config.MODEL_CONFIG_FILE)
    assert [(m.name, m.base_path, m.version_policy, m.num_versions) for m in entry] == [("recs", "/models/recs",
                                                                                           "latest", 1)]


def test_readme_docker_line_is_docker_command_for_this_folder():
    files = config.ServerFiles("/models/models.config", "/models/batching.config", "/models/monitoring.config",
                               host_dir="$PWD/serving", mount_point="/models")
    line = " ".join(config.docker_command(files))
    assert f"    {line}" in (FOLDER / "README.md").read_text().splitlines()
