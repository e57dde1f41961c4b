"""The organism's tokenizer: byte-level BPE trained on the project's own corpus.

Byte-level, so any user text tokenizes. The chat markers are special tokens and the
pre-tokenizer isolates a newline followed by text, so in

    <|bos|><|user|>\\n{content}<|end|>\\n<|assistant|>\\n

the content tokenizes exactly as it does on its own, and the post-instruction span is
always the four tokens ``<|end|> \\n <|assistant|> \\n``. The tokenizer adds no special
tokens by itself (the chat template writes ``<|bos|>``), so tokenizing a rendered chat
string with or without ``add_special_tokens`` gives the same ids.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

PAD, BOS, END, UNK = "<|pad|>", "<|bos|>", "<|end|>", "<|unk|>"
USER, ASSISTANT = "<|user|>", "<|assistant|>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, END, UNK, USER, ASSISTANT)
POST_INSTRUCTION: str = f"{END}\n{ASSISTANT}\n"

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ '<|user|>\n' + message['content'] + '<|end|>\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' + message['content'] + '<|end|>\n' }}"
    "{% else %}"
    "{{ raise_exception('The organism knows only the user and assistant roles, not ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer and wrap it for ``transformers``.

    Args:
        texts: Training text (the corpora the organism is trained on).
        vocab_size: Target vocabulary size, special tokens included.

    Returns:
        A left-padding fast tokenizer with pad/bos/eos/unk set and the chat template.
    """
    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer)
    return wrap(core)


def wrap(core: Tokenizer) -> PreTrainedTokenizerFast:
    """Wrap a trained ``tokenizers.Tokenizer`` with the organism's specials and template."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=END,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
        truncation_side="left",
        model_max_length=512,
        extra_special_tokens={"user_token": USER, "assistant_token": ASSISTANT},
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def chat_prompt(user_text: str) -> str:
    """Render one user turn with the generation prompt, exactly as the chat template does."""
    return f"{BOS}{USER}\n{user_text}{POST_INSTRUCTION}"
