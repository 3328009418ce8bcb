"""Procedural data sets, generated deterministically on this machine and cached on disk.

- glyphs.py      47 character classes rendered from the fonts matplotlib ships (classification)
- shapes_det.py  six shape classes on cluttered backgrounds, with exact boxes (detection)
- pool.py        rendering in chunks, in a fork pool when that pays
- cache.py       the `.npz` disk cache under $EDGE_EVOLVER_CACHE
"""
