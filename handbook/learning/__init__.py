"""Offline learning of the Skill Handbook from outcome traces: discovery, identification, profiling,
refinement, selection, and the replay evaluator they are all checked with."""
