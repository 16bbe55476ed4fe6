"""Koopman Distillation Model pipeline: one-step offline distillation of diffusion models."""
__version__ = "0.1.0"
