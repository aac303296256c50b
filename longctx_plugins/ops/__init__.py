"""Pure-torch math: no transformers import anywhere under ``ops/``."""
