"""Data: what a run trains and evaluates on. Nothing is downloaded.

- types.py         the in-memory data-set types (classification and detection splits) the built-in sets fill
- classify.py      `digits` and `glyphs` in memory; the classification split rule; the errors for a bad reference
- detect.py        `shapes-det` in memory; the detection split rule; the errors for a bad reference
- stream.py        the user's sets, `imagefolder:PATH`, `coco:PATH` and `yolo:PATH`, streamed from disk a batch
                   at a time (their only reader; docs/data.md): stream_files.py (lazy file splits),
                   stream_arrays.py (in-memory splits as torch Datasets), stream_augment.py (seeded augmentation,
                   letterbox), stream_loader.py (`make_loader`)
- images.py        the user's image files: listing them, grey or colour, header sizes
- annotations.py   what the COCO and YOLO readers share
- coco.py, yolo.py the two annotation formats, checked, boxes normalised to their image
- yaml_names.py    class names from a YOLO data.yaml, without PyYAML
- splits.py        one way to read any split, in memory or streamed: a batch at a time, its first images
- presplit.py      a data set's own train/val/test split kept (or --split), val or test halved when one is missing
- options.py       --split, --mean, --std: parsed, resolved against the data (per-channel normalisation)
- batching.py      batches of a split for training, BatchNorm recalibration and the Taylor scores, in memory or
                   streamed
- procedural/      the generated sets (glyphs, shapes-det), their render pool and disk cache
"""
