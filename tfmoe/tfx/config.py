"""The knobs of the TFX pipeline: one frozen :class:`PipelineConfig`, read from flags and ``TFMOE_*`` variables.

Nothing here imports TFX or TensorFlow, so configs are cheap to build and test. Every knob has an
environment variable (what the ``tfx`` CLI passes through, since it runs the pipeline file without
arguments) and a flag of ``python pipelines/moe_pipeline.py`` (flags win over the environment):

=================================  ==========================  ====================================================
variable                           flag                        meaning (default)
=================================  ==========================  ====================================================
``TFMOE_PIPELINE_NAME``            ``--pipeline-name``         pipeline name (``tfmoe-<model>``)
``TFMOE_HOME``                     ``--home``                  where everything below goes (``./runs/tfx``)
``TFMOE_PIPELINE_ROOT``            ``--pipeline-root``         artifacts (``<home>/pipeline_root/<name>``)
``TFMOE_METADATA_PATH``            ``--metadata-path``         MLMD SQLite file (``<home>/metadata/<name>.db``)
``TFMOE_SERVING_DIR``              ``--serving-dir``           Pusher base dir (``<home>/serving``); versions go to
                                                               ``<serving-dir>/<serving-model-name>/<version>``
``TFMOE_SERVING_MODEL_NAME``       ``--serving-model-name``    served model name (``recs``)
``TFMOE_DATA``                     ``--data``                  interaction logs (files or globs, comma separated);
                                                               empty: built-in synthetic data
``TFMOE_DATA_FORMAT``              ``--data-format``           reader format of ``tfmoe prepare`` (``tfmoe-synthetic``)
``TFMOE_PREPARE_OPTIONS``          ``--prepare-options``       JSON object of extra ``PrepareConfig`` fields
                                                               (``reader_options``, ``on_error``, ``kcore_items``,
                                                               ``session_gap_seconds``, ...) (``{}``)
``TFMOE_SYNTHETIC_PRESET``         ``--synthetic-preset``      synthetic preset ``tiny`` / ``small`` / ``medium``
                                                               (``small``)
``TFMOE_SEED``                     ``--seed``                  synthetic data and training seed (``0``)
``TFMOE_MODEL``                    ``--model``                 registry name: sasrec, fame, hymoerec, CTR models
                                                               (``sasrec``)
``TFMOE_TASK``                     ``--task``                  ``next_item`` / ``ctr`` (the model's task)
``TFMOE_MODEL_ARGS``               ``--model-args``            JSON object of model arguments (``{}``)
``TFMOE_TRAIN_CONFIG``             ``--train-config``          a TrainConfig JSON/YAML file (base of the settings)
``TFMOE_TRAIN_OVERRIDES``          ``--set``                   ``key=value`` overrides of the TrainConfig, ``;``
                                                               separated (flag: repeat), e.g. ``training.epochs=3``
``TFMOE_EPOCHS``                   ``--epochs``                training epochs (``10``, or the TrainConfig file's)
``TFMOE_MAX_LEN``                  ``--max-len``               history length (``50``, or the file's)
``TFMOE_BATCH_SIZE``               ``--batch-size``            global training batch (``128``, or the file's)
``TFMOE_STRATEGY``                 ``--strategy``              ``mirrored`` / ``multi_worker`` / ``tpu`` /
                                                               ``default`` (``mirrored``, or the file's)
``TFMOE_CPU_REPLICAS``             ``--cpu-replicas``          split the CPU into N logical devices for
                                                               MirroredStrategy without accelerators (``1``)
``TFMOE_HR_THRESHOLD``             ``--hr-threshold``          next-item blessing: HR@10 lower bound (``0.0``)
``TFMOE_AUC_THRESHOLD``            ``--auc-threshold``         CTR blessing: AUC lower bound (``0.5``)
``TFMOE_CHANGE_TOLERANCE``         ``--change-tolerance``      allowed drop of the gated metric vs the last
                                                               blessed model (``0.01``; negative: must improve)
``TFMOE_SCHEMA``                   ``--schema``                ``curated`` (ImportSchemaGen of
                                                               ``tfmoe/tfx/schema/schema.pbtxt``), ``infer``
                                                               (SchemaGen) or a schema.pbtxt path (``curated``)
``TFMOE_ENABLE_CACHE``             ``--no-cache``              reuse unchanged component results (``1``)
``TFMOE_BEAM_ARGS``                ``--beam-arg``              Beam options of the Beam-based components
                                                               (``--direct_num_workers=1``)
``TFMOE_RUNNER``                   ``--runner``                ``local`` (LocalDagRunner) or ``kubeflow_v2``
                                                               (compile a Vertex/KFP pipeline spec, do not run)
``TFMOE_IMAGE``                    ``--image``                 container image for ``kubeflow_v2``
``TFMOE_SPEC_PATH``                ``--spec-path``             where ``kubeflow_v2`` writes the spec JSON
                                                               (``<home>/<name>_pipeline.json``)
=================================  ==========================  ====================================================

Example:
    >>> from tfmoe.tfx.config import PipelineConfig
    >>> config = PipelineConfig.from_env({"TFMOE_HOME": "/tmp/h", "TFMOE_MODEL": "fame", "TFMOE_EPOCHS": "2"})
    >>> config.pipeline_name, config.epochs, config.pipeline_root
    ('tfmoe-fame', 2, '/tmp/h/pipeline_root/tfmoe-fame')
    >>> config.train_dict()["training"]["epochs"]
    2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
from dataclasses import dataclass, field

from tfmoe.utils.choices import STRATEGIES, TASKS

RUNNERS = ("local", "kubeflow_v2")
SCHEMA_MODES = ("curated", "infer")
PRESETS = ("tiny", "small", "medium")
CURATED_SCHEMA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema", "schema.pbtxt")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_KFP_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,127}$")
_OWNER = "PipelineConfig"


def _fail(message: str):
    raise ValueError(f"{_OWNER}: {message}")


def _bool(text) -> bool:
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    _fail(f"expected a boolean (1/0/true/false), got {text!r}")


def _abs(path: str) -> str:
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


@dataclass(frozen=True)
class PipelineConfig:
    """Every knob of the pipeline (see the module table). Paths are made absolute."""

    home: str = "runs/tfx"
    pipeline_name: str = ""
    pipeline_root: str = ""
    metadata_path: str = ""
    serving_dir: str = ""
    serving_model_name: str = "recs"
    data: tuple = ()
    data_format: str = "tfmoe-synthetic"
    prepare_options: dict = field(default_factory=dict)
    synthetic_preset: str = "small"
    seed: int = 0
    model: str = "sasrec"
    task: str = ""
    model_args: dict = field(default_factory=dict)
    train_config: str = ""
    train_overrides: tuple = ()
    epochs: int | None = None
    max_len: int | None = None
    batch_size: int | None = None
    strategy: str | None = None
    cpu_replicas: int = 1
    hr_threshold: float = 0.0
    auc_threshold: float = 0.5
    change_tolerance: float = 0.01
    schema: str = "curated"
    enable_cache: bool = True
    beam_args: tuple = ("--direct_num_workers=1",)
    runner: str = "local"
    image: str = "gcr.io/your-project/tfmoe:latest"
    spec_path: str = ""

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)
        set_("home", _abs(self.home))
        if not self.model or not isinstance(self.model, str):
            _fail(f"`model` must be a registry name, got {self.model!r}")
        name = self.pipeline_name or f"tfmoe-{self.model}"
        if not _NAME.match(name):
            _fail(f"`pipeline_name` must be letters, digits, '_', '.', '-', got {name!r}")
        set_("pipeline_name", name)
        set_("pipeline_root", _abs(self.pipeline_root or os.path.join(self.home, "pipeline_root", name)))
        set_("metadata_path", _abs(self.metadata_path or os.path.join(self.home, "metadata", f"{name}.db")))
        set_("serving_dir", _abs(self.serving_dir or os.path.join(self.home, "serving")))
        set_("spec_path", _abs(self.spec_path or os.path.join(self.home, f"{name}_pipeline.json")))
        if not _NAME.match(self.serving_model_name):
            _fail(f"`serving_model_name` must be letters, digits, '_', '.', '-', got {self.serving_model_name!r}")
        data = (self.data,) if isinstance(self.data, str) else tuple(self.data)
        set_("data", tuple(_abs(p) for p in data if p))
        if self.synthetic_preset not in PRESETS:
            _fail(f"`synthetic_preset` must be one of {PRESETS}, got {self.synthetic_preset!r}")
        if self.task and self.task not in TASKS:
            _fail(f"`task` must be one of {TASKS} (or empty: the model's task), got {self.task!r}")
        if not isinstance(self.prepare_options, dict):
            _fail(f"`prepare_options` must be a JSON object, got {self.prepare_options!r}")
        if {"format", "inputs", "output_dir"} & set(self.prepare_options):
            _fail("`prepare_options` must not set format, inputs or output_dir (use data / data_format)")
        if not isinstance(self.model_args, dict):
            _fail(f"`model_args` must be a JSON object, got {self.model_args!r}")
        for knob, minimum in (("seed", 0), ("epochs", 1), ("max_len", 2), ("batch_size", 1), ("cpu_replicas", 1)):
            value = getattr(self, knob)
            if value is None and knob in _UNSET_OK:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                _fail(f"`{knob}` must be an integer >= {minimum}, got {value!r}")
        for knob in ("hr_threshold", "auc_threshold", "change_tolerance"):
            value = getattr(self, knob)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                _fail(f"`{knob}` must be a number, got {value!r}")
            set_(knob, float(value))
        if self.strategy is not None and self.strategy not in STRATEGIES:
            _fail(f"`strategy` must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.schema not in SCHEMA_MODES:
            set_("schema", _abs(self.schema))
        if self.runner not in RUNNERS:
            _fail(f"`runner` must be one of {RUNNERS}, got {self.runner!r}")
        if self.runner == "kubeflow_v2" and not _KFP_NAME.match(name):
            _fail(f"Kubeflow / Vertex pipeline names must match [a-z0-9][a-z0-9-]{{0,127}}, got {name!r}")
        overrides = (self.train_overrides,) if isinstance(self.train_overrides, str) else tuple(self.train_overrides)
        for item in overrides:
            if "=" not in item:
                _fail(f"train overrides must be 'key=value', got {item!r}")
        set_("train_overrides", overrides)
        set_("beam_args", (self.beam_args,) if isinstance(self.beam_args, str) else tuple(self.beam_args))
        if self.train_config:
            set_("train_config", _abs(self.train_config))

    # ---- derived values ----
    @property
    def serving_model_dir(self) -> str:
        """The Pusher's base directory: ``<serving_dir>/<serving_model_name>`` (integer versions inside)."""
        return os.path.join(self.serving_dir, self.serving_model_name)

    @property
    def synthetic_dir(self) -> str:
        return os.path.join(self.home, "data", f"synthetic-{self.synthetic_preset}-seed{self.seed}")

    @property
    def schema_file(self) -> str | None:
        """The schema ImportSchemaGen imports, or ``None`` for SchemaGen's inference."""
        if self.schema == "infer":
            return None
        return CURATED_SCHEMA if self.schema == "curated" else self.schema

    def resolved_task(self) -> str:
        """``task``, or the registered task of ``model`` (imports the model registry, not TensorFlow)."""
        if self.task:
            return self.task
        from tfmoe.models import registry

        return registry.model_task(self.model)

    def train_dict(self) -> dict:
        """The TrainConfig dictionary the Trainer's ``run_fn`` gets (``data.dir`` and ``output_dir`` are added there).

        Layers, lowest first: the pipeline's defaults (:data:`TRAIN_DEFAULTS`: 10 epochs, history 50,
        batch 128, MirroredStrategy), the ``train_config`` file, the knobs that were set, then
        ``train_overrides`` (``run_fn`` applies them again through ``TrainConfig.override``).
        """
        out = json.loads(json.dumps(TRAIN_DEFAULTS))
        if self.train_config:
            _merge(out, load_mapping(self.train_config))
        knobs = {"data": {"max_len": self.max_len, "batch_size": self.batch_size},
                 "model": {**self.model_args, "name": self.model},
                 "training": {"epochs": self.epochs, "seed": self.seed, "strategy": self.strategy},
                 "task": self.task or None}
        _merge(out, knobs, skip_none=True)
        for item in self.train_overrides:
            dotted, raw = item.split("=", 1)
            *sections, key = dotted.strip().split(".")
            node = out
            for section in sections:
                node = node.setdefault(section, {})
            import yaml

            node[key] = yaml.safe_load(raw) if raw.strip() else None
        return out

    @property
    def effective_max_len(self) -> int:
        return int(self.train_dict()["data"]["max_len"])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # ---- construction ----
    @classmethod
    def from_env(cls, environ=None, **overrides) -> PipelineConfig:
        """A config from ``TFMOE_*`` variables of ``environ`` (default ``os.environ``), then ``overrides``."""
        environ = os.environ if environ is None else environ
        values = {}
        for knob, (variable, parse) in _ENV.items():
            text = environ.get(variable)
            if text is not None and text != "":
                try:
                    values[knob] = parse(text)
                except (ValueError, json.JSONDecodeError) as err:
                    _fail(f"bad value of {variable}={text!r}: {err}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


TRAIN_DEFAULTS = {"data": {"max_len": 50, "batch_size": 128},
                  "training": {"epochs": 10, "strategy": "mirrored", "verbose": 2}}  # verbose 2: a line per epoch
_UNSET_OK = ("epochs", "max_len", "batch_size")


def _merge(base: dict, update: dict, skip_none: bool = False) -> dict:
    """Deep-merges ``update`` into ``base`` (in place); ``skip_none`` leaves out ``None`` values."""
    for key, value in update.items():
        if skip_none and value is None:
            continue
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, skip_none)
        elif isinstance(value, dict):
            base[key] = _merge({}, value, skip_none)
        else:
            base[key] = value
    return base


