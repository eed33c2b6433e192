"""The official OpenAI Python SDK against a running HelixFlow node.

Run by node/tests/openai_sdk.rs with HF_BASE_URL, HF_KEY and HF_REFERENCE (the tiny-llama
fixture's reference.json) set. Exits non-zero on the first failed check.
"""

import json
import math
import os
import sys

import openai

BASE = os.environ["HF_BASE_URL"] + "/v1"
KEY = os.environ["HF_KEY"]
REFERENCE = json.load(open(os.environ["HF_REFERENCE"]))
MODEL = "tiny-llama"

client = openai.OpenAI(base_url=BASE, api_key=KEY, max_retries=0)
chat_prompts = [p for p in REFERENCE["prompts"] if p["kind"] == "chat"]
text_prompts = [p for p in REFERENCE["prompts"] if p["kind"] == "text"]


def check(condition, message):
    if not condition:
        print("FAILED:", message, file=sys.stderr)
        sys.exit(1)


# Models.
ids = [m.id for m in client.models.list()]
check(MODEL in ids, f"models.list: {ids}")
check(client.models.retrieve("tiny").id == MODEL, "models.retrieve by alias")

# Greedy chat, plain and streamed, equals the fixture.
for prompt in chat_prompts:
    expected = prompt["greedy"]["text_skip_special"]
    response = client.chat.completions.create(
        model=MODEL,
        messages=prompt["messages"],
        temperature=0,
        max_completion_tokens=24,
        extra_body={"ignore_eos": True},
    )
    choice = response.choices[0]
    check(choice.message.content == expected, f"{prompt['id']}: {choice.message.content!r} != {expected!r}")
    check(choice.finish_reason == "length", f"finish_reason {choice.finish_reason}")
    check(response.usage.prompt_tokens == prompt["num_tokens"], "prompt_tokens")
    check(response.usage.completion_tokens == 24, "completion_tokens")

    stream = client.chat.completions.create(
        model=MODEL,
        messages=prompt["messages"],
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    text, usage, finish = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    check(text == expected, f"streamed {prompt['id']}: {text!r}")
    check(finish == "length", f"streamed finish_reason {finish}")
    check(usage is not None and usage.completion_tokens == 24, f"streamed usage {usage}")

# Sampling knobs through the SDK's own parameters.
messages = chat_prompts[0]["messages"]
a = client.chat.completions.create(model=MODEL, messages=messages, seed=11, n=2, max_tokens=12, temperature=1.0)
b = client.chat.completions.create(model=MODEL, messages=messages, seed=11, n=2, max_tokens=12, temperature=1.0)
check([c.message.content for c in a.choices] == [c.message.content for c in b.choices], "seeded n=2 repeats")
check(len(a.choices) == 2, "n=2")
stop_text = chat_prompts[0]["greedy"]["text_skip_special"]
stop = stop_text[6:9]
r = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=24, stop=[stop])
check(r.choices[0].message.content == stop_text[: stop_text.find(stop)], "stop")
check(r.choices[0].finish_reason == "stop", "stop finish_reason")
r = client.chat.completions.create(
    model=MODEL, messages=messages, temperature=0, max_tokens=3, logprobs=True, top_logprobs=2, user="sdk-test"
)
content = r.choices[0].logprobs.content
check(len(content) == 3 and all(len(t.top_logprobs) == 2 for t in content), "logprobs")
check(all(t.top_logprobs[0].token == t.token for t in content), "greedy token is the top logprob")

# Legacy completions.
fox = text_prompts[0]
r = client.completions.create(
    model=MODEL, prompt=fox["text"], max_tokens=24, temperature=0, extra_body={"ignore_eos": True}
)
check(r.choices[0].text == fox["greedy"]["text_skip_special"], f"completions: {r.choices[0].text!r}")

# Embeddings (the SDK asks for base64 and decodes it).
r = client.embeddings.create(model=MODEL, input=[fox["text"]])
got = r.data[0].embedding
want = fox["embedding_mean_pooled_normalized"]
cosine = sum(x * y for x, y in zip(got, want)) / (
    math.sqrt(sum(x * x for x in got)) * math.sqrt(sum(y * y for y in want))
)
check(len(got) == len(want) and cosine >= 0.9999, f"embedding cosine {cosine}")
check(r.usage.prompt_tokens == fox["num_tokens"], "embedding usage")

# Errors surface as the SDK's typed exceptions.
try:
    client.chat.completions.create(model=MODEL, messages=messages, temperature=7)
    check(False, "temperature=7 was accepted")
except openai.BadRequestError as e:
    check(e.status_code == 400 and e.body.get("param") == "temperature", f"bad request: {e.body}")
try:
    client.chat.completions.create(model="no-such-model", messages=messages)
    check(False, "unknown model was accepted")
except openai.NotFoundError as e:
    check(e.status_code == 404, "404")
try:
    openai.OpenAI(base_url=BASE, api_key="hf-wrong", max_retries=0).models.list()
    check(False, "a wrong key was accepted")
except openai.AuthenticationError as e:
    check(e.status_code == 401, "401")

print("openai sdk", openai.__version__, ": all checks passed")
