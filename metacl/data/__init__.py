"""Data for continual knowledge learning: the LAMA-ckl loader and generated worlds.

See docs/architecture.md. `lama` loads and validates the official schema; `world` generates
fictional worlds written in that same schema.
"""

from metacl.core.probes import probe_split
from metacl.data.lama import CklData, LamaItem, load_ckl_data, load_lama_jsonl

__all__ = ["CklData", "LamaItem", "load_ckl_data", "load_lama_jsonl", "probe_split"]
