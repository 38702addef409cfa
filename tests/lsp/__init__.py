"""LSP end-to-end tests: a real hblsp subprocess over stdio."""
