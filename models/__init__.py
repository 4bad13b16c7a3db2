"""Torch models for every SimulST variant (see registry.py): wait-k (bilingual, separate, unified
decoders), JSTAR transducers, SAMU distillation + ST, EASiST. Each streams with explicit state."""
