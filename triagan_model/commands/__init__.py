"""Sub-commands of `triagan`, discovered by `triagan_model.cli` (one module per command)."""
