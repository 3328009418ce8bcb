"""The method, one step per module (docs/method.md): what happens to a network between two generations.

- masks.py        which synapses exist: the prunable layers, dense masks, holding dropped synapses at zero
- importance.py   first-order Taylor importance of every cluster, one scale for the whole network
- allocation.py   device-aware allocation: a grouped knapsack that spends the cut in predicted milliseconds
- depth.py        residual blocks that can go whole, as items of the same knapsack
- synthesis.py    sample an offspring from its parent's synaptic strengths and the environmental factor α
- compaction.py   remove dropped clusters physically, checked against the masked parent (compacted == masked)
- coupling.py     the coupling plan of one architecture: which slices die with each cluster, which groups stay dense
- tracing.py      Torch-Pruning's dependency graph, with channel shuffles, slices and reshapes cut out as barriers
- surgery.py      cutting (and zeroing, in the masked twin) a plan's channels, grouped convolutions group by group
- restriction.py  synaptic precision restriction: round every parameter to fp16 (or bf16)
- export.py       one self-contained ONNX file (fp16 weights unless fp32), checked, compared with torch
- size.py         synapses, clusters, parameters and MACs of one network

Nothing here knows about runs, tasks, devices or the terminal.
"""
