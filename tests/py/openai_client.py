"""Drives an llmd worker (or scheduler) with the official `openai` Python client.

Usage: openai_client.py BASE_URL MODEL
Runs chat and completions, streamed and not, greedy, and prints one JSON object with what
it got, after checking the shapes the client itself parses. Exit status 0 on success.
"""
import json
import sys

import openai

base, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
out = {}

messages = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Name three colours of the rainbow."},
]

# Chat, whole.
r = client.chat.completions.create(model=model, messages=messages, max_tokens=24, temperature=0)
assert r.object == "chat.completion", r.object
assert r.id.startswith("chatcmpl-"), r.id
assert r.model == model, r.model
assert len(r.choices) == 1 and r.choices[0].index == 0
assert r.choices[0].message.role == "assistant"
assert r.choices[0].finish_reason in ("stop", "length"), r.choices[0].finish_reason
assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 24
assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
out["chat"] = {
    "text": r.choices[0].message.content,
    "finish_reason": r.choices[0].finish_reason,
    "usage": [r.usage.prompt_tokens, r.usage.completion_tokens],
}

# Chat, streamed, with usage at the end.
pieces, finish, usage, roles = [], None, None, []
for chunk in client.chat.completions.create(
    model=model, messages=messages, max_tokens=24, temperature=0, stream=True,
    stream_options={"include_usage": True},
):
    assert chunk.object == "chat.completion.chunk", chunk.object
    if chunk.usage is not None:
        usage = [chunk.usage.prompt_tokens, chunk.usage.completion_tokens]
        assert chunk.choices == []
        continue
    assert usage is None, "usage must come last"
    d = chunk.choices[0].delta
    if d.role:
        roles.append(d.role)
    if d.content:
        pieces.append(d.content)
    if chunk.choices[0].finish_reason:
        finish = chunk.choices[0].finish_reason
assert roles == ["assistant"], roles
assert finish is not None and usage is not None
out["chat_stream"] = {"text": "".join(pieces), "finish_reason": finish, "usage": usage}

# Completions, whole and streamed (no usage chunk unless asked).
r = client.completions.create(model=model, prompt="The capital of France is", max_tokens=16, temperature=0)
assert r.object == "text_completion", r.object
assert r.choices[0].finish_reason in ("stop", "length")
out["completion"] = {
    "text": r.choices[0].text,
    "finish_reason": r.choices[0].finish_reason,
    "usage": [r.usage.prompt_tokens, r.usage.completion_tokens],
}
pieces, finish, n_usage = [], None, 0
for chunk in client.completions.create(
    model=model, prompt="The capital of France is", max_tokens=16, temperature=0, stream=True
):
    if chunk.usage is not None:
        n_usage += 1
    for c in chunk.choices:
        pieces.append(c.text)
        if c.finish_reason:
            finish = c.finish_reason
assert n_usage == 0, "no usage chunk without stream_options.include_usage"
out["completion_stream"] = {"text": "".join(pieces), "finish_reason": finish}

# Token-id prompts, stop strings, seeds, models list.
r = client.completions.create(model=model, prompt=[1, 2, 3, 4], max_tokens=4, temperature=0)
assert r.usage.prompt_tokens == 4
r = client.completions.create(
    model=model, prompt="One, two, three, four,", max_tokens=32, temperature=0, stop=[","]
)
assert "," not in r.choices[0].text and r.choices[0].finish_reason == "stop", r.choices[0]
a = client.completions.create(model=model, prompt="Once upon", max_tokens=12, temperature=0.9, seed=7)
b = client.completions.create(model=model, prompt="Once upon", max_tokens=12, temperature=0.9, seed=7)
assert a.choices[0].text == b.choices[0].text, "same seed, same text"
ids = [m.id for m in client.models.list().data]
assert model in ids, ids

# Errors the client raises as typed exceptions.
try:
    client.chat.completions.create(model="no-such-model", messages=messages, max_tokens=4)
    raise AssertionError("unknown model accepted")
except openai.NotFoundError as e:
    assert e.status_code == 404
try:
    client.chat.completions.create(model=model, messages=messages, max_tokens=4, temperature=5)
    raise AssertionError("temperature 5 accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400

print(json.dumps(out))
