"""Accuracy tooling on top of the quantizer (issue #10)."""
