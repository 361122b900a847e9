"""Write data/stdlib_chat.jsonl: a few hundred chat conversations about the Python standard library.

    python scripts/make_chat_data.py            # -> data/stdlib_chat.jsonl
    python scripts/make_chat_data.py --out x.jsonl --count 300

Each line is `{"messages": [{"role", "content"}, ...]}`: a user asks what a function, class or module
does and the assistant answers with the first paragraph of its docstring. Some conversations start with a
system message, some go on for a second or third exchange. Generated from the running Python's own
stdlib, so it needs no download and is the same on every run of the same Python (a fixed seed picks the
shapes; no timestamps, no set ordering). configs/chat.yaml distils on it.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import random
import re
import sys
from pathlib import Path

MODULES = (
    "abc argparse base64 bisect calendar collections contextlib copy csv dataclasses datetime decimal "
    "difflib enum fnmatch fractions functools glob gzip hashlib heapq html inspect io ipaddress itertools "
    "json keyword logging math operator os os.path pathlib pprint queue random re reprlib sched secrets "
    "shlex shutil statistics string struct subprocess tempfile textwrap threading time typing "
    "unicodedata urllib.parse uuid weakref zipfile zlib"
).split()
SYSTEM = (
    "You are a concise assistant that explains the Python standard library.",
    "Answer questions about Python's standard library in one or two sentences.",
    "You help programmers find their way around the Python standard library.",
)
ASK_NAME = (
    "What does `{name}` do?",
    "Can you explain `{name}`?",
    "What is `{name}` for?",
    "I found `{name}` in some code. What does it do?",
    "Briefly, what does `{name}` do in Python?",
)
ASK_MODULE = (
    "What is the `{module}` module for?",
    "What can I do with Python's `{module}` module?",
)
FOLLOW_UP = ("And `{name}`?", "What about `{name}`?", "How about `{name}` from the same module?")
WHERE = "Which module do I import for it?"
MAX_ANSWER = 320  # characters: conversations stay a few hundred tokens
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)\s*((-+>|<==>).*)?$")  # "deque([iterable]) --> deque object"
_SIGNATURE_DASH = re.compile(r"^[\w.]+\(.*?\) - ")  # "new(name, data=b'') - Return a new ..."


def first_paragraph(doc: str | None) -> str | None:
    """The docstring's first prose paragraph on one line, cut at a sentence end near MAX_ANSWER."""
    if not doc:
        return None
    for paragraph in doc.strip().split("\n\n"):
        # C functions start with their signature ("log(x, [base=math.e])"): not an answer.
        lines = [line for line in paragraph.splitlines() if not _SIGNATURE.match(line.strip())]
        text = _SIGNATURE_DASH.sub("", " ".join(" ".join(lines).split()))
        if not text:
            continue
        if len(text) > MAX_ANSWER:
            cut = text.rfind(". ", 0, MAX_ANSWER)
            if cut < 40:
                return None
            text = text[: cut + 1]
        return text if len(text) >= 24 else None
    return None


def topics() -> tuple[list[dict], list[dict]]:
    """([{module, name, kind, answer}] for public functions/classes, [{module, answer}] for modules)."""
    items, modules = [], []
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        answer = first_paragraph(inspect.getdoc(module))
        if answer is not None:
            modules.append({"module": module_name, "answer": answer})
        public = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
        for name in sorted(set(public)):
            value = getattr(module, name, None)
            if not (inspect.isfunction(value) or inspect.isbuiltin(value) or inspect.isclass(value)):
                continue
            answer = first_paragraph(inspect.getdoc(value))
            if answer is None or name.isupper():
                continue
            kind = "class" if inspect.isclass(value) else "function"
            items.append({"module": module_name, "name": name, "kind": kind, "answer": answer})
    return items, modules


def explain(item: dict) -> str:
    return f"`{item['module']}.{item['name']}` is a {item['kind']} in the `{item['module']}` module. {item['answer']}"


def conversation(rng: random.Random, item: dict, others: list[dict], modules: list[dict]) -> list[dict]:
    """One conversation about `item`; its shape (system message, follow-ups) drawn from `rng`."""
    messages = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": rng.choice(SYSTEM)})
    qualified = f"{item['module']}.{item['name']}"
    messages.append({"role": "user", "content": rng.choice(ASK_NAME).format(name=qualified)})
    messages.append({"role": "assistant", "content": explain(item)})
    shape = rng.random()
    if shape < 0.25:
        messages.append({"role": "user", "content": WHERE})
        messages.append(
            {"role": "assistant", "content": f"`import {item['module']}`, then call `{qualified}`."}
        )
    elif shape < 0.5:
        same = [o for o in others if o["module"] == item["module"] and o["name"] != item["name"]]
        if same:
            other = rng.choice(same)
            name = f"{other['module']}.{other['name']}"
            messages.append({"role": "user", "content": rng.choice(FOLLOW_UP).format(name=name)})
            messages.append({"role": "assistant", "content": explain(other)})
    elif shape < 0.6:
        about = [m for m in modules if m["module"] == item["module"]]
        if about:
            question = rng.choice(ASK_MODULE).format(module=item["module"])
            messages.append({"role": "user", "content": question})
            messages.append({"role": "assistant", "content": about[0]["answer"]})
    return messages


def build(count: int, seed: int = 0) -> list[dict]:
    items, modules = topics()
    rng = random.Random(seed)
    chosen = rng.sample(items, min(count, len(items)))
    return [{"messages": conversation(rng, item, items, modules)} for item in chosen]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "data/stdlib_chat.jsonl"))
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    records = build(args.count, args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as file:
        for record in records:
            file.write(json.dumps(record, ensure_ascii=False) + "\n")
    turns = sum(1 for r in records for m in r["messages"] if m["role"] == "assistant")
    print(f"{out}: {len(records)} conversations, {turns} assistant turns, {out.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
