"""LungLens engine: train, evaluate and explain CNN classifiers of chest images, with every result cached on disk.

The dashboard pages use only what this module exports. Names are imported on first use (PEP 562), so
``import engine`` stays cheap and a submodule can be imported without loading torch.
"""
from __future__ import annotations

import importlib
from typing import Any

from .version import ENGINE_VERSION as __version__

_EXPORTS: dict[str, str] = {
    "PRESETS": "config", "Preset": "config", "RunConfig": "config", "preset": "config",
    "Dataset": "data.dataset", "load_dataset": "data.sources",
    "pick_device": "device",
    "ConfigError": "errors", "DamagedRunError": "errors", "DataError": "errors", "StoreError": "errors",
    "LungLensError": "errors", "WeightsError": "errors",
    "CRITERIA": "metrics",
    "ExternalRun": "external", "evaluate_external": "external", "external_view": "external",
    "OOD_PERCENTILE": "ood", "check_unlike": "ood", "ood_reference": "ood",
    "fit_temperature": "calibration", "run_calibration": "calibration", "run_operating_point": "calibration",
    "run_temperature": "calibration",
    "fold_roc": "crossval", "fold_runs": "crossval",
    "BACKBONES": "models.names", "N_BLOCKS": "models.names",
    "Run": "runs", "damaged_runs": "runs", "delete_run": "runs", "get_run": "runs", "list_runs": "runs",
    "load_run": "runs", "train_run": "runs",
    "home": "store",
    "RUN_DONE": "sweep", "SweepRow": "sweep", "executor_from_env": "sweep", "run_sweep": "sweep",
    "sweep_configs": "sweep",
    "Progress": "training",
    "DataSummary": "data_summary", "data_summary": "data_summary", "infection_spread": "data_summary",
    "TrainingEstimate": "estimate", "duration": "estimate", "estimate_training": "estimate",
    "train_missing": "train_job",
    "VOLUME_BACKBONES": "models.names",
    "SIZE_GROUPS": "ouyang", "VARIANTS": "ouyang", "format_mean_sd": "ouyang", "missing_configs": "ouyang",
    "size_table": "ouyang", "variant_configs": "ouyang", "variant_rocs": "ouyang", "variant_table": "ouyang",
    "infection_ratios": "guidance",
    "attention_effect": "ouyang", "support_comparison": "shortcut",
    "TOPOLOGY_VIEWS": "topology", "run_block_change": "topology", "run_topology": "topology",
    "surrogate_fidelity": "surrogate", "surrogate_inputs": "surrogate", "surrogate_path": "surrogate",
    "surrogate_tree": "surrogate",
    "augmentation_effect": "cheng", "augmentation_table": "cheng", "backbone_configs": "cheng",
    "backbone_runs": "cheng", "check_backbones": "cheng", "class_order": "cheng", "improved": "cheng",
    "table1_view": "cheng", "untrained_configs": "cheng",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'engine' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
