"""Validates a running node's responses against OpenAI's OpenAPI description.

Run by node/tests/openai_sdk.rs with HF_BASE_URL, HF_KEY and HF_OPENAPI (tests/openai-openapi/
openapi.yaml) set. Every response body and every streamed chunk is validated against the schema
OpenAI documents for it; the first mismatch fails with the path and the reason.
"""

import json
import os
import sys
import urllib.error
import urllib.request

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

BASE = os.environ["HF_BASE_URL"]
KEY = os.environ["HF_KEY"]
MODEL = "tiny-llama"


def nullable_to_json_schema(node):
    """The description mixes OpenAPI 3.0 `nullable: true` into 3.1 schemas; make it JSON Schema."""
    if isinstance(node, dict):
        if node.get("nullable") is True and "type" in node:
            t = node["type"]
            node["type"] = (t if isinstance(t, list) else [t]) + ["null"]
            if "enum" in node and None not in node["enum"]:
                node["enum"] = node["enum"] + [None]
        for value in node.values():
            nullable_to_json_schema(value)
    elif isinstance(node, list):
        for value in node:
            nullable_to_json_schema(value)


spec = yaml.safe_load(open(os.environ["HF_OPENAPI"]))
nullable_to_json_schema(spec)
registry = Registry().with_resource("urn:openai", Resource(contents=spec, specification=DRAFT202012))
checked = 0


def validate(schema_name, instance, what):
    global checked
    schema = {"$ref": f"urn:openai#/components/schemas/{schema_name}"}
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        print(f"FAILED: {what} is not a valid {schema_name}: at {list(e.path)}: {e.message}", file=sys.stderr)
        print(json.dumps(instance)[:2000], file=sys.stderr)
        sys.exit(1)
    checked += 1


def request(method, path, body=None, key=KEY):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(BASE + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {key}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def chunks(text):
    for event in text.split("\n\n"):
        for line in event.splitlines():
            if line.startswith("data: ") and line[6:] != "[DONE]":
                yield json.loads(line[6:])


messages = [{"role": "user", "content": "Hello there"}]
status, text = request("GET", "/v1/models")
validate("ListModelsResponse", json.loads(text), "GET /v1/models")
status, text = request("GET", "/v1/models/tiny")
validate("Model", json.loads(text), "GET /v1/models/tiny")

chat = {"model": MODEL, "messages": messages, "max_tokens": 6, "n": 2, "seed": 1, "logprobs": True, "top_logprobs": 2}
status, text = request("POST", "/v1/chat/completions", chat)
validate("CreateChatCompletionResponse", json.loads(text), "chat completion")
status, text = request(
    "POST", "/v1/chat/completions", dict(chat, stream=True, stream_options={"include_usage": True})
)
for i, chunk in enumerate(chunks(text)):
    validate("CreateChatCompletionStreamResponse", chunk, f"chat chunk {i}")
status, text = request("POST", "/v1/chat/completions", dict(chat, stop=["e"], stream=True))
for i, chunk in enumerate(chunks(text)):
    validate("CreateChatCompletionStreamResponse", chunk, f"chat chunk {i} (stop)")

completion = {"model": MODEL, "prompt": ["Once upon", "a time"], "max_tokens": 5, "logprobs": 2, "seed": 3}
status, text = request("POST", "/v1/completions", completion)
validate("CreateCompletionResponse", json.loads(text), "completion")
status, text = request("POST", "/v1/completions", dict(completion, stream=True))
# The description has no schema of its own for streamed completions: chunks are the completion
# object, whose `finish_reason` is null until the last chunk of a choice (as OpenAI sends them).
for i, chunk in enumerate(chunks(text)):
    for choice in chunk["choices"]:
        if choice["finish_reason"] is None:
            choice["finish_reason"] = "length"
    validate("CreateCompletionResponse", chunk, f"completion chunk {i}")

status, text = request("POST", "/v1/embeddings", {"model": MODEL, "input": ["a", "b"], "encoding_format": "float"})
validate("CreateEmbeddingResponse", json.loads(text), "embeddings")
# The description types `embedding` as numbers only; base64 (the SDK's default) is a string of
# little-endian f32s, and the rest of the object is the same.
status, text = request("POST", "/v1/embeddings", {"model": MODEL, "input": ["a"], "encoding_format": "base64"})
b64 = json.loads(text)
if not isinstance(b64["data"][0]["embedding"], str):
    print("FAILED: base64 embedding is not a string", file=sys.stderr)
    sys.exit(1)
b64["data"][0]["embedding"] = [0.0]
validate("CreateEmbeddingResponse", b64, "embeddings (base64)")

for path, body, key, want in [
    ("/v1/chat/completions", dict(chat, temperature=9), KEY, 400),
    ("/v1/chat/completions", dict(chat, model="nope"), KEY, 404),
    ("/v1/chat/completions", chat, "hf-wrong", 401),
    ("/v1/completions", {"model": MODEL}, KEY, 400),
]:
    status, text = request("POST", path, body, key)
    if status != want:
        print(f"FAILED: {path} gave {status}, expected {want}: {text}", file=sys.stderr)
        sys.exit(1)
    validate("ErrorResponse", json.loads(text), f"{want} error")

print(f"openapi conformance: {checked} responses valid")
