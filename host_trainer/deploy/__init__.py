"""The deployable result: one generation as a folder anyone can run (final/; docs/deploy.md, docs/api.md).

- architecture.py  what rebuilds a compact network (also in every checkpoint), and the check of a stored one
- preprocess.py    preprocess.json's input side: decoding, resize or letterbox, normalisation; the data set's facts
                   a run records (dataset.json); `prepare`, the spec applied to one image
- outputs.py       preprocess.json's output side: logits, or the detector's layout and its decoding
- choose.py        which generation: the last accepted, a given one, or the fastest within a drop of the best
- final.py         final/'s layout, written atomically
- readme.py        final/README.md: ONNX Runtime, trtexec, edge-evolver bench, PyTorch
- loading.py       `Deployed`, and reading a final/ folder back

Reading a run's generation (its checkpoint) and writing its final/ is the run's business: loop/result.py.
"""

from host_trainer.deploy.choose import PICKS, Choice, choose
from host_trainer.deploy.final import FILES, Result, write_final
from host_trainer.deploy.loading import Deployed, load_final, rebuild
from host_trainer.deploy.outputs import output_spec
from host_trainer.deploy.preprocess import dataset_facts, preprocess_spec

__all__ = ["FILES", "PICKS", "Choice", "Deployed", "Result", "choose", "dataset_facts", "load_final",
           "output_spec", "preprocess_spec", "rebuild", "write_final"]
