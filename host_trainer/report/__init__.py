"""`host-trainer report RUN_DIR`: a run's figures and report.md.

- reading.py        the run's config and records, with one-line errors
- figures.py        the seed's Figures 2 and 3 (synapses and fps; precision, recall, accuracy per generation)
- fleet_figures.py  the closed loop's: the Pareto front, and fps per device per generation
- markdown.py       report.md
- labels.py         numbers and names the figures and report.md share
- writer.py         renders everything, then writes it atomically
"""
