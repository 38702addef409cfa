"""The config schema, shipped as package data so installed copies find it (`schema_path()`)."""

from importlib import resources
from pathlib import Path

SCHEMA_FILE = "hb_compile.schema.json"


def schema_path() -> Path:
    return Path(str(resources.files(__name__) / SCHEMA_FILE))
