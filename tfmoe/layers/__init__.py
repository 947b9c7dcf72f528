"""tfmoe.layers: Keras 3 building blocks for mixture-of-experts sequential recommenders.

Usable on their own in any Keras 3 model::

    import keras
    from tfmoe import layers

    x = keras.Input((50, 64))
    y = layers.HybridMoEFeedForward(hidden_dim=256, num_experts=8, k=2)(x)

Every layer is registered for Keras serialization under the ``tfmoe`` package, so models that use
them save to and load from ``.keras`` files once ``tfmoe.layers`` is imported.

| group | layers |
|---|---|
| routers | :class:`SoftmaxRouter`, :class:`TopKRouter`, :class:`ExpertChoiceRouter` |
| experts | :class:`FeedForward`, :class:`ExpertBank` |
| MoE FFN | :class:`MixtureOfExperts` (dense, sparse top-k, expert choice), :class:`HybridMoEFeedForward` |
| attention | :class:`MultiHeadMoEAttention` (FAME), :class:`BitDropout` (dropout of its maps) |
| MoS | :class:`SessionGrouper`, :class:`SessionThemeRouter`, :class:`MultiScaleFusion` |
| logging | :class:`RoutingStatsLogger` (TensorBoard routing statistics) |
"""

from tfmoe.layers import losses, masking
from tfmoe.layers.attention import MultiHeadMoEAttention
from tfmoe.layers.dropout import BitDropout
from tfmoe.layers.experts import ExpertBank, FeedForward
from tfmoe.layers.fusion import MultiScaleFusion
from tfmoe.layers.hybrid import HybridMoEFeedForward
from tfmoe.layers.moe import MixtureOfExperts
from tfmoe.layers.routers import ExpertChoiceRouter, SoftmaxRouter, TopKRouter, expert_capacity
from tfmoe.layers.routing_stats import RoutingStatsLogger, collect_routing_statistics
from tfmoe.layers.session_router import SessionThemeRouter, select_target_themes
from tfmoe.layers.sessions import SessionGrouper, chunk_positions, gather_grid, session_positions

__all__ = [
    "BitDropout",
    "ExpertBank",
    "ExpertChoiceRouter",
    "FeedForward",
    "HybridMoEFeedForward",
    "MixtureOfExperts",
    "MultiHeadMoEAttention",
    "MultiScaleFusion",
    "RoutingStatsLogger",
    "SessionGrouper",
    "SessionThemeRouter",
    "SoftmaxRouter",
    "TopKRouter",
    "chunk_positions",
    "collect_routing_statistics",
    "expert_capacity",
    "gather_grid",
    "losses",
    "masking",
    "select_target_themes",
    "session_positions",
]
