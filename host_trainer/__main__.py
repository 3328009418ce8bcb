"""`python -m host_trainer …` = `host-trainer …`."""

from host_trainer.cli import main

if __name__ == "__main__":
    main()
