"""`make bench` and `make soak`: measurements against ceilings and peers (see __main__.py)."""
