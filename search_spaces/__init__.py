"""Named Ray Tune search spaces over raydistill config keys."""
