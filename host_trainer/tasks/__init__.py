"""What a task decides; everything else in a run is shared.

- base.py            the `Task` interface the training loop, the generation loop and the measurers ask
- classify.py        classification: cross-entropy (with optional distillation), accuracy and macro P/R,
                     top-1 parity, the device's top-1 check
- detect.py          detection: heat-map labels and loss, mAP@0.5 and P/R, box parity, the device's box check
- heatmap.py         the detector's dense labels (centre heat-map, offsets, sizes) and CenterNet's loss
- detect_metrics.py  precision, recall and COCO's mAP@0.5
- registry.py        the task of a run, by name
"""
