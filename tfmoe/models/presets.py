"""Named model settings: each is a registered model and its options, ready for ``Model.from_preset``.

A preset holds what does not depend on the data: the model's name, its options and the history
length it was tuned for (``max_len``). The data adds ``num_items`` (and ``num_categories`` for CTR).

===========================  =====================================================================
preset                       settings
===========================  =====================================================================
``sasrec_ml1m``              SASRec as the reference code of Klenitskiy & Vasilev (RecSys'23, "Turning
                             Dross Into Gold Loss"): d 64, 2 blocks, 1 head, dropout 0.1, FFN d -> d
                             with ReLU, N(0, 0.02^2) weights, their LayerNorm order; length 200
``fame_ml1m``                FAME at the same settings, 2 heads, 2 experts per head
``hymoerec_ml1m``            HyMoERec at the same settings, top-2 of 4 experts of inner size 2d
``sasrec_beauty``            SASRec on Amazon Beauty: d 64, 1 block, 1 head, dropout 0.2; length 50
``fame_beauty``              FAME at the Beauty settings
``hymoerec_beauty``          HyMoERec at the Beauty settings, top-2 of 4 experts
``mos_din_ml1m_ctr``         MoS around DIN for long-sequence CTR: 8 themes of 7 chunk sessions of 20
                             items, length 1,000
===========================  =====================================================================

The next-item presets are the next-item benchmark's main settings (``benchmarks/next_item.py`` reads
them); ``configs/`` names them with ``model: {preset: ...}``.

Examples:
    >>> from tfmoe.models import presets
    >>> preset = presets.get("hymoerec_ml1m")
    >>> preset["model"], preset["max_len"], preset["options"]["expert_hidden_dim"]
    ('hymoerec', 200, 128)
    >>> "sasrec_ml1m" in presets.available("sasrec")
    True
"""

from __future__ import annotations

import copy

# SASRec of the RecSys'23 reference code (their ML-1M settings).
RECSYS23_SASREC = {"hidden_dim": 64, "num_blocks": 2, "dropout": 0.1, "initializer_range": 0.02, "inner_dim": 64,
                   "activation": "relu", "norm": "sasrec", "positions": "absolute"}
BEAUTY = {"hidden_dim": 64, "num_blocks": 1, "dropout": 0.2}
SASREC = {"num_heads": 1}
FAME = {"num_heads": 2, "num_experts": 2, "item_projection_init": "chunks"}
HYMOEREC = {"num_heads": 1, "num_experts": 4, "k": 2, "warmup_steps": 50, "entropy_loss_weight": 0.01}

_PRESETS = {
    "sasrec_ml1m": ("sasrec", 200, {**RECSYS23_SASREC, **SASREC}),
    "fame_ml1m": ("fame", 200, {**RECSYS23_SASREC, **FAME}),
    "hymoerec_ml1m": ("hymoerec", 200, {**RECSYS23_SASREC, **HYMOEREC, "expert_hidden_dim": 128}),
    "sasrec_beauty": ("sasrec", 50, {**BEAUTY, **SASREC}),
    "fame_beauty": ("fame", 50, {**BEAUTY, **FAME}),
    "hymoerec_beauty": ("hymoerec", 50, {**BEAUTY, **HYMOEREC}),
    "mos_din_ml1m_ctr": ("mos_din", 1000, {"embedding_dim": 64, "mlp_units": [200, 80], "dropout": 0.1,
                                           "session_mode": "chunk", "session_length": 20, "num_themes": 8,
                                           "sessions_per_theme": 7, "short_window": 50}),
}


def available(model: str | None = None) -> list[str]:
    """Preset names, all or those of one registered model name."""
    return sorted(name for name, (m, _, _) in _PRESETS.items() if model is None or m == model)


def get(name: str) -> dict:
    """``{"model", "max_len", "options"}`` of preset ``name`` (a copy); ``ValueError`` naming the known ones."""
    if name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(available())}")
    model, max_len, options = _PRESETS[name]
    return {"model": model, "max_len": max_len, "options": copy.deepcopy(options)}


def build(name: str, **kwargs):
    """The model of preset ``name``; ``kwargs`` add the data's sizes (``num_items``, ...) and override options."""
    from tfmoe.models import registry

    preset = get(name)
    options = {"max_len": preset["max_len"], **preset["options"], **kwargs}
    return registry.build_model(preset["model"], **options)
