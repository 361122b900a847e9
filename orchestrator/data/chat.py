"""Chat conversations -> the text the tokenizer's own chat template renders + the character spans of
the turns that are trained (assistant turns, or a pair's completion).

Templates rarely carry `{% generation %}` markers, so spans are found by rendering prefixes: turn i
(an assistant message) spans from the end of `render(messages[:i], add_generation_prompt=True)` (so
the `<|im_start|>assistant\\n` header is not in it) to the end of `render(messages[:i+1])` (so the
end-of-turn token, e.g. `<|im_end|>`, is). That holds only if each render is a prefix of the next;
a template that breaks it (one that rewrites earlier turns) is refused for that record. Whitespace the
template puts after the end-of-turn token is not trained: generation stops at the token.
With `{% generation %}` markers the template's own spans are used.
"""

from __future__ import annotations

import re
from typing import Any

from orchestrator.errors import DataError

ROLES = ("system", "user", "assistant", "tool")
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


def tokenizer_name(tokenizer: Any) -> str:
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def chat_template(tokenizer: Any) -> str:
    """The tokenizer's chat template; a one-line `DataError` when it has none."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: "default" is what apply_chat_template uses
        template = template.get("default")
    if not template:
        raise DataError(
            f"tokenizer {tokenizer_name(tokenizer)!r} has no chat template, so chat records cannot be "
            "rendered: set data.tokenizer to one that has one (an Instruct/chat model's)"
        )
    return template


def check_messages(messages: Any, where: str, field: str = "messages") -> list[dict]:
    """`messages` as a list of {"role", "content"} dicts, or a one-line `DataError` naming the entry."""
    if not isinstance(messages, list) or not messages:
        what = "empty" if messages == [] else f"a {type(messages).__name__}"
        raise DataError(f"{where}: {field!r} is {what}, not a list of {{role, content}} messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise DataError(
                f"{where}: {field}[{index}] is a {type(message).__name__}, not a {{role, content}} object"
            )
        role = message.get("role")
        if role not in ROLES:
            raise DataError(f"{where}: {field}[{index}] has role {role!r}; allowed: {', '.join(ROLES)}")
        content = message.get("content")
        # An assistant turn that only calls tools has no content (OpenAI format): the template renders it.
        if content is None and role == "assistant" and message.get("tool_calls"):
            continue
        if not isinstance(content, str):
            what = "no 'content'" if content is None else f"'content' of type {type(content).__name__}"
            raise DataError(f"{where}: {field}[{index}] ({role}) has {what}; expected a string")
    return messages


class ChatRenderer:
    """Renders conversations with one tokenizer's chat template (built once per actor)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.template = chat_template(tokenizer)
        self.name = tokenizer_name(tokenizer)
        self.marked = _GENERATION_TAG.search(self.template) is not None

    def render(self, messages: list[dict], where: str, add_generation_prompt: bool = False) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except Exception as exc:  # jinja2 TemplateError, or raise_exception() inside the template
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(
                f"{where}: the chat template of tokenizer {self.name!r} refused this conversation: {first}"
            ) from None

    def assistant_spans(self, messages: list[dict], where: str) -> tuple[str, list[tuple[int, int]]]:
        """(rendered conversation, [(start, end) character span of each assistant turn])."""
        if self.marked:
            return self._marked_spans(messages, where)
        text = self.render(messages, where)
        spans = []
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            spans.append(self.turn_span(messages[:index], messages[: index + 1], text, where))
        return text, spans

    def turn_span(self, before: list[dict], through: list[dict], text: str, where: str) -> tuple[int, int]:
        """The span in `text` (the whole conversation rendered) of what `through` adds to `before`."""
        head = self.render(before, where, add_generation_prompt=True)
        upto = self.render(through, where)
        if not (upto.startswith(head) and text.startswith(upto)):
            raise DataError(
                f"{where}: the chat template of tokenizer {self.name!r} does not render each turn as a "
                f"prefix of the next (turn {len(through) - 1}), so its trained tokens cannot be located; "
                "use data.loss_on: all"
            )
        return len(head), _trim_end(upto, len(head))

    def _marked_spans(self, messages: list[dict], where: str) -> tuple[str, list[tuple[int, int]]]:
        from transformers.utils.chat_template_utils import render_jinja_template

        try:
            rendered, indices = render_jinja_template(
                conversations=[messages],
                chat_template=self.template,
                return_assistant_tokens_mask=True,
                **self.tokenizer.special_tokens_map,
            )
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(
                f"{where}: the chat template of tokenizer {self.name!r} refused this conversation: {first}"
            ) from None
        return rendered[0], [(start, end) for start, end in indices[0]]


def _trim_end(text: str, start: int) -> int:
    """The end of `text[start:]` without its trailing whitespace (kept if that would leave nothing)."""
    stripped = len(text.rstrip())
    return stripped if stripped > start else len(text)


def token_mask(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> Any:
    """(n,) int8: 1 for each token whose characters overlap a span (one straddling an edge is trained).

    `offsets` are the tokens' (start, end) character offsets in the rendered text, (n, 2).
    """
    import numpy as np

    bounds = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    mask = np.zeros(len(bounds), dtype=np.int8)
    for start, end in spans:
        mask[(bounds[:, 0] < end) & (bounds[:, 1] > start)] = 1
    return mask
