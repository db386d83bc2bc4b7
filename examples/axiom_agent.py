#!/usr/bin/env python3
"""The dev/critic agent of the Local Axiom API document, for your own adyton.

A developer model writes files as JSON actions; a critic model reviews each
file and either passes it or sends feedback back to the developer. Both talk
to ``POST /api/chat`` of an adyton server with the adyton-axiom plugin.

Differences from the document's version:

* the server, account number and model come from the command line or the
  environment (``ADYTON_URL``, ``AXIOM_ACCOUNT_NUMBER``, ``AXIOM_MODEL``);
* files are written only inside ``--workdir``; a path that would leave it
  (absolute, ``..``, a symlink pointing out) is refused and the developer is
  told so;
* replies that are not valid JSON are recovered from: the developer is shown
  its reply and asked again (bounded by ``--max-steps``); a critic that
  answers garbage is asked once more, then the file is accepted (as in the
  document);
* 429/503 are retried after ``Retry-After``; 401 and an unknown model stop
  the agent with the server's message; no TLS verification is switched off.

Only the standard library is needed. Exit status: 0 when the run ended
(critic passed, developer said complete, or --max-steps reached), 1 on an
API or network error, 2 on bad usage. The last line printed is
``RESULT {...json...}`` for scripts.

    python examples/axiom_agent.py --account-number 0000...0001 \\
        --task "Write a Python script that prints the first 10 primes" --workdir /tmp/agent
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8756"
DEFAULT_MODEL = "qwen3_4b"
ACCOUNT_RE = re.compile(r"[0-9]{64}")

DEV_PROMPT = """
You are a Developer Agent. Your goal is to write code and create files to complete a task.
Respond ONLY with a JSON object, one of:
{"action": "create_file", "path": "file.py", "content": "..."}
{"action": "complete", "message": "finished"}
Paths are relative to the project directory.
If you receive 'CRITIC FEEDBACK', use it to fix your code.
""".strip()

CRITIC_PROMPT = """
You are a Senior Code Reviewer.
Review the code provided by the developer.
1. If the code is perfect and meets all requirements, respond ONLY with: {"status": "PASS"}
2. If there are errors, bugs, or missing features, respond with: {"status": "FAIL", "feedback": "Detailed explanation of what to fix"}
""".strip()  # noqa: E501 - the prompt is sent as written

ONLY_JSON = ('Your last reply was not a valid JSON object. Reply with ONLY one JSON object, for example '
             '{"action": "create_file", "path": "main.py", "content": "print(1)"} or '
             '{"action": "complete", "message": "finished"}.')

#: most messages of the developer's chat kept (the task plus the latest turns)
MAX_HISTORY = 12
#: longest assistant reply echoed back into the chat
MAX_ECHO = 2000
#: largest file the agent writes
MAX_FILE_BYTES = 1_000_000


# ---------------------------------------------------------------------------
# The API
# ---------------------------------------------------------------------------


class AxiomAPIError(Exception):
    """The server refused a request; ``fatal`` ones end the run."""

    def __init__(self, status: int | None, message: str, code: str | None = None,
                 body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status or 'network'}: {message}")
        self.status = status
        self.message = message
        self.code = code
        self.body = body or {}

    @property
    def context_too_long(self) -> bool:
        return self.status == 400 and self.code == "context_length_exceeded"


class AxiomClient:
    """``POST /api/chat`` with retries for 429/503 and network errors."""

    def __init__(self, base_url: str, account_number: str, model: str, *, timeout: float = 300.0,
                 retries: int = 3, max_retry_wait: float = 60.0, log=print) -> None:
        base = base_url.rstrip("/")
        if base.endswith("/api/chat"):
            base = base[: -len("/api/chat")]
        self.url = base + "/api/chat"
        self.account_number = account_number
        self.model = model
        self.timeout = timeout
        self.retries = retries
        self.max_retry_wait = max_retry_wait
        self.log = log
        self.calls = 0

    def chat(self, system_prompt: str, messages: list[dict[str, str]]) -> str:
        payload = json.dumps({
            "model": self.model,
            "sessionId": self.account_number,
            "system_prompt": system_prompt,
            "messages": messages,
        }).encode("utf-8")
        attempt = 0
        while True:
            attempt += 1
            self.calls += 1
            req = urllib.request.Request(self.url, data=payload, method="POST",
                                         headers={"Content-Type": "application/json",
                                                  "Accept": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    body = json.loads(resp.read().decode("utf-8"))
                message = body.get("message") if isinstance(body, dict) else None
                if not isinstance(message, str):
                    raise AxiomAPIError(resp.status, f"unexpected response body: {body!r:.200}")
                return message
            except urllib.error.HTTPError as exc:
                error = _api_error(exc)
                if exc.code in (429, 503) and attempt <= self.retries \
                        and exc.headers.get("x-should-retry") != "false":
                    wait = _retry_after(exc.headers.get("Retry-After"), attempt, self.max_retry_wait)
                    self.log(f"[api] {exc.code} {error.message} - retrying in {wait:.0f}s")
                    time.sleep(wait)
                    continue
                raise error from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                reason = getattr(exc, "reason", exc)
                if attempt <= self.retries:
                    wait = min(2.0 ** attempt, self.max_retry_wait)
                    self.log(f"[api] cannot reach {self.url} ({reason}) - retrying in {wait:.0f}s")
                    time.sleep(wait)
                    continue
                raise AxiomAPIError(None, f"cannot reach {self.url}: {reason}") from None


def _api_error(exc: urllib.error.HTTPError) -> AxiomAPIError:
    raw = b""
    try:
        raw = exc.read()
        body = json.loads(raw.decode("utf-8"))
    except Exception:  # noqa: BLE001 - not JSON: report what we got
        text = raw.decode("utf-8", "replace").strip() if raw else exc.reason
        return AxiomAPIError(exc.code, str(text)[:300])
    if not isinstance(body, dict):
        return AxiomAPIError(exc.code, repr(body)[:300])
    message = str(body.get("error") or exc.reason)
    if body.get("available"):
        message += f" (available: {', '.join(map(str, body['available']))})"
    return AxiomAPIError(exc.code, message, body.get("code"), body)


def _retry_after(value: str | None, attempt: int, cap: float) -> float:
    try:
        wait = float(value) if value else 2.0 ** attempt
    except ValueError:
        wait = 2.0 ** attempt
    return max(0.0, min(wait, cap))


# ---------------------------------------------------------------------------
# Parsing what the models say
# ---------------------------------------------------------------------------

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)


def extract_json(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text``: the whole reply, a fenced block, or
    the first ``{...}`` that parses. None when there is none."""
    if not isinstance(text, str):
        return None
    candidates = [text.strip()] + [m.strip() for m in _FENCE.findall(text)]
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            return value
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            return value
    return None


