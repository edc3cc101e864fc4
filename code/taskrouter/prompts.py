"""Prompt strategies, laid out so that what changes least comes first.

A prompt is a list of segments: the instruction and task list (shared by every
request with the same list), one segment per message (the conversation grows at
the end), then a short tail with the current task and the answer lead. Segments
are tokenised one by one and concatenated, so the token ids of a shorter
conversation are an exact prefix of the longer one: that is what lets the KV
cache of an earlier turn serve the next. Training uses this same code.
"""
from __future__ import annotations

from dataclasses import dataclass

from .schema import NONE, Message, Task

ANSWER_LEAD = "Task:"
REASONING_TOKENS = 48

_ZERO_SHOT = (
    "You route a conversation between a professional and their AI assistant to one task.\n"
    "Read the task list and the conversation, then name the task the user is doing after "
    "their latest message. Keep the current task while the user is still working on it, "
    "name another task when they change their mind, and answer none when they close the "
    "task (thanks, that's all) or ask for something no task covers.\n"
)

_FEW_SHOT = _ZERO_SHOT + (
    "\nExample 1\nTasks:\n- book_flight: Book a plane ticket\n- weather: Get the weather forecast\n"
    "- none: no task fits\nConversation:\nUser: What's it like in Paris tomorrow?\n"
    "Current task: none\nReasoning: The user asks about tomorrow's conditions in a city, "
    "which is a weather forecast.\nTask: weather\n"
    "\nExample 2\nTasks:\n- book_flight: Book a plane ticket\n- weather: Get the weather forecast\n"
    "- none: no task fits\nConversation:\nUser: I need a flight to Rome on Friday.\n"
    "Assistant: Which airport do you leave from?\nUser: Great, that's all I needed, thanks!\n"
    "Current task: book_flight\nReasoning: The user thanks the assistant and closes the "
    "booking; nothing else is asked, so no task is active.\nTask: none\n"
)

_REACT = _ZERO_SHOT + (
    "Work in steps: a Thought about what the user wants, then the Action `answer` with the task.\n"
    "\nExample\nTasks:\n- book_flight: Book a plane ticket\n- weather: Get the weather forecast\n"
    "- none: no task fits\nConversation:\nUser: Book me a seat to Rome. Actually no, first "
    "tell me if it will rain there.\nCurrent task: book_flight\nThought: The user drops the "
    "booking for now and asks about rain in Rome, a forecast.\nAction: answer\nTask: weather\n"
)

_ADAPTER = "Route the latest user message to a task.\n"

_HEADERS = {"zero_shot": _ZERO_SHOT, "few_shot_cot": _FEW_SHOT, "react": _REACT, "adapter": _ADAPTER}
REASONING_LEAD = {"few_shot_cot": "Reasoning:", "react": "Thought:"}
REASONING_CLOSE = {"few_shot_cot": "\n", "react": "\nAction: answer\n"}


@dataclass(frozen=True)
class Prompt:
    """Segments in cache order; `n_prefix` = 1 (instruction + tasks), then one per message, then the tail."""

    segments: list[str]
    reasoning_lead: str | None  # for few_shot_cot / react: generate after this, then close with ANSWER_LEAD


# How the `adapter` strategy lists the tasks; an adapter's router.json `prompt_format` names the one it
# trained on. "adapter": `- name: description`. "adapter-v2": `- description => name`, so that the
# name's tokens are computed in the light of what the task does (a token sees only what precedes it)
# and the answer can copy the name of the line whose meaning matches, whatever the name says.
ADAPTER_FORMATS = ("adapter", "adapter-v2")


def _task_block(tasks: list[Task], prompt_format: str = "adapter") -> str:
    if prompt_format == "adapter-v2":
        lines = [f"- {' '.join(t.description.split())} => {t.name}" if t.description else f"- {t.name}"
                 for t in tasks]
        lines.append(f"- no task fits => {NONE}")
    else:
        lines = [f"- {t.name}: {' '.join(t.description.split())}" if t.description else f"- {t.name}" for t in tasks]
        lines.append(f"- {NONE}: no task fits")
    return "Tasks:\n" + "\n".join(lines) + "\nConversation:\n"


