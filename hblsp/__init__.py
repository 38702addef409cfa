"""hblsp: the hb_compile config language server (uses engine, never the reverse).

`hblsp` (or `python -m hblsp`) serves LSP over stdio: diagnostics from the engine's own config
checks, completion, hover, quick fixes, outline and folding for hb_compile YAML configs. The map
of its modules is in `hblsp.server`'s docstring.
"""
