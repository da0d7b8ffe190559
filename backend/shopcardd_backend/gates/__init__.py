"""The claim gate: the one atomic step that decides a claim (see ``base.py``)."""
