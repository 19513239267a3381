"""The dataset: checked traces selected into raw, SFT and preference sets, and exported."""
