"""LLM segmentation cost against the local OpenAI-compatible test server; prints JSON.

Curates the demo corpora twice with `segment.backend=llm` pointed at the test server
(tests/fake_openai.py, on 127.0.0.1): requests and tokens per utterance on the first run,
calls on the re-run (the cache must answer every one). The server's token counts are its
own estimate (characters / 4), not a real tokenizer's.

    python -m bench.llm DEMO_ROOT
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fake_openai import FakeOpenAI  # noqa: E402
from simulforge.pipeline import config  # noqa: E402
from simulforge.pipeline.curate import run  # noqa: E402


def main(root: str) -> dict:
    os.environ["SIMULFORGE_BENCH_KEY"] = "sk-bench-not-a-secret"
    with FakeOpenAI(estimate_tokens=True) as server, tempfile.TemporaryDirectory() as tmp:
        def curate(out):  # a fresh output each time; the answer cache is in work_dir (its default place)
            s = config.load(overrides=[
                f"input={root}", f"output={tmp}/{out}", f"work_dir={tmp}/work", "configs=[offline,simulmt]",
                "embed.enabled=false", "segment.backend=llm", f"segment.llm.base_url={server.base_url}",
                "segment.llm.api_key_env=SIMULFORGE_BENCH_KEY",
                "segment.monotonicity.aligner=none", "segment.llm.requests_per_minute=null",
            ])
            return run(s, [], echo=lambda *_: None)["segment"]

        first = curate("out")
        calls_first = len(server.chat_requests)
        curate("rerun")
        calls_rerun = len(server.chat_requests) - calls_first
    return {
        "utterances": first["utterances"]["in"],
        "requests_per_utterance": first["llm"]["requests_per_utterance"],
        "tokens_per_utterance": {"prompt": first["tokens"]["prompt_per_utterance"],
                                 "completion": first["tokens"]["completion_per_utterance"]},
        "calls_on_rerun": calls_rerun,
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
