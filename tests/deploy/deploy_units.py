"""A tiny reader of systemd service units, so the tests start a service the
way systemd would: the unit's ``ExecStart`` with its ``Environment=``,
``EnvironmentFile=`` and ``WorkingDirectory=``, and nothing else.

systemd is not PID 1 here, so the test cannot ``systemctl start``. Instead
``service_command(unit, instance, relocate)`` returns exactly the command the
unit runs, with:

* the specifiers systemd expands (``%i``, ``%I``, ``%n``, ``%p``, ``%%``);
* ``Environment=`` assignments (shell-style quoting), then each
  ``EnvironmentFile=`` in order (a leading ``-`` means "if it exists"), whose
  variables override ``Environment=`` as systemd.exec(5) says;
* ``${VAR}`` / ``$VAR`` in ``ExecStart`` expanded from that environment;
* the install locations moved: ``relocate`` maps a path prefix of the unit
  (``/opt/adyton/venv``) to where the test installed it (the repo's venv).

Directives that change *who* runs it or *what it may touch* (``User=``,
``ProtectSystem=``, ``Restart=`` ...) are systemd's business and are not
applied; directives that would change the command and that this reader does
not understand are refused, so a unit cannot silently drift from what the
tests run.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

#: [Service] directives that change the process this reader starts
APPLIED = {"ExecStart", "Environment", "EnvironmentFile", "WorkingDirectory", "StateDirectory", "Type"}
#: [Service] directives systemd applies around the process (users, sandbox, restarts)
NOT_APPLIED = {"User", "Group", "KillSignal", "TimeoutStopSec", "Restart", "RestartSec", "LimitNOFILE",
               "NoNewPrivileges", "PrivateTmp", "ProtectSystem", "ProtectHome"}


@dataclass
class ServiceCommand:
    argv: list[str]
    env: dict[str, str]
    cwd: Path | None
    state_dirs: list[Path]


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections → [(key, value), ...] in file order (a key may repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):  # continuation
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        if current is None or "=" not in line:
            raise ValueError(f"unit file: cannot parse line {raw!r}")
        key, value = line.split("=", 1)
        current.append((key.strip(), value.strip()))
    return sections


def expand_specifiers(value: str, unit_name: str, instance: str | None) -> str:
    prefix = unit_name.split("@", 1)[0].rsplit(".", 1)[0]
    table = {"i": instance or "", "I": instance or "", "n": unit_name, "N": unit_name.rsplit(".", 1)[0],
             "p": prefix, "%": "%"}

    def sub(m: re.Match) -> str:
        if m.group(1) not in table:
            raise ValueError(f"unit file: specifier %{m.group(1)} is not supported by this reader")
        return table[m.group(1)]

    return re.sub(r"%(.)", sub, value)


def read_environment_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; # and ; comments; quotes around the value removed."""
    env: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if "=" not in line:
            raise ValueError(f"{path}: not KEY=VALUE: {raw!r}")
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def _relocate(value: str, relocate: dict[str, str]) -> str:
    for old, new in sorted(relocate.items(), key=lambda kv: -len(kv[0])):
        if value == old or value.startswith(old + "/"):
            return new + value[len(old):]
    return value


def service_command(unit_path: Path, instance: str | None = None,
                    relocate: dict[str, str] | None = None) -> ServiceCommand:
    """The command ``unit_path`` (a template when ``instance`` is given) runs."""
    relocate = relocate or {}
    unit_name = unit_path.name if instance is None else unit_path.name.replace("@.", f"@{instance}.")
    sections = parse_unit(unit_path.read_text())
    service = sections.get("Service")
    if not service:
        raise ValueError(f"{unit_path}: no [Service] section")
    env: dict[str, str] = {}
    file_env: dict[str, str] = {}
    exec_start: str | None = None
    cwd: Path | None = None
    state_dirs: list[Path] = []
    for key, value in service:
        if key in NOT_APPLIED:
            continue
        if key not in APPLIED:
            raise ValueError(f"{unit_path}: [Service] {key}= is not understood by the test's unit reader")
        value = expand_specifiers(value, unit_name, instance)
        if key == "Environment":
            for assignment in shlex.split(value):
                name, _, val = assignment.partition("=")
                env[name] = _relocate(val, relocate)
        elif key == "EnvironmentFile":
            optional = value.startswith("-")
            path = Path(_relocate(value.lstrip("-"), relocate))
            if path.exists():
                file_env.update({k: _relocate(v, relocate) for k, v in read_environment_file(path).items()})
            elif not optional:
                raise FileNotFoundError(f"{unit_path}: EnvironmentFile {path} does not exist")
        elif key == "WorkingDirectory":
            cwd = Path(_relocate(value.lstrip("-"), relocate))
        elif key == "StateDirectory":
            state_dirs += [Path(_relocate("/var/lib/" + d, relocate)) for d in value.split()]
        elif key == "ExecStart":
            if exec_start is not None:
                raise ValueError(f"{unit_path}: more than one ExecStart= (Type=exec takes one)")
            exec_start = value
        elif key == "Type" and value not in ("exec", "simple"):
            raise ValueError(f"{unit_path}: Type={value} is not run by this reader")
    if exec_start is None:
        raise ValueError(f"{unit_path}: no ExecStart=")
    env.update(file_env)  # EnvironmentFile= overrides Environment=
    exec_start = exec_start.lstrip("-@:+!")

    def expand(word: str) -> str:
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), word)

    argv = [expand(w) for w in shlex.split(exec_start)]
    argv[0] = _relocate(argv[0], relocate)
    return ServiceCommand(argv=argv, env=env, cwd=cwd, state_dirs=state_dirs)


def systemd_verify(unit_path: Path, instance: str, relocate: dict[str, str], workdir: Path) -> str | None:
    """``systemd-analyze verify`` on the unit (its paths relocated, so the
    binary it names exists here). None when systemd-analyze is not
    installed; otherwise its complaints ("" when none)."""
    exe = shutil.which("systemd-analyze")
    if exe is None:
        return None
    text = unit_path.read_text()
    for old, new in sorted(relocate.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(old, new)
    workdir.mkdir(parents=True, exist_ok=True)
    copy = workdir / unit_path.name.replace("@.", f"@{instance}.")
    copy.write_text(text)
    result = subprocess.run([exe, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (result.stdout + result.stderr).splitlines()
                  # systemd is not PID 1 here and the adyton user is production's
                  if line.strip() and "System has not been booted with systemd" not in line
                  and "Failed to resolve user" not in line and "Failed to determine user" not in line]
    return "\n".join(complaints)
