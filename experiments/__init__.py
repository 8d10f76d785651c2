"""Experiments: the main job (glue_ac), RL benchmarking, reports."""
