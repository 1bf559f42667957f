"""r1lab: build reasoning language models — curate, distil (SFT), reinforce (RLVR), evaluate."""

__version__ = "0.1.0"
