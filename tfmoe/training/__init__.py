"""tfmoe.training: one config-driven trainer for every tfmoe model (``tfmoe train`` on the command line).

Example:
    >>> from tfmoe.training import TrainConfig
    >>> TrainConfig.from_dict({"data": {"dir": "prepared"}, "model": {"name": "fame"}}).model_name
    'fame'
"""

from tfmoe.training.config import TrainConfig
from tfmoe.training.run_settings import RunSettingsError
from tfmoe.training.strategies import get_strategy
from tfmoe.training.trainer import TrainResult, evaluate_best, load_result, train

__all__ = ["RunSettingsError", "TrainConfig", "TrainResult", "evaluate_best", "get_strategy", "load_result", "train"]