# ---------------------------------------------------------------------------
# Files, kept inside the working directory
# ---------------------------------------------------------------------------


class UnsafePath(ValueError):
    pass


def safe_path(workdir: Path, path: Any) -> Path:
    """``path`` resolved inside ``workdir``, or UnsafePath saying why not."""
    if not isinstance(path, str) or not path.strip():
        raise UnsafePath("'path' must be a non-empty string")
    if "\x00" in path or len(path) > 255:
        raise UnsafePath("'path' contains a NUL byte or is too long")
    normalized = path.strip().replace("\\", "/")
    if PurePosixPath(normalized).is_absolute() or PureWindowsPath(path).drive or normalized.startswith("~"):
        raise UnsafePath(f"'{path}' is absolute; use a path relative to the project directory")
    parts = PurePosixPath(normalized).parts
    if any(part == ".." for part in parts):
        raise UnsafePath(f"'{path}' leaves the project directory ('..' is not allowed)")
    root = workdir.resolve()
    target = (root / PurePosixPath(normalized)).resolve()  # follows symlinks
    if target == root or os.path.commonpath([root, target]) != str(root):
        raise UnsafePath(f"'{path}' is not a file inside the project directory")
    if target.is_dir():
        raise UnsafePath(f"'{path}' is a directory")
    return target


