"""Networks to evolve.

- classifiers.py  the built-in classifiers: mlp (LeNet-300-100), lenet5, vgg-small, resnet-small
- detectors.py    det-small, the built-in anchor-free detector (docs/detection.md)
- registry.py     models by name, the user's `file.py:factory`, and the layers that never lose clusters
- weights.py      the user's trained weights (--weights): a torch.save state_dict or a safetensors file
- input_fit.py    do those weights fit the data's channels and --image-size? (one line saying what to set)
"""
