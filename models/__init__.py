"""Torch models, one module per model family, each with its training tasks, its agent (the streaming
protocol of eval/agent.py) and its registry entry (family.py says what an entry carries, registry.py
lists them): waitk.py (bilingual, separate and unified decoders), jstar.py, samu.py, easist.py (with
easist_tasks.py). Shared parts: encoder.py, decoder.py, blocks.py, transducer.py, rnnt_loss.py, lm.py.
Every model streams with explicit state."""
