"""The official OpenAI Python SDK against a local adyton server: a chat, a
stream, and JSON-schema output.

    ADYTON_API_KEY=sk-... python examples/openai_sdk.py [--url http://127.0.0.1:8756]

(`adyton accounts create` prints a key; without adyton-limits any key works.)
"""

from __future__ import annotations

import argparse
import json
import os

from openai import OpenAI


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("ADYTON_URL", "http://127.0.0.1:8756"))
    parser.add_argument("--api-key", default=os.environ.get("ADYTON_API_KEY", "no-key"))
    parser.add_argument("--model", default="", help='model id; "" = the model loaded in the server')
    args = parser.parse_args()
    client = OpenAI(base_url=args.url.rstrip("/") + "/v1", api_key=args.api_key)

    # 1. a chat completion
    resp = client.chat.completions.create(
        model=args.model,
        messages=[{"role": "user", "content": "Say hello in one sentence."}],
        max_tokens=40,
        temperature=0,
    )
    print("chat:", resp.choices[0].message.content)
    print("usage:", resp.usage.prompt_tokens, "prompt +", resp.usage.completion_tokens, "completion tokens")

    # 2. streaming, with the usage chunk at the end
    print("stream: ", end="", flush=True)
    usage = None
    for chunk in client.chat.completions.create(
        model=args.model,
        messages=[{"role": "user", "content": "Count from one to five."}],
        max_tokens=40,
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
        if chunk.usage is not None:
            usage = chunk.usage
    print()
    print("stream usage:", usage.completion_tokens if usage else None, "completion tokens")

    # 3. JSON-schema output, enforced token by token (adyton-guided)
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 30},
                       "age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    resp = client.chat.completions.create(
        model=args.model,
        messages=[{"role": "user", "content": "Invent a person and give their name and age."}],
        max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}},
    )
    person = json.loads(resp.choices[0].message.content)
    print("json:", json.dumps(person))


if __name__ == "__main__":
    main()
