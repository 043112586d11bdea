"""The ``potluck`` command line. Thin: each module wires components together."""
