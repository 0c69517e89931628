"""The two solution styles of the toy world, written from a problem's structure.

The *native* style is what the toy model is pretrained on: verbose sentences that retell the
story one event at a time, each followed by the running total. The *expert* style is the fine-tuning
set's: terse LaTeX equations, no words, in another order (every product first, then the chain of
running totals). Both end with ``\\boxed{answer}``, the final-answer format every prompt type asks for.
"""

from __future__ import annotations

from mindgap.toy.problems import ToyProblem


def native_solution(problem: ToyProblem) -> str:
    totals = problem.running_totals()
    person, unit = problem.person, problem.unit
    lines = [f"{person.name} has {problem.start} {unit}."]
    for event, before, after in zip(problem.events, totals[:-1], totals[1:], strict=True):
        told = event.sentence.removesuffix(".")
        sign = "+" if event.is_gain else "-"
        total = f"so {person.pronoun} has {before} {sign} {event.size} = {after} {unit}."
        if event.is_group:
            lines.append(f"{told}, which is {event.count} * {event.amount} = {event.size} {unit}, {total}")
        else:
            lines.append(f"{told}, {total}")
    lines.append(f"So {person.name} has {problem.answer} {unit} now. The answer is \\boxed{{{problem.answer}}}.")
    return "\n".join(lines)


def expert_solution(problem: ToyProblem) -> str:
    totals = problem.running_totals()
    products = [f"${event.count} \\cdot {event.amount} = {event.size}$" for event in problem.events if event.is_group]
    steps = [
        f"${before} {'+' if event.is_gain else '-'} {event.size} = {after}$"
        for event, before, after in zip(problem.events, totals[:-1], totals[1:], strict=True)
    ]
    lines = [", ".join(products) + "."] if products else []
    lines.append(", ".join(steps) + ".")
    lines.append(f"$\\boxed{{{problem.answer}}}$")
    return "\n".join(lines)
