"""A few GRPO steps of a tiny policy rewarded by a moe-reward-lens model (for one profile, or the crowd).

The policy is a 2-layer GPT-2 with a word-level tokenizer, built here from a config (random weights, no
download): the point is the plumbing, not the policy. The reward is `moe_reward.rlhf.reward_function`,
the callable TRL's GRPOTrainer calls as ``reward(prompts=..., completions=..., completion_ids=...,
**dataset_columns)``.

TRL is optional (it is not in requirements.txt)::

    pip install trl            # trl>=0.20 (brings accelerate and datasets); tried with trl 1.16
    moe-reward build-default   # or train your own model
    python examples/grpo_tiny.py --model workspace/models/default-sparse [--profile annotator/name] [--steps 3]

Without TRL the script calls the reward function exactly the way GRPOTrainer does (a group of
completions per prompt) and prints the rewards. ``--server http://127.0.0.1:8000`` scores through a
running ``moe-reward serve`` instead of loading the model in this process.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, whatever is installed

PROMPTS = [
    "Keep it short: why is the sky blue?",
    "Explain step by step how to boil an egg.",
    "Play it safe: can I mix bleach and vinegar to clean?",
    "Why do leaves change colour in autumn? Answer in depth.",
]
WORDS = (
    "the sky is blue because air scatters short wavelengths of sunlight more than long ones . "
    "boil water , add the egg , wait nine minutes , then cool it in ice water . "
    "no , never mix bleach with acids : it releases toxic chlorine gas ; ventilate and use one product . "
    "leaves lose chlorophyll in autumn so yellow and red pigments show . yes short answer step safe"
)


def tiny_policy(folder: Path):
    """A GPT-2 of 2 layers and 64 dimensions over a word-level vocabulary, saved to `folder`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        [WORDS, *PROMPTS], trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "</s>"])
    )
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>"
    )
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=128,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    policy = GPT2LMHeadModel(config)
    policy.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def call_like_trl(reward, generations: int) -> None:
    """What GRPOTrainer does with a reward function: each prompt repeated once per completion."""
    completions = [
        "Air scatters blue light more.",
        "Because of Rayleigh scattering: short wavelengths scatter more than long ones, so blue fills the sky.",
        "Boil water, add the egg, wait nine minutes, cool it in ice water.",
        "Eggs.",
        "No: bleach and vinegar release chlorine gas. Use one product and ventilate.",
        "Sure, mix them.",
        "Chlorophyll fades, so yellow and red pigments show.",
        "Autumn.",
    ]
    prompts = [p for p in PROMPTS for _ in range(generations)]
    completions = [
        completions[(i * 2 + j) % len(completions)] for i in range(len(PROMPTS)) for j in range(generations)
    ]
    rewards = reward(
        prompts=prompts,
        completions=completions,
        completion_ids=[[0]] * len(prompts),
        trainer_state=None,
    )
    for p, c, r in zip(prompts, completions, rewards, strict=True):
        print(f"{r:+8.3f}  {p[:40]!r:44s} {c[:60]!r}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="workspace/models/default-sparse", help="a saved moe-reward model")
    ap.add_argument("--server", default=None, help="score through this moe-reward serve URL instead")
    ap.add_argument("--profile", default=None, help="annotator/name of a stored profile (default: the crowd)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--generations", type=int, default=4)
    args = ap.parse_args()

    from moe_reward.rlhf import reward_function

    reward = reward_function(args.server or args.model, profile=args.profile, name="moe_reward")
    try:
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer
    except ImportError:
        print("trl is not installed (pip install trl): calling the reward function the way GRPOTrainer does")
        call_like_trl(reward, args.generations)
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        policy = tiny_policy(Path(tmp) / "policy")
        config = GRPOConfig(
            output_dir=str(Path(tmp) / "out"),
            max_steps=args.steps,
            per_device_train_batch_size=args.generations,
            num_generations=args.generations,
            max_completion_length=24,
            learning_rate=1e-4,
            logging_steps=1,
            report_to=[],
            use_cpu=True,
            save_strategy="no",
        )
        trainer = GRPOTrainer(
            model=str(policy),
            reward_funcs=[reward],
            args=config,
            train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        )
        trainer.train()
        for row in trainer.state.log_history:
            if "reward" in row:
                print(
                    f"step {row.get('step')}: mean reward {row['reward']:+.3f} "
                    f"(moe_reward {row.get('rewards/moe_reward/mean', float('nan')):+.3f})"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
