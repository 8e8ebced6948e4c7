"""Sub-commands of `fdhclean`, discovered by `fdhclean.cli` (one module per command)."""