def write_file(workdir: Path, path: Any, content: Any) -> Path:
    target = safe_path(workdir, path)
    if isinstance(content, (dict, list)):
        content = json.dumps(content, indent=2)
    if not isinstance(content, str):
        raise UnsafePath("'content' must be a string")
    data = content.encode("utf-8")
    if len(data) > MAX_FILE_BYTES:
        raise UnsafePath(f"'content' is larger than {MAX_FILE_BYTES} bytes")
    target.parent.mkdir(parents=True, exist_ok=True)
    root = workdir.resolve()
    if os.path.commonpath([root, target.parent.resolve()]) != str(root):  # raced symlink
        raise UnsafePath(f"'{path}' is not inside the project directory")
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return target


# ---------------------------------------------------------------------------
# The agent
# ---------------------------------------------------------------------------


@dataclass
class Outcome:
    status: str  # "pass" | "complete" | "max_steps"
    steps: int = 0
    files: list[str] = field(default_factory=list)
    invalid_replies: int = 0
    refused_paths: int = 0
    reviews: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "steps": self.steps, "files": self.files,
                "invalid_replies": self.invalid_replies, "refused_paths": self.refused_paths,
                "reviews": self.reviews}


def _trim(messages: list[dict[str, str]], keep: int = MAX_HISTORY) -> list[dict[str, str]]:
    """The task and the latest turns (a tiny model's context is small)."""
    if len(messages) <= keep:
        return messages
    return messages[:1] + messages[-(keep - 1):]


