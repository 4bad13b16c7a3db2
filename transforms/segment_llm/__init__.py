"""LLM segmenter: an OpenAI-compatible chat model cuts sentences into monotone chunk pairs.

Works with OpenAI and with any server that speaks its chat API (vLLM, llama.cpp, Ollama)
through the official `openai` client: `base_url`, a model name and a key from the environment.

One request carries several utterances (`batch_size`) so the prompt and its worked examples
are paid once per batch; requests run `concurrency` at a time behind a client-side rate
limit, and 429 (honouring Retry-After), 5xx and timeouts are retried with exponential
backoff and jitter. Every answer is validated; an invalid one gets one repair re-ask with
the reasons, then becomes a reject. Only valid answers are cached, one object each under
`cache_dir` (any Beam filesystem, shared by every worker), keyed by a hash of the input, model,
prompt, levels and temperature, so a re-run of the same configuration makes no calls wherever it
runs. The Batch API writes the same requests as JSONL and collects the answers into the same cache.

The API key is read from the environment where it is used and never written anywhere; every
string that came from a server is redacted before it goes anywhere, and an answer holding the
key is invalid, so it is never cached or published.

Modules: settings (the `segment.llm` block), keys (the key and its redaction), prompt (what
is asked), answers (validation), cache, client (calls, rate limit, retries), segmenter, batch
(the Batch API). This package exports what the segment stage uses.
"""

from .segmenter import LlmSegmenter, Outcome, check_ready
from .settings import LlmSettings

__all__ = ["LlmSegmenter", "LlmSettings", "Outcome", "check_ready"]
