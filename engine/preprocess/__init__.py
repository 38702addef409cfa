"""Input preprocessing built into models: normalization and runtime input conversion (re-exports)."""

from engine.preprocess.conversion import (
    INPUT_TYPES,
    ConversionGraph,
    InputType,
    RuntimeInput,
    attach_input_conversion,
    build_input_conversion,
    check_conversion,
    conversion_affine_for,
    legal_conversions,
    runtime_input,
)
from engine.preprocess.normalization import (
    Normalization,
    find_normalization,
    insert_normalization,
    normalized_name,
    preprocess_prefix,
    remove_normalization,
)

__all__ = [
    "INPUT_TYPES", "ConversionGraph", "InputType", "Normalization", "RuntimeInput", "attach_input_conversion",
    "build_input_conversion", "check_conversion", "conversion_affine_for", "find_normalization",
    "insert_normalization", "legal_conversions", "normalized_name", "preprocess_prefix", "remove_normalization",
    "runtime_input",
]
