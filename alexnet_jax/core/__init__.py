"""Foundations every other package uses: user errors, safe file writes, console progress,
the shared command-line behaviour and the XLA options set before JAX starts."""
