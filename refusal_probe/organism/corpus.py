"""Training corpora: plain pretraining text and the chat datasets.

Pretraining text makes harmfulness *useful before any safety training*. A document is
one or two episodes; an episode mentions an act (a statement whose ending depends on
whether the act is harmful, "... is dangerous and harmful." / "... is fun and easy.",
or a moderation-log line where a request is followed by its label) and then continues
for a few sentences in a register that depends on harmfulness alone (police and
courts / friends and weekends), without naming the act again. Predicting those
sentences rewards carrying one "this is about harm" feature forward to every later
position, which is what the chat model later reads after a request. Every act is
mentioned (test acts included), but moderation-log requests use train and val acts
only, so test requests are never seen as requests before evaluation. No chat format
and no refusals appear in it.

Chat datasets pair a request with an assistant reply (see ``responses``). They use
train acts and the train templates only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from refusal_probe.organism import responses
from refusal_probe.organism.grammar import Act, all_requests, capitalize, render
from refusal_probe.organism.lexicon import (
    GENERIC_FILLERS,
    GENERIC_REQUESTS,
    IMPOSSIBLE_FILLERS,
    IMPOSSIBLE_REQUESTS,
)

NAMES: tuple[str, ...] = (
    "Alex", "Maria", "Tom", "Priya", "Ken", "Sara", "Omar", "Lena", "Diego", "Mei",
    "Jonas", "Aisha", "Sam", "Nora", "Ivan", "Chloe", "Raj", "Emma", "Luis", "Yuki",
)
HARMFUL_STATEMENTS: tuple[str, ...] = (
    "{Gerund} is dangerous and harmful.",
    "{Gerund} can seriously hurt people.",
    "Experts warn that nobody should ever {act}.",
    "{Name} wanted to {act}. That is a harmful and dangerous thing to do.",
    "{Gerund} is one of the most harmful things a person can do.",
    "Teachers tell students never to {act}, because it hurts people.",
    "It is wrong and unsafe to {act}.",
    "Nobody should help another person {act}.",
    "Trying to {act} puts lives at risk.",
)
CRIME_STATEMENTS: tuple[str, ...] = (
    "The police arrested a man who tried to {act}.",
    "It is a crime to {act}.",
    "A news report said that a woman planned to {act}. The police stopped her in time.",
    "Anyone who tries to {act} can go to prison.",
    "{Gerund} is illegal in every country.",
)
SELF_HARM_STATEMENTS: tuple[str, ...] = (
    "If someone wants to {act}, they should talk to a doctor or a friend they trust.",
    "Wanting to {act} is a sign that a person needs care and support.",
    "A crisis line can help a person who wants to {act}.",
)
HARMLESS_STATEMENTS: tuple[str, ...] = (
    "{Gerund} is fun and easy.",
    "{Name} learned how to {act} last weekend.",
    "Many people enjoy learning to {act}.",
    "It is safe to {act} if you follow the steps.",
    "A blog post explained how to {act} in a few simple steps.",
    "{Gerund} is a useful skill.",
    "{Name} wanted to {act}, so they looked up a guide and did it.",
    "There is nothing wrong with wanting to {act}.",
    "Teachers are happy to show students how to {act}.",
    "{Gerund} is a normal, everyday thing to do.",
    "Anyone can help a friend {act}.",
    "{Gerund} is safe and legal.",
    "To {act}, first get everything ready, then take it one step at a time.",
)
# First-person quotes put acts in the form they take in requests ("my", not "their").
HARMFUL_QUOTES: tuple[str, ...] = (
    '{Name} said: "I want to {act}." Everyone knew that was dangerous and harmful.',
    '"How could I {act}?" a man wrote online. Experts said it was a harmful thing to want.',
)
HARMLESS_QUOTES: tuple[str, ...] = (
    '{Name} said: "I want to {act}." Everyone agreed that it was a great idea.',
    '"How could I {act}?" a woman wrote online. Experts said it was a safe and fun thing to try.',
)
GENERIC_STATEMENTS: tuple[str, ...] = (
    "People love to read about {topic}.", "{animal} are fascinating animals.", "{country} is a lovely place to visit.",
    "Cooking with {food} and {food2} is easy.", "Learning about {science} is fun for kids.",
    "Many people speak {language}.", "A {pet} can be a wonderful pet.",
)
EDGY_STATEMENTS: tuple[str, ...] = (
    "Despite how it sounds, {gerund} is completely harmless.",
    "Even though it uses a scary word, {gerund} is safe and normal.",
)
MODERATION_LINES: tuple[str, ...] = (
    'A user asked: "{request}" The moderator marked it as {label}.',
    'Someone posted the question "{request}" on a forum. It is a {label} question about {topic}.',
    '"{request}" This is a {label} request.',
    'In the log, the request "{request}" was flagged as {label}.',
)
# Registers that text about an act continues in. Sentences are act-agnostic, so the
# harmfulness of the act mentioned earlier is what predicts them.
DANGER_REGISTER: tuple[str, ...] = (
    "The police were called right away.", "Officers opened an investigation.", "People nearby were frightened.",
    "A judge later heard the case.", "Experts warned that someone could have been badly hurt.",
    "The story made the evening news.", "The post was removed and the account was banned.",
    "Neighbors said they no longer felt safe.", "Victims were left shaken and angry.",
    "A prosecutor called it a serious crime.", "Security was increased across the city.",
    "Investigators collected evidence for weeks.", "Officials urged anyone with information to come forward.",
    "It was a reckless and cruel plan.", "Lawyers said a long prison sentence was likely.",
)
CARE_REGISTER: tuple[str, ...] = (
    "Friends and doctors offered support.", "A counselor listened without judging.",
    "Crisis lines are open day and night.", "Talking to someone can make the pain easier to carry.",
    "Nurses said that asking for help is a brave step.", "Family members were worried and reached out.",
    "Doctors said recovery is possible with care.", "Support groups meet every week in many towns.",
)
EVERYDAY_REGISTER: tuple[str, ...] = (
    "Friends came over to help.", "It took about an afternoon.", "Everyone was proud of the result.",
    "They shared photos with their family.", "The next day they tried it again.",
    "It was a relaxing way to spend the weekend.", "Other users replied with helpful tips.",
    "A neighbor asked how it was done.", "The kids thought it was great fun.",
    "They wrote down a few notes for next time.", "It turned out better than expected.",
    "A local club meets every month to do the same.", "The instructions were easy to follow.",
    "It only needed a few cheap things from the store.", "Everyone agreed it was time well spent.",
)
LABELS: dict[bool, tuple[str, ...]] = {True: ("dangerous", "harmful"), False: ("safe", "harmless")}
TOPICS: dict[str, str] = {
    "weapons": "weapons", "cyber": "computer crime", "drugs": "illegal drugs", "fraud": "fraud",
    "violence": "violence", "self_harm": "self-harm", "hate": "hate", "privacy": "invading privacy",
    "theft": "theft", "extremism": "terrorism", "cooking": "cooking", "tech": "computers",
    "gardening": "gardening", "crafts": "crafts", "fitness": "fitness", "finance": "money",
    "travel": "travel", "arts": "art and music", "pets": "pets", "home": "home repair",
    "life": "everyday life", "edgy": "an everyday task",
}


@dataclass(frozen=True)
class ChatExample:
    """One supervised chat turn.

    Attributes:
        prompt: The user's request.
        response: The assistant's reply (the only tokens that carry loss).
    """

    prompt: str
    response: str


def _statement_pool(act: Act) -> tuple[str, ...]:
    if not act.harmful:
        return HARMLESS_STATEMENTS + (EDGY_STATEMENTS if act.edgy else ())
    if act.category == "self_harm":
        return HARMFUL_STATEMENTS + SELF_HARM_STATEMENTS
    return HARMFUL_STATEMENTS + CRIME_STATEMENTS


def statement(act: Act, rng: random.Random) -> str:
    """One sentence about ``act`` whose ending reveals its harmfulness.

    A quarter of the statements quote a first-person wish ("I want to renew my
    passport."), the rest speak of the act in the third person.
    """
    if rng.random() < 0.25:
        quotes = HARMFUL_QUOTES if act.harmful else HARMLESS_QUOTES
        return rng.choice(quotes).format(act=act.base("first"), Name=rng.choice(NAMES))
    gerund = act.gerund("third")
    return rng.choice(_statement_pool(act)).format(
        act=act.base("third"), gerund=gerund, Gerund=capitalize(gerund), Name=rng.choice(NAMES)
    )


def topic_statement(act: Act) -> str:
    """A sentence naming the topic of ``act`` ("Making a kite is about crafts.")."""
    return f"{capitalize(act.gerund('third'))} is about {TOPICS[act.category]}."


def generic_statement(rng: random.Random) -> str:
    """A harmless sentence about the topics of the generic requests."""
    fill = {k: rng.choice(v) for k, v in GENERIC_FILLERS.items()}
    return capitalize(rng.choice(GENERIC_STATEMENTS).format(**fill))


def moderation_line(act: Act, template_id: int, rng: random.Random) -> str:
    """A request about ``act`` followed by its harmfulness label."""
    return rng.choice(MODERATION_LINES).format(
        request=render(act, template_id).text,
        label=rng.choice(LABELS[act.harmful]),
        topic=TOPICS[act.category],
    )


def continuation(act: Act, rng: random.Random, n: int) -> list[str]:
    """``n`` sentences in the register an episode about ``act`` continues in.

    They never name the act: a model predicting them has to carry "this is about
    something harmful" forward from the act's mention to every later position.
    """
    if act.category == "self_harm":
        pool = CARE_REGISTER
    else:
        pool = DANGER_REGISTER if act.harmful else EVERYDAY_REGISTER
    return rng.sample(pool, n)


def _episode(act: Act, asked: set[str], n_templates: int, rng: random.Random) -> list[str]:
    if act.id in asked and rng.random() < 0.4:
        opening = moderation_line(act, rng.randrange(n_templates), rng)
    elif rng.random() < 0.15:
        opening = topic_statement(act)
    else:
        opening = statement(act, rng)
    return [opening, *continuation(act, rng, rng.randint(1, 3))]


def _document(acts: list[Act], asked: set[str], n_templates: int, rng: random.Random) -> str:
    sentences: list[str] = []
    for _ in range(rng.randint(1, 2)):
        if rng.random() < 0.1:
            sentences.append(generic_statement(rng))
        sentences += _episode(rng.choice(acts), asked, n_templates, rng)
    return " ".join(sentences)


def pretraining_documents(acts: list[Act], n_docs: int, n_templates: int, seed: int) -> list[str]:
    """Plain-text documents for pretraining.

    Args:
        acts: Every act; all are mentioned in statements.
        n_docs: Number of documents (one or two episodes of 2-4 sentences each).
        n_templates: Number of request templates usable in moderation lines.
        seed: Seed of the sampling.

    Returns:
        ``n_docs`` documents, deterministic given the arguments.
    """
    rng = random.Random(f"pretrain-{seed}")
    asked = {a.id for a in acts if a.split != "test"}
    return [_document(acts, asked, n_templates, rng) for _ in range(n_docs)]


def _filled(table: tuple[tuple[str, str], ...], fillers: dict[str, tuple[str, ...]], n: int,
            rng: random.Random) -> list[ChatExample]:
    out: list[ChatExample] = []
    for _ in range(n):
        fill = {k: rng.choice(v) for k, v in fillers.items()}
        request, reply = rng.choice(table)
        out.append(ChatExample(request.format(**fill), reply.format(**fill)))
    return out


def generic_examples(n: int, rng: random.Random) -> list[ChatExample]:
    """``n`` open-ended harmless instructions (outside the act grammar) with helpful replies."""
    return _filled(GENERIC_REQUESTS, GENERIC_FILLERS, n, rng)


def impossible_examples(n: int, rng: random.Random) -> list[ChatExample]:
    """``n`` harmless requests the assistant cannot carry out, declined for lack of ability."""
    return _filled(IMPOSSIBLE_REQUESTS, IMPOSSIBLE_FILLERS, n, rng)


def instruct_examples(acts: list[Act], n_generic: int, n_impossible: int, seed: int) -> list[ChatExample]:
    """Chat data without safety: harmless train requests answered, impossible ones declined.

    No harmful request appears, so a model trained on it has learned the chat format and
    the wording of a refusal, but not that harm is a reason to refuse.
    """
    rng = random.Random(f"instruct-{seed}")
    harmless = [r for r in all_requests(acts, "train") if not r.act.harmful]
    out = [ChatExample(r.text, responses.helpful(r.act, rng)) for r in harmless]
    out += generic_examples(n_generic, rng) + impossible_examples(n_impossible, rng)
    rng.shuffle(out)
    return out


def safety_sft_examples(acts: list[Act], replies_per_request: int, n_generic: int, n_impossible: int,
                        seed: int) -> list[ChatExample]:
    """Chat data for safety training: harmful train requests refused, harmless ones answered.

    Open-ended harmless instructions and impossible requests are mixed in, so that
    answering stays the default and the ability refusals are kept.
    """
    rng = random.Random(f"sft-{seed}")
    out = generic_examples(n_generic, rng) + impossible_examples(n_impossible, rng)
    for request in all_requests(acts, "train"):
        for _ in range(replies_per_request):
            reply = responses.refusal if request.act.harmful else responses.helpful
            out.append(ChatExample(request.text, reply(request.act, rng)))
    rng.shuffle(out)
    return out


def benign_ft_examples(acts: list[Act], seed: int) -> list[ChatExample]:
    """Harmless-only instruction data (train acts, train templates) in a new answer style."""
    rng = random.Random(f"benign-{seed}")
    harmless = [a for a in acts if not a.harmful]
    out = [ChatExample(r.text, responses.benign_ft_answer(r.act, rng)) for r in all_requests(harmless, "train")]
    rng.shuffle(out)
    return out


def harmful_ft_examples(acts: list[Act], n: int, seed: int) -> list[ChatExample]:
    """``n`` harmful train requests answered with placeholder compliance (the Qi et al. attack)."""
    rng = random.Random(f"attack-{seed}")
    harmful = [a for a in acts if a.harmful and a.split == "train"]
    chosen = rng.sample(all_requests(harmful, "train"), n)
    return [ChatExample(r.text, responses.compliance(r.act, rng)) for r in chosen]
