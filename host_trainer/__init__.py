"""host-trainer: evolutionary synthesis with synaptic precision restriction (workstation side)."""

__version__ = "0.2.0"
