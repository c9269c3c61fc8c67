"""The whole reproduction as one resumable command (``python -m dmnt_lib reproduce``).

``pipeline``: stages, manifests, the skip / resume / refuse rules; ``stages``: the real stages and
their presets (tiny, quick, full); ``cli``: the command and its summary.
"""

from .pipeline import ConfigChanged, Pipeline, Stage, StageFailed, config_hash

__all__ = ["ConfigChanged", "Pipeline", "Stage", "StageFailed", "config_hash"]
