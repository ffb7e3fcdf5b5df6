"""Checkpoints: the embedded demo weights, the registry of published ones, and the only download."""

from pathlib import Path

EMBEDDED_WEIGHTS = Path(__file__).resolve().parent / "gtasr_demo.safetensors"
