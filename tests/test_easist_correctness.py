"""EASiST correctness (issue 17): target chunks keep their separating space for byte-level BPE and
sentencepiece alike, the LM tokenizer's BOS starts every prompt, evaluation feeds the prompt the run
trained with, bf16 weights train through fp32 master copies, and gradient accumulation over n
micro-batches is one batch n times as large."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from simulforge.models.easist import EasistConfig  # noqa: E402
from simulforge.models.easist_tasks import (  # noqa: E402
    END_OF_READ,
    END_OF_WRITE,
    EasistSftTask,
    EasistSimulMtTask,
    Text,
)
from simulforge.models.lm import LMConfig, build_lm  # noqa: E402
from simulforge.pipeline.dataset_configs.simulmt import interleave  # noqa: E402
from simulforge.training.config import TrainConfig  # noqa: E402
from simulforge.training.loop import CHECKPOINT, JsonlLog, StagePlan, train_stage  # noqa: E402
from simulforge.training.tokenizer import HFTokenizer, prompt_ids, train_sentencepiece  # noqa: E402

SOURCE = ["When I", "was a student in Berlin,", "I often took", "the night train."]
TARGET = ["Als ich", "Student in Berlin war,", "nahm ich oft", "den Nachtzug."]
REFERENCE = " ".join(TARGET)
SPECIALS = [END_OF_READ, END_OF_WRITE, "<2de>"]
BOS = "<|begin_of_text|>"
CHAT = ("{{ bos_token }}{% for m in messages %}<|start|>{{ m['role'] }}\n{{ m['content'] }}<|eot|>{% endfor %}"
        "{% if add_generation_prompt %}<|start|>assistant\n{% endif %}")  # Llama-3's shape, its BOS included
CORPUS = [REFERENCE, " ".join(SOURCE), "Ich fahre oft mit dem Zug nach Berlin.", "Der Student war in der Stadt."] * 20


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """A byte-level BPE tokenizer as Llama-3 has (BOS added by its post-processor), saved as a
    transformers folder, and a sentencepiece one as the trainer makes it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=[BOS, "<|eot|>", "<|start|>", *SPECIALS],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bos = [(BOS, bpe.token_to_id(BOS))]
    bpe.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=bos)  # as Llama-3's
    folder = tmp_path_factory.mktemp("bpe")
    PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=BOS, eos_token="<|eot|>",
                            chat_template=CHAT).save_pretrained(folder)
    sp = train_sentencepiece(CORPUS, SPECIALS, 120, "unigram", 1000)
    return {"bpe": HFTokenizer(str(folder)), "sentencepiece": sp}


def _task(cls, tok, **options):
    task = cls({"languages": ["de"], **options}, EasistConfig(), "stages.x.options")
    task.tok, task.rate = tok, 16000
    return task


def _written(layout, tok) -> str:
    """The decoded stream of a layout's writes: every token between <|end-of-read|> and <|end-of-write|>."""
    ids = [i for seg in layout.segments if isinstance(seg, Text) for i in seg.ids]
    eor, eow = tok.piece_id(END_OF_READ), tok.piece_id(END_OF_WRITE)
    out, writing = [], False
    for i in ids:
        writing = (writing or i == eor) and i != eow
        out += [i] if writing and i != eor else []
    return tok.decode(out)


@pytest.mark.parametrize("kind", ["bpe", "sentencepiece"])
def test_written_chunks_decode_to_the_reference(tokenizers, kind):
    tok = tokenizers[kind]
    mt = _task(EasistSimulMtTask, tok).collate(
        [{"latency": "low", "text": {"de": interleave(SOURCE, TARGET)}, "offline": {"de": None}}], ["de"])
    assert _written(mt["layouts"][0], tok) == REFERENCE
    row = {"features": torch.zeros(400, 80), "duration": 4.0, "translation": {"de": REFERENCE},
           "latency": {"low": {"target_chunks": {"de": TARGET}, "chunk_end_s": [0.9, 1.9, 2.9, 3.9]}}}
    sft = _task(EasistSftTask, tok).collate([row], ["de"])["layouts"]
    assert [layout.task for layout in sft] == ["simulst", "st"]
    assert [_written(layout, tok) for layout in sft] == [REFERENCE, REFERENCE]


def test_prompts_start_with_the_lm_tokenizers_bos(tokenizers):
    bpe, sp = tokenizers["bpe"], tokenizers["sentencepiece"]
    assert bpe.bos_prefix == [bpe.tok.convert_tokens_to_ids(BOS)] and sp.bos_prefix == []
    for tok in (bpe, sp):
        trained = _task(EasistSimulMtTask, tok, prompt="Translate. {tag}").prompt("de").ids
        assert trained == prompt_ids(tok, "Translate. {tag}", "de") == tok.bos_prefix + tok.encode("Translate. <2de>")


