"""`python -m edge_evolver …` = `edge-evolver …`; the Jetson installer's wrapper script uses this
because pip on Python 3.6 cannot build this project's pyproject metadata."""

from .cli.app import main

if __name__ == "__main__":
    main()
