"""Toy math word problems: a starting quantity changed by a chain of events, drawn from a seeded RNG.

A problem is kept as its structure (who, what, the start, the events) next to its text, so
that the gold answer is computed from the structure and each solution style is written from
it rather than parsed back out of the text.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mindgap.toy.config import ToyDistributionConfig

GAIN, LOSE, GAIN_GROUPS, LOSE_GROUPS = "gain", "lose", "gain_groups", "lose_groups"

# (name, pronoun)
PEOPLE = [
    *((name, "she") for name in ("Mia", "Ava", "Zoe", "Lily", "Emma", "Nora", "Ruby", "Ella", "Iris")),
    *((name, "he") for name in ("Leo", "Sam", "Max", "Ben", "Jack", "Owen", "Luke", "Noah", "Finn")),
]
ITEMS = ["marbles", "stickers", "apples", "cards", "shells", "stamps", "beads", "cookies", "pencils", "crayons"]
CONTAINERS = ["boxes", "bags"]
THINGS = ["books", "pens", "toys"]

# Each event sentence starts with its ordinal, so that a solution can find the k-th event by name
# (a small model learns this kind of lookup far sooner than counting sentences).
ORDINALS = ["First", "Second", "Third", "Fourth", "Fifth", "Sixth", "Seventh", "Eighth", "Ninth", "Tenth"]

# Every proper noun and ordinal a problem can use: the tokenizer learns them all, including those
# that only longer problems use (the fifth event, say).
LEXICON = " ".join([*ORDINALS, *(name for name, *_ in PEOPLE), *ITEMS, *CONTAINERS, *THINGS])

# The wording of the plain gains and losses that only a distribution with novel_share > 0 tells: known
# words in a role the pretraining never gives them. Items are bought (a gain) and sold (a loss), the
# reverse of what buying and selling do to dollars; dollars are found and lost, as items are. The sign
# now depends on what is counted, a skill only data told this way can teach; the words themselves are
# ones the toy model already reads and retells (unseen words it cannot retell at all, and learning to
# costs it the rest: README, the toy world's calibration).
NOVEL_VERBS = {
    "inventory": {GAIN: "buys", LOSE: "sells"},
    "packs": {GAIN: "buys", LOSE: "sells"},
    "money": {GAIN: "finds", LOSE: "loses"},
}

# The verb of a trade (ambiguous_share > 0): a gain or a loss that only a worked solution tells apart.
AMBIGUOUS_VERB = "trades"

# Which event kinds each family tells, and the unit it counts.
FAMILY_EVENTS = {
    "inventory": (GAIN, LOSE),
    "packs": (GAIN, LOSE, GAIN_GROUPS, LOSE_GROUPS),
    "money": (GAIN, LOSE, GAIN_GROUPS, LOSE_GROUPS),
}


@dataclass(frozen=True)
class Person:
    name: str
    pronoun: str


@dataclass(frozen=True)
class Event:
    """One change of the quantity: ``count`` groups of ``amount`` gained or lost (count is 1 for plain events)."""

    kind: str
    amount: int
    count: int
    # Plural noun of the groups (boxes, friends, notebooks); empty for plain gains and losses.
    group_noun: str
    # The sentence of the problem text that tells this event.
    sentence: str

    @property
    def is_gain(self) -> bool:
        return self.kind in (GAIN, GAIN_GROUPS)

    @property
    def is_group(self) -> bool:
        return self.kind in (GAIN_GROUPS, LOSE_GROUPS)

    @property
    def size(self) -> int:
        """Units this event moves."""
        return self.amount * self.count

    @property
    def change(self) -> int:
        return self.size if self.is_gain else -self.size


@dataclass(frozen=True)
class ToyProblem:
    family: str
    person: Person
    # Plural noun of what is counted ("marbles", "dollars").
    unit: str
    start: int
    events: tuple[Event, ...]
    text: str

    @property
    def steps(self) -> int:
        return len(self.events)

    def running_totals(self) -> list[int]:
        """The quantity after each event, the start first."""
        totals = [self.start]
        for event in self.events:
            totals.append(totals[-1] + event.change)
        return totals

    @property
    def answer(self) -> int:
        return self.running_totals()[-1]


def _clause(
    kind: str,
    family: str,
    person: Person,
    unit: str,
    amount: int,
    count: int,
    noun: str,
    spec: ToyDistributionConfig,
    rng: random.Random,
) -> str:
    he = person.pronoun
    # Without novel or ambiguous wording no number is drawn here: such a distribution draws what it always did.
    if kind in (GAIN, LOSE) and spec.novel_share + spec.ambiguous_share > 0:
        roll = rng.random()
        if roll < spec.novel_share:
            return f"{he} {NOVEL_VERBS[family][kind]} {amount} {unit}"
        if roll < spec.novel_share + spec.ambiguous_share:
            return f"{he} {AMBIGUOUS_VERB} {amount} {unit}"
    # A verb means a gain or a loss in every family, so the sign never depends on what is counted.
    if family == "money":
        options = {
            GAIN: [f"{he} earns {amount} dollars"],
            LOSE: [f"{he} spends {amount} dollars"],
            GAIN_GROUPS: [f"{he} sells {count} {noun} for {amount} dollars each"],
            LOSE_GROUPS: [f"{he} buys {count} {noun} for {amount} dollars each"],
        }
    else:
        options = {
            GAIN: [f"{he} finds {amount} more {unit}", f"{he} gets {amount} more {unit}"],
            LOSE: [f"{he} loses {amount} {unit}", f"{he} gives away {amount} {unit}"],
            GAIN_GROUPS: [f"{he} gets {count} {noun} of {amount} {unit}"],
            LOSE_GROUPS: [f"{he} gives {count} friends {amount} {unit} each"],
        }
    return rng.choice(options[kind])


def _draw_event(
    position: int, family: str, person: Person, unit: str, total: int, spec: ToyDistributionConfig, rng: random.Random
) -> Event:
    """A random event (the ``position``-th, from 0) that keeps the running total within [0, max_value]."""
    kinds = list(FAMILY_EVENTS[family])
    while True:
        kind = rng.choice(kinds)
        count = rng.randint(2, spec.max_groups) if kind in (GAIN_GROUPS, LOSE_GROUPS) else 1
        if kind in (GAIN, GAIN_GROUPS):
            largest = min(spec.max_operand, (spec.max_value - total) // count)
        else:
            largest = min(spec.max_operand, total // count)
        # Amounts of 1 would make "1 marbles"; the smallest amount told is 2.
        if largest < 2:
            continue
        amount = rng.randint(2, largest)
        noun = ""
        if kind == GAIN_GROUPS and family == "packs":
            noun = rng.choice(CONTAINERS)
        elif kind == LOSE_GROUPS and family == "packs":
            noun = "friends"
        elif kind in (GAIN_GROUPS, LOSE_GROUPS):
            noun = rng.choice(THINGS)
        clause = _clause(kind, family, person, unit, amount, count, noun, spec, rng)
        sentence = f"{ORDINALS[position]}, {clause}."
        return Event(kind=kind, amount=amount, count=count, group_noun=noun, sentence=sentence)


def draw_problem(spec: ToyDistributionConfig, rng: random.Random) -> ToyProblem:
    """One problem of the distribution ``spec``; a function of the RNG state only."""
    family = rng.choice(spec.families)
    person = Person(*rng.choice(PEOPLE))
    unit = "dollars" if family == "money" else rng.choice(ITEMS)
    steps = rng.choices(spec.steps, weights=spec.step_weights)[0]
    # A start of at least 2 leaves room for a first loss.
    start = rng.randint(2, spec.max_start)
    events = []
    total = start
    for position in range(steps):
        event = _draw_event(position, family, person, unit, total, spec, rng)
        events.append(event)
        total += event.change
    opening = f"{person.name} has {start} {unit}."
    question = f"How many {unit} does {person.name} have now?"
    text = " ".join([opening, *(event.sentence for event in events), question])
    return ToyProblem(family=family, person=person, unit=unit, start=start, events=tuple(events), text=text)