def _message(message: Message) -> str:
    speaker = "User" if message.role == "user" else "Assistant"
    return f"{speaker}: {' '.join(message.content.split())}\n"


def build_prompt(strategy: str, tasks: list[Task], messages: list[Message], current_task: str | None,
                 prompt_format: str = "adapter") -> Prompt:
    """The prompt of one strategy (`prompt_format`: the adapter's task-list layout, see ADAPTER_FORMATS);
    the current task sits in the tail so it never breaks the cache."""
    if prompt_format not in ADAPTER_FORMATS:
        raise ValueError(f"prompt_format {prompt_format!r}: not one of {', '.join(ADAPTER_FORMATS)}")
    header = ("\n" if strategy != "adapter" else "") + _task_block(tasks, prompt_format if strategy == "adapter"
                                                                     else "adapter")
    segments = [_HEADERS[strategy] + header]
    segments += [_message(m) for m in messages]
    tail = f"Current task: {current_task or NONE}\n"
    lead = REASONING_LEAD.get(strategy)
    segments.append(tail + (lead if lead else ANSWER_LEAD))
    return Prompt(segments=segments, reasoning_lead=lead)


def answer_text(name: str) -> str:
    """What follows the answer lead for a chosen name; the newline ends the name in the trie."""
    return f" {name}\n"


@dataclass(frozen=True)
class EncodedPrompt:
    """Token ids per segment, after dropping the oldest messages to fit the budget."""

    segments: list[list[int]]

    @property
    def ids(self) -> list[int]:
        return [i for seg in self.segments for i in seg]


MIN_MESSAGE_TOKENS = 32  # room the newest message must have next to the task list, or the request is refused


def encode_text(tokenizer, text: str, add_special_tokens: bool = False) -> list[int]:
    """Token ids of client text: a special token's spelling in it (`<end_of_turn>`) stays text, never a control token."""
    return tokenizer.encode(text, add_special_tokens=add_special_tokens, split_special_tokens=True)


def encode_prompt(tokenizer, prompt: Prompt, max_tokens: int = 1024, history_tokens: int | None = None,
                  history_slack: int = 0) -> EncodedPrompt:
    """Tokenise segment by segment, keeping the newest messages within `history_tokens` and the
    whole prompt within `max_tokens`.

    The task list and the tail are always whole and the newest message is never dropped (a huge
    one keeps its end, the part nearest the answer), so a long task list can never blind the model
    to what the user just said. Raises `PromptTooLong` when the task list leaves it no room.
    With `history_slack`, the window moves in chunks: its first message stays while the history
    fits `history_tokens + history_slack`, so the next turn's prompt extends this one's and its
    cached prefix serves; past that, the oldest messages go until `history_tokens` fit again.
    """
    encoded = [encode_text(tokenizer, s, add_special_tokens=(i == 0)) for i, s in enumerate(prompt.segments)]
    head, messages, tail = encoded[0], encoded[1:-1], encoded[-1]
    room = max_tokens - len(head) - len(tail)
    if room < MIN_MESSAGE_TOKENS:
        raise PromptTooLong(len(head), max_tokens)
    keep = min(room, history_tokens or room)
    messages = messages[_window_start([len(m) for m in messages], keep, min(room, keep + history_slack)):]
    if len(messages) == 1 and len(messages[0]) > keep:
        messages[-1] = messages[-1][-keep:]
    return EncodedPrompt(segments=[head, *messages, tail])


def _window_start(lengths: list[int], keep: int, limit: int) -> int:
    """The first message of the window, replayed over the conversation as it grew (stateless, so every
    request of a conversation agrees): when the history passes `limit`, the oldest messages go until
    it fits `keep`; the newest message always stays."""
    start, total = 0, 0
    for newest, length in enumerate(lengths):
        total += length
        if total > limit:
            while total > keep and start < newest:
                total -= lengths[start]
                start += 1
    return start


class PromptTooLong(ValueError):
    """The instruction and task list alone fill the prompt limit."""

    def __init__(self, head_tokens: int, max_tokens: int):
        super().__init__(f"tasks: the task list takes {head_tokens} tokens of the {max_tokens}-token prompt limit, "
                         f"leaving under {MIN_MESSAGE_TOKENS} for the conversation; send fewer tasks or "
                         "shorter descriptions")
