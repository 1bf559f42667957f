"""Training stages: SFT (sft.py) and RL from verifiable rewards (rl.py)."""
