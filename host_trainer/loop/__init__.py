"""The run: generation after generation, written into the run directory (host_trainer/rundir.py).

- session.py     start and resume a run: every input checked before anything is written
- evolve.py      the generation loop: synthesise, compact, train, restrict, export, measure, select, land
- lineage.py     the members in memory, their seeds, generation 0's network, a resumed parent
- breeding.py    one offspring from its parent: importance, the cut, synthesis, compaction
- allocator.py   the loop's side of device-aware allocation: the latency model learns, the cut is spent
- training.py    fp32 training with synapse masks (the task gives labels and loss)
- epochs.py      what a training tells the user: the bar after every step, one `epoch` event after every epoch
- controller.py  the environmental factor α from the measured speed gap and the accuracy brake
- selection.py   the fittest of K offspring, and the Pareto front
- stopping.py    the early stops: goals met (--hold), a lineage that cut nothing (--patience)
- checkpoint.py  self-describing checkpoints (JSON + npz, no pickles)
- result.py      the run's result: a generation read back and written as final/ (deploy/), or loaded for Python
"""
