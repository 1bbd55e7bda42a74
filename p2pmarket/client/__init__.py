"""Buying: discovery in the DHT, the best-response planner, the buyer workflow."""
