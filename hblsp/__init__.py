"""hblsp: the hb_compile config language server and daemon (uses engine, never the reverse)."""