def load_mapping(path: str) -> dict:
    """A JSON or YAML mapping from ``path`` (YAML needs PyYAML, which TFX installs)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith((".yaml", ".yml")):
        import yaml

        value = yaml.safe_load(text)
    else:
        value = json.loads(text)
    if not isinstance(value, dict):
        _fail(f"{path} must hold a mapping, got {type(value).__name__}")
    return value


def _list(text: str) -> tuple:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _overrides(text: str) -> tuple:
    return tuple(p.strip() for p in text.split(";") if p.strip())


def _json_object(text: str) -> dict:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


_ENV = {
    "home": ("TFMOE_HOME", str),
    "pipeline_name": ("TFMOE_PIPELINE_NAME", str),
    "pipeline_root": ("TFMOE_PIPELINE_ROOT", str),
    "metadata_path": ("TFMOE_METADATA_PATH", str),
    "serving_dir": ("TFMOE_SERVING_DIR", str),
    "serving_model_name": ("TFMOE_SERVING_MODEL_NAME", str),
    "data": ("TFMOE_DATA", _list),
    "data_format": ("TFMOE_DATA_FORMAT", str),
    "prepare_options": ("TFMOE_PREPARE_OPTIONS", _json_object),
    "synthetic_preset": ("TFMOE_SYNTHETIC_PRESET", str),
    "seed": ("TFMOE_SEED", int),
    "model": ("TFMOE_MODEL", str),
    "task": ("TFMOE_TASK", str),
    "model_args": ("TFMOE_MODEL_ARGS", _json_object),
    "train_config": ("TFMOE_TRAIN_CONFIG", str),
    "train_overrides": ("TFMOE_TRAIN_OVERRIDES", _overrides),
    "epochs": ("TFMOE_EPOCHS", int),
    "max_len": ("TFMOE_MAX_LEN", int),
    "batch_size": ("TFMOE_BATCH_SIZE", int),
    "strategy": ("TFMOE_STRATEGY", str),
    "cpu_replicas": ("TFMOE_CPU_REPLICAS", int),
    "hr_threshold": ("TFMOE_HR_THRESHOLD", float),
    "auc_threshold": ("TFMOE_AUC_THRESHOLD", float),
    "change_tolerance": ("TFMOE_CHANGE_TOLERANCE", float),
    "schema": ("TFMOE_SCHEMA", str),
    "enable_cache": ("TFMOE_ENABLE_CACHE", _bool),
    "beam_args": ("TFMOE_BEAM_ARGS", lambda t: tuple(t.split())),
    "runner": ("TFMOE_RUNNER", str),
    "image": ("TFMOE_IMAGE", str),
    "spec_path": ("TFMOE_SPEC_PATH", str),
}


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of ``python pipelines/moe_pipeline.py`` (every one defaults to the environment)."""
    flag = parser.add_argument
    flag("--home")
    flag("--pipeline-name")
    flag("--pipeline-root")
    flag("--metadata-path")
    flag("--serving-dir")
    flag("--serving-model-name")
    flag("--data", type=_list, help="interaction logs, comma separated (default: built-in synthetic data)")
    flag("--data-format")
    flag("--prepare-options", type=_json_object, help="JSON object of extra PrepareConfig fields")
    flag("--synthetic-preset", choices=PRESETS)
    flag("--seed", type=int)
    flag("--model")
    flag("--task", choices=TASKS)
    flag("--model-args", type=_json_object, help="JSON object of model arguments")
    flag("--train-config", help="TrainConfig JSON/YAML file")
    flag("--set", dest="train_overrides", action="append", metavar="KEY=VALUE",
         help="TrainConfig override, e.g. training.epochs=3 (repeatable)")
    flag("--epochs", type=int)
    flag("--max-len", type=int)
    flag("--batch-size", type=int)
    flag("--strategy", choices=STRATEGIES)
    flag("--cpu-replicas", type=int)
    flag("--hr-threshold", type=float)
    flag("--auc-threshold", type=float)
    flag("--change-tolerance", type=float)
    flag("--schema", help="curated, infer, or a schema.pbtxt path")
    flag("--no-cache", dest="enable_cache", action="store_const", const=False)
    flag("--beam-arg", dest="beam_args", action="append", metavar="--OPTION=VALUE")
    flag("--runner", choices=RUNNERS)
    flag("--image")
    flag("--spec-path")


def from_args(argv=None, environ=None) -> PipelineConfig:
    """Flags (see :func:`add_flags`) over ``TFMOE_*`` variables."""
    parser = argparse.ArgumentParser(prog="moe_pipeline.py", description="The tfmoe TFX pipeline.")
    add_flags(parser)
    args = vars(parser.parse_args(argv))
    return PipelineConfig.from_env(environ, **args)
