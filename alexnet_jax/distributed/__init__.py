"""The processes of a multi-process run, on JAX's public API: environment.py (who they are,
from the flags or the launcher), rollcall.py (they meet before JAX starts), startup.py
(init_distributed), watch.py (a lost process stops the others) and agreement.py (one config)."""