class Agent:
    def __init__(self, client: AxiomClient, workdir: Path, *, max_steps: int = 5, log=print) -> None:
        self.client = client
        self.workdir = workdir
        self.max_steps = max_steps
        self.log = log

    def _call(self, system_prompt: str, messages: list[dict[str, str]]) -> str:
        """One chat call; on 'context too long' the oldest turns are dropped."""
        while True:
            try:
                return self.client.chat(system_prompt, messages)
            except AxiomAPIError as exc:
                if exc.context_too_long and len(messages) > 2:
                    del messages[1:3]  # drop the oldest turn after the task
                    self.log("[agent] context too long - dropped the oldest turn")
                    continue
                raise

    def review(self, task: str, path: str, content: str) -> dict[str, Any] | None:
        critic_messages = [{"role": "user", "content": f"Task was: {task}\nFile {path}:\n{content}"}]
        for attempt in range(2):
            reply = self._call(CRITIC_PROMPT, critic_messages)
            review = extract_json(reply)
            if review and review.get("status") in ("PASS", "FAIL"):
                return review
            if attempt == 0:
                critic_messages += [{"role": "assistant", "content": reply[:MAX_ECHO]},
                                    {"role": "user", "content": 'Reply with ONLY {"status": "PASS"} or '
                                     '{"status": "FAIL", "feedback": "..."}.'}]
        return None

    def run(self, task: str) -> Outcome:
        self.workdir.mkdir(parents=True, exist_ok=True)
        outcome = Outcome(status="max_steps")
        messages: list[dict[str, str]] = [{"role": "user", "content": f"Task: {task}"}]
        self.log(f"[agent] task: {task}")
        self.log(f"[agent] workdir: {self.workdir.resolve()}  max steps: {self.max_steps}")
        for step in range(1, self.max_steps + 1):
            outcome.steps = step
            messages[:] = _trim(messages)
            raw = self._call(DEV_PROMPT, messages)
            data = extract_json(raw)
            action = data.get("action") if data else None
            if action == "create_file":
                path, content = data.get("path"), data.get("content")
                try:
                    target = write_file(self.workdir, path, content)
                except UnsafePath as exc:
                    outcome.refused_paths += 1
                    self.log(f"[dev] step {step}: refused to write: {exc}")
                    messages += [{"role": "assistant", "content": raw[:MAX_ECHO]},
                                 {"role": "user", "content": f"ERROR: {exc}. Create the file again with a "
                                  "relative path inside the project directory and string content."}]
                    continue
                rel = target.relative_to(self.workdir.resolve()).as_posix()
                if rel not in outcome.files:
                    outcome.files.append(rel)
                self.log(f"[dev] step {step}: created {rel} ({target.stat().st_size} bytes)")
                review = self.review(task, rel, target.read_text("utf-8"))
                if review is None:
                    outcome.reviews.append("invalid")
                    self.log("[critic] invalid response twice - assuming pass")
                    outcome.status = "pass"
                    break
                if review["status"] == "PASS":
                    outcome.reviews.append("PASS")
                    self.log("[critic] PASS - task complete")
                    outcome.status = "pass"
                    break
                feedback = str(review.get("feedback") or "no details given")
                outcome.reviews.append("FAIL")
                self.log(f"[critic] FAIL: {feedback}")
                messages += [{"role": "assistant", "content": raw[:MAX_ECHO]},
                             {"role": "user", "content": f"CRITIC FEEDBACK: {feedback}. Please fix the code "
                              "and recreate the file."}]
            elif action == "complete":
                self.log(f"[dev] step {step}: marked the task complete: {data.get('message', '')}")
                outcome.status = "complete"
                break
            else:
                outcome.invalid_replies += 1
                what = "no JSON object" if data is None else f"unknown action {action!r}"
                preview = raw.strip().replace("\n", " ")[:120]
                self.log(f"[dev] step {step}: {what} in reply: {preview!r} - asking again")
                messages += [{"role": "assistant", "content": raw[:MAX_ECHO] or "(empty)"},
                             {"role": "user", "content": ONLY_JSON}]
        else:
            self.log(f"[agent] stopped after --max-steps={self.max_steps}")
        return outcome


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("ADYTON_URL", DEFAULT_URL),
                        help=f"server base URL (env ADYTON_URL; default {DEFAULT_URL})")
    parser.add_argument("--account-number", default=os.environ.get("AXIOM_ACCOUNT_NUMBER", ""),
                        help="your 64-digit account number (env AXIOM_ACCOUNT_NUMBER)")
    parser.add_argument("--model", default=os.environ.get("AXIOM_MODEL", DEFAULT_MODEL),
                        help=f"model name or alias (env AXIOM_MODEL; default {DEFAULT_MODEL})")
    parser.add_argument("--task", help="what to build (asked interactively when omitted)")
    parser.add_argument("--workdir", default="axiom_work",
                        help="directory the agent writes into (default ./axiom_work)")
    parser.add_argument("--max-steps", type=int, default=5, help="developer turns at most (default 5)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per request (default 300)")
    parser.add_argument("--retries", type=int, default=3, help="retries on 429/503/network errors (default 3)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not ACCOUNT_RE.fullmatch(args.account_number or ""):
        print("error: give your 64-digit account number with --account-number or AXIOM_ACCOUNT_NUMBER "
              "(without adyton-limits on the server any 64 digits work; with it, see "
              "`adyton accounts --help` on the server)", file=sys.stderr)
        return 2
    if args.max_steps < 1:
        print("error: --max-steps must be at least 1", file=sys.stderr)
        return 2
    task = args.task
    if not task:
        if not sys.stdin.isatty():
            print("error: give the task with --task", file=sys.stderr)
            return 2
        task = input("Enter task: ").strip()
        if not task:
            return 2
    client = AxiomClient(args.url, args.account_number, args.model, timeout=args.timeout,
                         retries=args.retries)
    agent = Agent(client, Path(args.workdir), max_steps=args.max_steps)
    try:
        outcome = agent.run(task)
    except AxiomAPIError as exc:
        print(f"error: the server refused the request: {exc}", file=sys.stderr)
        print("RESULT " + json.dumps({"status": "error", "http_status": exc.status, "code": exc.code,
                                      "error": exc.message, "calls": client.calls}))
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print("RESULT " + json.dumps({**outcome.as_dict(), "calls": client.calls}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
