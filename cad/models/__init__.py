"""Built-in CAD model scripts. Each ``*.py`` here is a model (see cad/script.py for the format)."""
