"""The paper's figures (appendix B: Figs. 4-6) and the L0-L3 results table, drawn from the
per-image records ``evaluate`` writes. ``records``: reading them and the selection rules;
``paper``: the figures; ``cli``: ``python -m dmnt_lib figures``."""

from .records import (FAILURE_KINDS, Record, decode_mask, encode_mask, failure_cases, failure_kinds, load_records,
                      normalize, pick_per_category, pick_successes, select_failures)

__all__ = ["FAILURE_KINDS", "Record", "decode_mask", "encode_mask", "failure_cases", "failure_kinds",
           "load_records", "normalize", "pick_per_category", "pick_successes", "select_failures"]
