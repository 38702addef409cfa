"""Config: YAML text → validated, typed `Config` (see `loader`), with problems on exact tokens."""

from engine.config.loader import LoadResult, load_config, load_config_text, read_config
from engine.config.model import Config

__all__ = ["Config", "LoadResult", "load_config", "load_config_text", "read_config"]
