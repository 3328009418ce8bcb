"""The method, one step per module (docs/method.md): what happens to a network between two generations.

- masks.py        which synapses exist: the prunable layers, dense masks, holding dropped synapses at zero
- importance.py   first-order Taylor importance of every cluster, one scale for the whole network
- allocation.py   device-aware allocation: a grouped knapsack that spends the cut in predicted milliseconds
- depth.py        residual blocks that can go whole, as items of the same knapsack
- synthesis.py    sample an offspring from its parent's synaptic strengths and the environmental factor α
- compaction.py   remove dropped clusters physically, through Torch-Pruning's dependency graph
- restriction.py  synaptic precision restriction: round every parameter to fp16 (or bf16)
- export.py       one self-contained ONNX file (fp16 weights unless fp32), checked, compared with torch
- size.py         synapses, clusters, parameters and MACs of one network

Nothing here knows about runs, tasks, devices or the terminal.
"""
