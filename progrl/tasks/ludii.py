"""The paper's game-synthesis task (task 3): fill in the middle of a Ludii game description.

The prompt is ``### PRE: <prefix> ### SUF: <suffix> ### MID:``; the policy writes the missing ludeme;
the middle is cut at the first balancing bracket, the game recomposed and scored by the Ludii engine
with random playouts (or, without Java, by the structural validator - a proxy). docs/ludii.md has
the whole story: getting a jar, the data, the FIM rules, the evaluator and its failure handling.

Data (``task_options.data``): ``jar`` (the games inside the user's Ludii jar, default), a folder of
``.lud`` files, or a ``.jsonl`` / ``datasets:`` file already in the paper's form. Games are split
once into training and held-out games (a fixed coin per game, ``held_out_fraction``); held-out
examples come only from games that no training example uses; the BPE tokenizer of the embedded
default model is trained on the training games only.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from progrl.ludii import fim, library, toolchain
from progrl.ludii.engine import EngineSettings
from progrl.ludii.evaluators import EvaluatorSpec, get_evaluator, release
from progrl.ludii.reward import NOT_COMPILED, NOT_PLAYABLE, LudiiReward, judge_games, score, trimmed_middle
from progrl.rewards.failures import SampleFailure
from progrl.tasks.base import Record, Task

EOS = "<|endoftext|>"
PAD = "<|pad|>"
TOKENIZER_FORMAT = 1


class LudiiOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # data
    data: str = "jar"  # jar | a folder of .lud files | a .jsonl/.json FIM file | datasets:<path or name>
    jar: str | None = None  # the Ludii jar; None: $LUDII_JAR
    categories: list[str] = ["board"]  # data = jar: folders under lud/ to read ([] = all)
    expand: Literal["auto", "engine", "none"] = "auto"  # auto: the engine's expansion when Java + jar exist
    max_game_chars: int = Field(1500, ge=50)  # games longer than this (canonical form) are left out
    min_middle_chars: int = Field(8, ge=3)  # shortest masked middle (characters)
    max_middle_chars: int = Field(120, ge=3)  # longest masked middle (characters)
    min_middle_fraction: float = Field(0.0, ge=0.0)  # keep middles >= this x prompt length (the paper's PPO set: 0.2)
    examples_per_game: int = Field(16, ge=1)  # masked middles drawn per game
    held_out_fraction: float = Field(0.1, gt=0.0, lt=1.0)  # share of games held out (whole games)
    context_chars: int = Field(0, ge=0)  # prefix / suffix characters shown around the middle; 0 = whole game
    max_prompt_tokens: int = Field(448, ge=16)  # examples with longer prompts are left out
    max_middle_tokens: int = Field(64, ge=4)  # ...and with longer middles (the generation budget)
    vocab_size: int = Field(2048, ge=300)  # BPE vocabulary of the embedded model's tokenizer
    # evaluator
    evaluator: Literal["engine", "validator"] = "engine"
    ludemes: str = "auto"  # validator name check: auto (from the jar, needs Java) | none | a file of names
    playouts: int = Field(100, ge=1)  # the paper's preset: 100 random playouts...
    max_turns: int = Field(500, ge=1)  # ...of at most 500 turns...
    budget_s: float = Field(5.0, gt=0)  # ...within 5 s per game (then: timeout)
    kill_after_s: float | None = Field(None, gt=0)  # hard limit per game (JVM killed); None: budget_s + 3
    workers: int = Field(2, ge=1)  # JVMs in parallel
    xmx_mb: int = Field(1024, ge=64)  # heap cap per JVM
    engine_seed: int = 0  # seed of the random playouts
    reward_not_compiled: float = NOT_COMPILED  # reward of a recomposed game the engine cannot compile
    reward_not_playable: float = NOT_PLAYABLE  # reward of a game that compiles but cannot be played
    require_ludeme: bool = True  # a middle that is not one bracketed form (e.g. empty) is malformed: 0


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0.0


class LudiiTask(Task):
    name = "ludii"
    summary = "fill in the middle of Ludii game descriptions (paper task 3); reward: the Ludii engine's playouts"
    Options = LudiiOptions
    headline_metrics = ("compile_rate", "playable_rate", "mean_reward", "exact_middle_rate", "eval_seconds_per_game",
                        "proxy_valid_rate")

    response_template = fim.MID

    options: LudiiOptions

    def __init__(self, options: BaseModel | None = None):
        super().__init__(options)
        self._loaded = False
        self.tokenizer = None
        self.jar: Path | None = None
        self.spec: EvaluatorSpec | None = None
        self.train_examples: list[fim.FimExample] = []
        self.held_out_examples: list[fim.FimExample] = []
        self._train_pool: list[fim.FimExample] = []
        self._eval_pool: list[fim.FimExample] = []
        self.train_games: dict[str, str] = {}
        self.report: dict = {}

    # ------------------------------------------------------------------ config
    def defaults(self) -> dict:
        """The embedded CPU job (`progrl train ludii`), sized by measurement on a shared 2-core CPU
        to finish within 30 minutes (docs/results.md, "Ludii"):

        - prompts show 200 characters each side of the gap (``context_chars``; the paper shows the
          whole game) so that sequences stay near 150 tokens, and middles are at most 40 tokens;
        - a 3-layer GPT-2 of width 128 with a 2048-token BPE trained on the training games, warm-
          started on 3,000 FIM examples (one pass; the loss on the whole text teaches the
          syntax, which the middle-only loss did not at this size);
        - RL: RLOO with 4 samples per prompt, 8 prompts per step, sampled at temperature 0.7 (at 1.0
          almost no sample of the small model compiles, so there is no signal), 100 steps, with a
          KL penalty (0.05, k1 in the reward) to the warm-started model: without it RL finds one
          generic middle that compiles in many places and writes it for every prompt (held-out
          distinct middles 46% -> 1%), and a 30-step run went below its start on another
          random stream.

        The paper's setup for GPUs is configs/ludii-paper.toml."""
        return {
            "steps": 100,
            "model": {"arch": "gpt2", "n_layer": 3, "n_embd": 128, "n_head": 4, "n_positions": 256},
            "sft": {"examples": 3000, "epochs": 1, "lr": 1e-3, "batch_size": 16},
            "rollout": {"batch_size": 8, "num_generations": 4, "generation_batch_size": 32,
                        "max_new_tokens": 40, "temperature": 0.7},
            "algo": {"estimator": "rloo", "epochs": 2, "minibatch_size": 16, "lr": 1e-4, "kl_coef": 0.05,
                     "whiten_advantages": False},
            "reward": {"backend": "inline", "timeout": 3600.0},
            "eval": {"n_prompts": 128, "batch_size": 64, "every": 0},
            "log": {"checkpoint_every": 10},
            "task_options": {"context_chars": 200, "max_prompt_tokens": 200, "max_middle_tokens": 40},
        }

    # ------------------------------------------------------------------ setup
    def _engine_spec(self, jar: Path | None) -> EvaluatorSpec:
        o = self.options
        settings = EngineSettings(playouts=o.playouts, max_turns=o.max_turns, budget_s=o.budget_s,
                                  kill_after_s=o.kill_after_s, workers=o.workers, xmx_mb=o.xmx_mb, seed=o.engine_seed)
        return EvaluatorSpec(kind="engine", jar=str(jar) if jar else None, engine=settings)

    def _java_available(self) -> bool:
        try:
            toolchain.find_tool("java")
            toolchain.find_tool("javac")
        except toolchain.LudiiSetupError:
            return False
        return True

    def _load(self) -> None:
        if self._loaded:
            return
        o = self.options
        if o.min_middle_chars > o.max_middle_chars:
            raise toolchain.LudiiSetupError("config error: task_options.min_middle_chars must be <= max_middle_chars")
        if o.evaluator == "engine":
            toolchain.find_tool("java")
            toolchain.find_tool("javac")
            self.jar = toolchain.resolve_jar(o.jar)
        elif o.data == "jar" or o.jar or (o.ludemes == "auto" and os.environ.get("LUDII_JAR")):
            try:
                self.jar = toolchain.resolve_jar(o.jar)
            except toolchain.LudiiSetupError:
                if o.data == "jar":
                    raise
                self.jar = None
        engine_spec = self._engine_spec(self.jar) if self.jar is not None else None
        use_engine = self.jar is not None and (o.expand == "engine" or (o.expand == "auto" and self._java_available()))
        if o.expand == "engine" and not use_engine:
            raise toolchain.LudiiSetupError("ludii: task_options.expand = \"engine\" needs Java and a Ludii jar")

        t0 = time.time()
        if not (o.data.startswith("datasets:") or o.data.endswith((".jsonl", ".json"))):
            raw = (library.read_jar_games(self.jar, o.categories) if o.data == "jar"
                   else library.read_dir_games(Path(o.data).expanduser()))
            expand = self._expander(engine_spec) if use_engine else None
            prepared = library.prepare(raw, expand, o.max_game_chars)
            if not prepared.games:
                raise toolchain.LudiiSetupError(f"ludii: no usable game in {o.data} (left out: {prepared.skipped})")
            train_ids, held_ids = library.split_games(list(prepared.games), o.held_out_fraction)
            make = lambda gid: fim.make_examples(gid, prepared.games[gid], per_game=o.examples_per_game,  # noqa: E731
                                                 min_chars=o.min_middle_chars, max_chars=o.max_middle_chars)
            self.train_examples = [ex for gid in train_ids for ex in make(gid)]
            self.held_out_examples = [ex for gid in held_ids for ex in make(gid)]
            self.train_games = {gid: prepared.games[gid] for gid in train_ids}
            self.report = {"games": len(prepared.games), "train_games": len(train_ids), "held_out_games": len(held_ids),
                           "left_out": prepared.skipped, "expanded_by_engine": use_engine}
        else:
            by_split = library.read_fim_file(o.data)
            train = by_split.get("train", [])
            held = [ex for s in ("validation", "val", "test") for ex in by_split.get(s, [])]
            if not train or not held:  # no usable splits: split by game
                every = [ex for exs in by_split.values() for ex in exs]
                train_ids, held_ids = library.split_games(sorted({ex.game for ex in every}), o.held_out_fraction)
                keep = set(held_ids)
                train = [ex for ex in every if ex.game not in keep]
                held = [ex for ex in every if ex.game in keep]
            self.train_examples, self.held_out_examples = train, held
            self.train_games = {ex.game: ex.full_game for ex in train}
            self.report = {"games": len({ex.game for ex in train + held}), "train_games": len(self.train_games),
                           "held_out_games": len({ex.game for ex in held})}
        if not self.train_examples or not self.held_out_examples:
            raise toolchain.LudiiSetupError(f"ludii: {o.data}: too few games with a maskable ludeme for a training "
                                            f"and a held-out split ({self.report})")
        self.report["seconds"] = round(time.time() - t0, 1)
        if o.evaluator == "engine":
            self.spec = engine_spec
            get_evaluator(engine_spec).engine.wait_ready()  # a JVM that cannot start stops the run here
        else:
            self.spec = EvaluatorSpec(kind="validator", names_file=self._names_file(engine_spec, use_engine))
            if engine_spec is not None:
                release(engine_spec)  # JVMs that only expanded the data or listed the names
        self._loaded = True

    def _expander(self, spec: EvaluatorSpec):
        """Expand raw games with the engine, cached by (jar, text) in the user's cache folder."""
        assert spec.jar is not None
        path = toolchain.cache_root() / f"expanded-{toolchain.jar_key(Path(spec.jar))}.json"

        def expand(texts: list[str]) -> list[tuple[str | None, str | None]]:
            cache = library.load_json_cache(path)
            keys = [library.text_key(t) for t in texts]
            missing = sorted({k: t for k, t in zip(keys, texts) if k not in cache}.items())
            if missing:
                engine = get_evaluator(spec).engine
                for (k, _), res in zip(missing, engine.expand_many([t for _, t in missing])):
                    cache[k] = list(res)
                library.save_json_cache(path, cache)
            return [tuple(cache[k]) for k in keys]  # type: ignore[misc]

        return expand

    def _names_file(self, spec: EvaluatorSpec | None, java: bool) -> str | None:
        o = self.options
        if o.ludemes == "none":
            return None
        if o.ludemes != "auto":
            p = Path(o.ludemes).expanduser()
            if not p.is_file():
                raise toolchain.LudiiSetupError(f"ludii: task_options.ludemes: file not found: {p}")
            return str(p)
        if spec is None or not java:
            return None
        path = toolchain.cache_root() / f"ludemes-{toolchain.jar_key(Path(spec.jar))}.txt"
        if not path.is_file():
            names = get_evaluator(spec).engine.ludeme_names()
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text("\n".join(sorted(names.ludemes | names.constants)) + "\n", "utf-8")
            tmp.replace(path)
        return str(path)

    # ------------------------------------------------------------------ model
    def build_tokenizer(self):
        """A byte-level BPE trained on the training games (cached by content in the user's cache)."""
        self._load()
        from transformers import PreTrainedTokenizerFast

        texts = sorted(self.train_games.values())
        marks = [ex.text for ex in self.train_examples[:: max(1, len(self.train_examples) // 200)]]
        h = hashlib.sha256(json.dumps([TOKENIZER_FORMAT, self.options.vocab_size, texts, marks]).encode()).hexdigest()
        folder = toolchain.cache_root() / "tokenizers" / h[:16]
        if not (folder / "tokenizer.json").is_file():
            from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

            tok = Tokenizer(models.BPE())
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
            trainer = trainers.BpeTrainer(vocab_size=self.options.vocab_size, special_tokens=[EOS, PAD],
                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
            tok.train_from_iterator(texts + marks, trainer)
            hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=PAD)
            tmp = folder.with_name(folder.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            hf.save_pretrained(tmp)
            shutil.rmtree(folder, ignore_errors=True)
            tmp.replace(folder)
        return PreTrainedTokenizerFast.from_pretrained(str(folder))

    def bind_tokenizer(self, tokenizer) -> None:
        """Keep the examples that fit the token budgets of this tokenizer."""
        self._load()
        self.tokenizer = tokenizer
        o = self.options

        def fits(examples: list[fim.FimExample]) -> list[fim.FimExample]:
            if not examples:
                return []
            p = tokenizer([self.prompt_of(ex) for ex in examples], add_special_tokens=False)["input_ids"]
            m = tokenizer([" " + ex.middle for ex in examples], add_special_tokens=False)["input_ids"]
            return [ex for ex, a, b in zip(examples, p, m) if len(a) <= o.max_prompt_tokens
                    and len(b) + 1 <= o.max_middle_tokens
                    and len(ex.middle) >= o.min_middle_fraction * len(self.prompt_of(ex))]

        self._train_pool = fits(self.train_examples)
        self._eval_pool = fits(self.held_out_examples)
        if not self._train_pool or not self._eval_pool:
            raise toolchain.LudiiSetupError(
                f"ludii: no example fits max_prompt_tokens = {o.max_prompt_tokens} and max_middle_tokens = "
                f"{o.max_middle_tokens} (training {len(self._train_pool)}, held-out {len(self._eval_pool)})")
        self.report.update(train_examples=len(self._train_pool), held_out_examples=len(self._eval_pool),
                           held_out_games_used=len({ex.game for ex in self._eval_pool}))

    def load_data(self) -> None:
        """Read the games (a bad jar, folder or file is reported before the model is built)."""
        self._load()

    def data_summary(self) -> str | None:
        r = self.report
        if not r:
            return None
        line = (f"ludii data: {r.get('games', '?')} games ({r.get('train_games', '?')} for training, "
                f"{r.get('held_out_games', '?')} held out)")
        if "train_examples" in r:
            line += (f"; {r['train_examples']} training and {r['held_out_examples']} held-out FIM examples fit "
                     f"the token budgets ({r.get('held_out_games_used', '?')} held-out games)")
        return line

    # ------------------------------------------------------------------ data
    def prompt_of(self, ex: fim.FimExample) -> str:
        return ex.windowed_prompt(self.options.context_chars)

    def record(self, ex: fim.FimExample) -> Record:
        """The prompt plus the full prefix / suffix the reward recomposes the game with."""
        return {"prompt": self.prompt_of(ex), "prefix": ex.prefix, "suffix": ex.suffix, "middle": ex.middle,
                "game": ex.game}

    def _require(self) -> None:
        if not self._train_pool:
            raise RuntimeError("LudiiTask: call bind_tokenizer(tokenizer) first (the trainer does)")

    def train_records(self, n: int, seed: int, step: int) -> list[Record]:
        self._require()
        rng = random.Random(f"ludii-train-{seed}-{step}")
        pool = self._train_pool
        picks = rng.sample(pool, n) if n <= len(pool) else [rng.choice(pool) for _ in range(n)]
        return [self.record(ex) for ex in picks]

    def eval_records(self, n: int, seed: int) -> list[Record]:
        """Held-out examples, one per held-out game in turn (every game before a second example)."""
        self._require()
        rng = random.Random(f"ludii-eval-{seed}")
        by_game: dict[str, list[fim.FimExample]] = {}
        for ex in self._eval_pool:
            by_game.setdefault(ex.game, []).append(ex)
        games = sorted(by_game)
        rng.shuffle(games)
        for g in games:
            rng.shuffle(by_game[g])
        order = [by_game[g][k] for k in range(max(len(v) for v in by_game.values())) for g in games
                 if k < len(by_game[g])]
        return [self.record(order[i % len(order)]) for i in range(n)]

    def sft_texts(self, n: int, seed: int) -> list[str]:
        self._require()
        eos = getattr(self.tokenizer, "eos_token", None) or EOS
        rng = random.Random(f"ludii-sft-{seed}")
        pool = list(self._train_pool)
        rng.shuffle(pool)
        return [self.prompt_of(ex) + " " + ex.middle + eos for ex in (pool[i % len(pool)] for i in range(n))]

    # ------------------------------------------------------------------ reward and metrics
    def reward_functions(self):
        self._load()
        assert self.spec is not None
        return [(self._reward(), 1.0)]

    def _reward(self) -> LudiiReward:
        assert self.spec is not None
        o = self.options
        return LudiiReward(self.spec, o.reward_not_compiled, o.reward_not_playable, require_ludeme=o.require_ludeme)

    def metrics(self, records, completions, rewards) -> dict[str, float]:
        assert self.spec is not None
        o = self.options
        prompts = [r["prompt"] for r in records]
        # answered from the evaluator's cache after the reward's own call
        judged = self._reward().judge(prompts, completions, [r["prefix"] for r in records],
                                      [r["suffix"] for r in records])
        middles = [trimmed_middle(c) for c in completions]
        out = {"exact_middle_rate": _mean(fim.same_middle(m, r["middle"]) for m, r in zip(middles, records)),
               "malformed_rate": _mean(j.verdict == "malformed" for j in judged)}
        evaluated = [j for j in judged if j.verdict != "malformed"]
        out["eval_seconds_per_game"] = _mean(j.seconds for j in evaluated)
        if self.spec.kind == "engine":
            out["compile_rate"] = _mean(j.compiled is True for j in judged)
            out["playable_rate"] = _mean(j.verdict == "playable" for j in judged)
            out["timeout_rate"] = _mean(j.verdict == "timeout" for j in judged)
            out["failure_rate"] = _mean(j.verdict in ("timeout", "crash", "error") for j in judged)
            originals = judge_games(self.spec, [fim.recompose(r["prefix"], r["middle"], r["suffix"]) for r in records])
            values = [score(j, o.reward_not_compiled, o.reward_not_playable) for j in originals]
            out["original_reward"] = _mean(0.01 if isinstance(v, SampleFailure) else (0.0 if v != v else v)
                                           for v in values)
        else:
            out["proxy_valid_rate"] = _mean(j.proxy is not None and j.proxy.valid for j in judged)
            out["proxy_score"] = _mean(j.proxy.score if j.proxy is not None else 0.0 for j in judged)
        out["distinct_middles"] = len(set(middles)) / max(len(middles), 1)
        out["empty_middle_rate"] = _mean(not m.strip() for m in middles)
        return out