def test_a_chat_prompt_is_the_user_turn_of_the_lm_tokenizers_template_after_one_bos(tokenizers):
    from simulforge.training.config import ConfigError
    from simulforge.training.recipes import trained_prompt

    bpe, sp = tokenizers["bpe"], tokenizers["sentencepiece"]
    task = _task(EasistSimulMtTask, bpe, prompt="Translate into {lang}. {tag}", chat_template=True)
    ids = task.prompt("de").ids
    assert ids == prompt_ids(bpe, "Translate into {lang}. {tag}", "de", chat=True)
    assert bpe.decode(ids) == f"{BOS}<|start|>user\nTranslate into de. <2de><|eot|><|start|>assistant\n"
    assert ids.count(bpe.bos_prefix[0]) == 1
    assert trained_prompt([task]) == {"prompt": "Translate into {lang}. {tag}", "chat_template": True}
    with pytest.raises(ConfigError, match="has no chat template"):
        _task(EasistSimulMtTask, sp, chat_template=True).prompt("de")


# -- evaluation feeds the run's own prompt --------------------------------------------------------
def _evaluate(run, published, out, *extra) -> list[str]:
    from simulforge.evaluate import main

    assert main(["--run", str(run), "--data", published, "--split", "train", "--limit", "2", "--policy", "offline",
                 "--out", str(out), *extra]) == 0
    return [json.loads(line)["prediction"] for line in (out / "offline" / "de" / "instances.log").open()]


def test_evaluate_uses_the_prompt_the_run_trained_with(tiny_runs, published, tmp_path, capsys):
    tiny_runs("easist")
    trained = tiny_runs.root / "easist"
    stored = yaml.safe_load((trained / "run.yaml").read_text())
    assert (stored["prompt"], stored["chat_template"]) == ("{tag}", False)  # easist_tiny's stages
    run = tmp_path / "run"
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns("simulmt", "st", "sft", "cache", "eval"))
    info = yaml.safe_load((run / "run.yaml").read_text())
    other = "die Katze schläft {tag}"  # the start of the first reference: this tiny model then skips it
    (run / "run.yaml").write_text(yaml.safe_dump({**info, "prompt": other}, sort_keys=False))
    stored = _evaluate(run, published, tmp_path / "a")
    assert stored == _evaluate(trained, published, tmp_path / "b", "--prompt", other)
    assert stored != _evaluate(run, published, tmp_path / "c", "--prompt", "{tag}")
    from simulforge.evaluate import main

    (run / "run.yaml").write_text(yaml.safe_dump({**info, "chat_template": True}, sort_keys=False))
    assert main(["--run", str(run), "--data", published, "--split", "train", "--limit", "1"]) == 2
    assert "has no chat template" in capsys.readouterr().err  # the run's sentencepiece tokenizer has none
    (run / "run.yaml").write_text(yaml.safe_dump({k: v for k, v in info.items() if k != "prompt"}, sort_keys=False))

    assert main(["--run", str(run), "--data", published, "--split", "train", "--limit", "1"]) == 2
    assert "a run without one needs --prompt" in capsys.readouterr().err


# -- the optimizer --------------------------------------------------------------------------------
def _llama(dtype: str):
    torch.manual_seed(0)
    return build_lm(LMConfig(config={"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                                     "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
                                     "max_position_embeddings": 64}, dtype=dtype), 64)


def _lm_plan(steps: int, lr: float) -> StagePlan:
    ids = torch.randperm(64, generator=torch.Generator().manual_seed(1)).view(2, 32)  # every embedding row used

    def loss(model, batch):
        return model(input_ids=batch, labels=batch).loss, {}

    return StagePlan("lm", steps, lr, 0, 1, None, lambda epoch: [[0, 1]], lambda rows: ids[rows], loss)


def _train(model, plan, out, **train):
    cfg = TrainConfig(device="cpu", precision="fp32", lr=plan.lr, weight_decay=0.0, progress=False, **train)
    return train_stage(model, plan, cfg, out, JsonlLog(out / "log.jsonl", echo=False), torch.device("cpu"),
                       **({"stop_after": 1} if plan.steps > 1 and "stop" in out.name else {}))


def test_one_bf16_update_at_lr_1e5_changes_every_trainable_tensor(tmp_path):
    model = _llama("bfloat16")
    before = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    _train(model, _lm_plan(1, 1e-5), tmp_path / "one")
    master = torch.load(tmp_path / "one" / CHECKPOINT, weights_only=False)["master"]
    names = [n for n, _ in model.named_parameters()]
    assert all(m is not None and m.dtype == torch.float32 for m in master)
    unchanged = [n for n, m in zip(names, master, strict=True) if torch.equal(m, before[n])]
    assert unchanged == []
    changed = sum(int((m != before[n]).sum()) for n, m in zip(names, master, strict=True))
    assert changed / sum(m.numel() for m in master) > 0.99
    # The model's bf16 weights are the masters rounded: what decoding reads.
    assert all(torch.equal(p, m.to(torch.bfloat16)) for p, m in zip(model.parameters(), master, strict=True))


