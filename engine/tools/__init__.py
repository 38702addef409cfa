"""Command-line tools besides hb_compile: `hb_model_info` (what a model holds) and `hb_verifier`
(two models on the same input: cosine, or bit-exact consistency of `.bc` and `.hbm`)."""
