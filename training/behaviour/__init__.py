"""Behaviour policies for the offline datasets: online MATD3 and the shipped checkpoints."""
