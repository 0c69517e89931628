"""How often the copy filter rejects copies of GSM8K expert solutions, and how often it rejects paraphrases.

For each of the first N GSM8K train problems, two guided "re-solves" are checked against the expert
solution as the guided prompt shows it (normalised: no ``<<...>>`` notes, ``#### N`` as a boxed answer),
with the default ``rewrite.copy_filter``:

- the copy: the shown expert solution itself, which the filter should reject;
- the paraphrase, which it should let through: a deterministic template restatement that opens by
  repeating the problem's question verbatim, then writes each line of the solution as a numbered step:
  a line with an equation keeps only its mathematics, in LaTeX ("3 green hard hats + 16 pink hard hats
  = 19 hard hats" becomes ``Step 5: we get $3 + 16 = 19$.``), a line without one keeps its words with
  frequent ones swapped for synonyms; it closes with the boxed answer.

Copies too short to hold one run of ``max_shared_ngram`` words cannot be caught by the n-gram test; their
count is printed too.

    .venv/bin/python scripts/copy_filter_rates.py --problems 200
"""

from __future__ import annotations

import argparse
import os
import re
from collections import Counter

from mindgap.data.sources import data_config, load_problems
from mindgap.paths import PROJECT_ROOT
from mindgap.records import Problem
from mindgap.rewriting.config import CopyFilterConfig
from mindgap.rewriting.copy_filter import copy_reason, words
from mindgap.rewriting.expert import shown_expert_solution

_OPERATOR = re.compile(r"[-+*/x×=()]+")
_SENTENCE = re.compile(r"[^.?!]+[.?!]")
_FINAL_LINE = "The final answer is"
SYNONYMS = {
    "so": "thus",
    "then": "next",
    "total": "overall",
    "each": "every",
    "has": "holds",
    "have": "hold",
    "needs": "requires",
    "need": "require",
    "bought": "purchased",
    "buy": "purchase",
    "gets": "receives",
    "get": "receive",
    "left": "remaining",
    "more": "additional",
    "spent": "paid",
    "altogether": "combined",
    "means": "implies",
    "makes": "produces",
    "number": "count",
    "in": "within",
}


def data_root() -> str:
    return os.environ.get("MINDGAP_DATA_ROOT") or str(PROJECT_ROOT.parent / "shared" / "data")


def _swap_synonyms(line: str) -> str:
    return " ".join(SYNONYMS.get(word.lower(), word) for word in line.split())


def paraphrase(problem: Problem) -> str:
    """The template restatement of the problem's shown expert solution (see the module docstring)."""
    lines = [line for line in shown_expert_solution(problem).splitlines() if line.strip()]
    sentences = _SENTENCE.findall(problem.problem)
    question = sentences[-1].strip() if sentences else problem.problem
    steps = []
    for number, line in enumerate((line for line in lines if not line.startswith(_FINAL_LINE)), start=1):
        if "=" in line:
            tokens = [token.strip(".,:;$") for token in line.replace("$", "").split()]
            math = [token for token in tokens if any(c.isdigit() for c in token) or _OPERATOR.fullmatch(token)]
            steps.append(f"Step {number}: we get ${' '.join(math)}$.")
        else:
            steps.append(f"Step {number}: {_swap_synonyms(line)}")
    return "\n".join([f"We need to find out: {question}", *steps, f"So the result is $\\boxed{{{problem.answer}}}$."])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=200, help="GSM8K train problems (the first N)")
    parser.add_argument("--show", type=int, default=0, help="print this many paraphrases")
    args = parser.parse_args()
    config = CopyFilterConfig()
    problems = load_problems(data_config("gsm8k_train"), data_root()).problems[: args.problems]
    copies: Counter[str | None] = Counter()
    paraphrases: Counter[str | None] = Counter()
    too_short = 0
    for index, problem in enumerate(problems):
        shown = shown_expert_solution(problem)
        copies[copy_reason(shown, shown, problem.problem, config)] += 1
        rewritten = paraphrase(problem)
        paraphrases[copy_reason(rewritten, shown, problem.problem, config)] += 1
        too_short += len(words(shown)) < (config.max_shared_ngram or 0)
        if index < args.show:
            print(f"--- {problem.id}\n{shown}\n--- paraphrase\n{rewritten}\n")

    def rate(counts: Counter[str | None]) -> str:
        rejected = sum(count for reason, count in counts.items() if reason is not None)
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(counts.items(), key=str) if reason)
        return f"{rejected}/{len(problems)} = {rejected / len(problems):.1%} rejected ({reasons or 'none'})"

    n = config.max_shared_ngram
    print(f"copy filter (meta phrases, max_shared_ngram={n}) on {len(problems)} GSM8K problems")
    print(f"  self-copies:  {rate(copies)}; {too_short} shown solutions are shorter than {n} words")
    print(f"  paraphrases:  {rate(paraphrases)}")


if __name__ == "__main__":
    main()