def test_bf16_training_resumes_its_master_weights_exactly(tmp_path):
    straight, resumed = _llama("bfloat16"), _llama("bfloat16")
    _train(straight, _lm_plan(2, 1e-5), tmp_path / "straight")
    _train(resumed, _lm_plan(2, 1e-5), tmp_path / "stop")
    resumed = _llama("bfloat16")  # a fresh process: only the checkpoint carries the masters
    _train(resumed, _lm_plan(2, 1e-5), tmp_path / "stop")
    a, b = (torch.load(tmp_path / d / CHECKPOINT, weights_only=False)["master"] for d in ("straight", "stop"))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_accumulating_n_micro_batches_is_one_batch_n_times_as_large(tmp_path):
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    y = torch.randn(8, 1, generator=torch.Generator().manual_seed(1))

    def loss(model, rows):
        return torch.nn.functional.mse_loss(model(x[rows]), y[rows]), {}

    def run(batches, accum, out):
        torch.manual_seed(0)
        model = torch.nn.Linear(5, 1)
        plan = StagePlan("acc", 2, 0.1, 0, accum, None, lambda epoch: batches, lambda rows: rows, loss)
        _train(model, plan, out, grad_clip=10.0, log_every=1)
        log = [json.loads(line) for line in (out / "log.jsonl").open() if '"step"' in line and "loss" in line]
        return model, [v for r in log for v in (r["loss"], r["grad_norm"])]

    big, big_log = run([[0, 1, 2, 3], [4, 5, 6, 7]], 1, tmp_path / "big")
    small, small_log = run([[0], [1], [2], [3], [4], [5], [6], [7]], 4, tmp_path / "small")
    assert len(big_log) == 4 and small_log == pytest.approx(big_log, rel=1e-5)
    assert torch.allclose(big.weight, small.weight, atol=1e-6) and torch.allclose(big.bias, small.bias, atol=1e-6)


# -- the paper's stage hyper-parameters -----------------------------------------------------------
def test_the_realistic_config_has_the_papers_stages_and_warmup_ratios_become_steps():
    import datasets

    from conftest import MODEL_CONFIGS
    from simulforge.training import config as C
    from simulforge.training.recipes import PreparedStage, _plan

    cfg, _ = C.load(MODEL_CONFIGS / "easist.yaml")
    # Implementation Details: batch 128, cosine AdamW; I: 1 epoch, 1e-5, warm-up 10%; II: 6 epochs, 2e-4,
    # 3%; III: as II with 1 epoch and 2e-5.
    assert [(s.epochs, s.lr, s.warmup_ratio, cfg.data.max_batch * (s.accum_steps or cfg.train.accum_steps))
            for s in cfg.stages] == [(1, 1e-5, 0.1, 128), (6, 2e-4, 0.03, 128), (1, 2e-5, 0.03, 128)]
    cfg, _ = C.load(MODEL_CONFIGS / "easist_tiny.yaml", ["stages.0.steps=null", "stages.0.epochs=10",
                                                         "stages.0.warmup_ratio=0.5", "data.max_batch=2"])
    task = EasistSimulMtTask(cfg.stages[0].options, EasistConfig(), "stages.simulmt.options")
    rows = datasets.Dataset.from_list([{"latency": "low", "text": {"de": REFERENCE}, "offline": {"de": None}}] * 8)
    plan = _plan(PreparedStage(cfg.stages[0], task, rows, None), cfg, 0)
    assert (plan.steps, plan.warmup_steps) == (40, 20)  # 10 epochs of 4 batches; half of them warm up
    both = C.load(MODEL_CONFIGS / "easist_tiny.yaml", ["stages.0.warmup_steps=3", "stages.0.warmup_ratio=0.1"])[0]
    with pytest.raises(C.ConfigError, match="give warmup_steps or warmup_ratio, not both"):
        _plan(PreparedStage(both.stages[0], task, rows, None), both, 0)


def test_stage_one_sees_each_offline_pair_once_whatever_the_number_of_levels(tokenizers):
    """simulmt publishes one row per utterance and level, each carrying the utterance's offline pair:
    stage I takes that pair from one level's rows, so 3 levels do not weigh offline MT 3 times."""
    import datasets

    tok = tokenizers["sentencepiece"]
    offline = interleave([" ".join(SOURCE)], [REFERENCE])
    rows = [{"id": f"u{u}", "latency": level, "text": {"de": interleave(SOURCE, TARGET)}, "offline": {"de": offline}}
            for u in range(3) for level in ("low", "medium", "high")]
    for levels, expected in ((None, "high"), (["medium", "low"], "medium")):
        task = _task(EasistSimulMtTask, tok, levels=levels)
        task.fit_to_data(datasets.Dataset.from_list(rows), "simulmt")
        layouts = task.collate([r for r in rows if task.keep(r)], ["de"] * len([r for r in rows if task.keep(r)]))
        assert task.mt_level == expected
        assert [layout.task for layout in layouts["layouts"]].count("mt") == 3  # once per utterance
