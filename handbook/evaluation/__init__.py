"""Offline evaluation of routing policies on recorded outcomes: the engine of `skillorchestra eval`."""
