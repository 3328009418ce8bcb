"""Data: what a run trains and evaluates on. Nothing is downloaded.

- types.py         the data-set types (classification and detection splits) every loader fills
- classify.py      `digits`, `glyphs` and `imagefolder:PATH`
- detect.py        `shapes-det`, `coco:PATH` and `yolo:PATH`, cut into seeded splits
- images.py        reading the user's image files (grey or colour, resized)
- annotations.py   what the COCO and YOLO readers share
- coco.py, yolo.py the two annotation formats
- yaml_names.py    class names from a YOLO data.yaml, without PyYAML
- stream.py        the same user sets streamed from disk a batch at a time (docs/data.md): stream_files.py
                   (lazy file splits), stream_arrays.py (in-memory splits as torch Datasets), stream_augment.py
                   (seeded augmentation), stream_loader.py (`make_loader`)
- procedural/      the generated sets (glyphs, shapes-det), their render pool and disk cache
"""
