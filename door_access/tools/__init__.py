"""Commands around the door: setup, check, review, benchmarks, evaluations and the demo clip."""
