"""Offline evaluation of routing policies on recorded outcomes: the engine of `skillorchestra eval`."""

# here, not in episodes.py: the CLI's parser names them without loading the evaluation stack (numpy, the service)
DEFAULT_EPISODES = 200
MAX_EPISODES = 100_000  # --episodes' bound (QA: 1e11 ran for ten minutes at 1.45 GB before it was killed)
