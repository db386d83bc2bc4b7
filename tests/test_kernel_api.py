"""docs/kernel.md is the Kernel API plugins may use, and the first-party
plugins use nothing else.

* Every ``### kernel.NAME`` heading of docs/kernel.md names an attribute that
  exists on a real app's ``Kernel``, and a documented call's parameters are
  the real ones.
* An AST scan of every ``plugins/*/adyton_*/**/*.py`` finds each expression
  that is the kernel (``kernel``, ``self.kernel``, ``current_kernel()``, a name
  assigned from one, a parameter annotated ``Kernel``) and fails on: an
  attribute the page does not document, any attribute written onto the
  kernel, ``getattr``/``setattr``/``hasattr`` on it (undocumented by
  construction), and ``kernel.settings.X`` for a section that is not the
  kernel's own (plugins read theirs with ``kernel.section``).
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from adyton import Authenticator, PluginError, Settings, create_app, hookimpl

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "kernel.md"
PLUGIN_FILES = sorted(ROOT.glob("plugins/*/adyton_*/**/*.py"))
CORE_SECTIONS = set(Settings.model_fields)


def documented() -> dict[str, str]:
    """name -> the signature line under its heading."""
    text = DOC.read_text()
    found: dict[str, str] = {}
    for match in re.finditer(r"^### kernel\.(\w+)\n\n`([^`]*)`", text, re.M):
        found[match.group(1)] = match.group(2)
    return found


def _is_current_kernel(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    return (isinstance(func, ast.Name) and func.id == "current_kernel") or (
        isinstance(func, ast.Attribute) and func.attr == "current_kernel")


def _annotated_kernel(annotation: ast.AST | None) -> bool:
    if annotation is None:
        return False
    text = ast.unparse(annotation).strip("'\"")
    return text in ("Kernel", "adyton.Kernel") or text.startswith("Kernel |")


class KernelUses(ast.NodeVisitor):
    """Violations of the documented Kernel API in one module."""

    def __init__(self, names: set[str], where: str) -> None:
        self.allowed = names
        self.where = where
        self.kernel_names = {"kernel"}
        self.violations: list[str] = []

    def scan(self, tree: ast.AST) -> list[str]:
        # names that hold the kernel: assigned from a kernel expression, or
        # parameters annotated Kernel (two passes reach a fixed point here)
        for _ in range(2):
            for node in ast.walk(tree):
                if isinstance(node, ast.Assign) and self.is_kernel(node.value):
                    for target in node.targets:
                        if isinstance(target, ast.Name):
                            self.kernel_names.add(target.id)
                elif isinstance(node, ast.arg) and _annotated_kernel(node.annotation):
                    self.kernel_names.add(node.arg)
        self.visit(tree)
        return self.violations

    def is_kernel(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Name):
            return node.id in self.kernel_names
        if isinstance(node, ast.Attribute):
            return node.attr in ("kernel", "_kernel")
        return _is_current_kernel(node)

    def report(self, node: ast.AST, what: str) -> None:
        self.violations.append(f"{self.where}:{getattr(node, 'lineno', '?')}: {what}")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if self.is_kernel(node.value):
            code = ast.unparse(node)
            if isinstance(node.ctx, (ast.Store, ast.Del)):
                self.report(node, f"writes '{code}' onto the kernel")
            elif node.attr not in self.allowed:
                self.report(node, f"'{code}': kernel.{node.attr} is not documented in docs/kernel.md")
        if (isinstance(node.value, ast.Attribute) and node.value.attr == "settings"
                and self.is_kernel(node.value.value) and node.attr not in CORE_SECTIONS):
            self.report(node, f"'{ast.unparse(node)}': a plugin section is read with kernel.section(name, cls)")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr", "hasattr", "delattr") \
                and node.args:
            target = node.args[0]
            if self.is_kernel(target) or (isinstance(target, ast.Attribute) and target.attr == "settings"
                                          and self.is_kernel(target.value)):
                self.report(node, f"'{ast.unparse(node)}': dynamic access to the kernel is not documented")
        self.generic_visit(node)


def violations_in(source: str, where: str = "<test>") -> list[str]:
    return KernelUses(set(documented()), where).scan(ast.parse(source))


def test_the_page_documents_names():
    names = documented()
    assert {"submit", "authenticate", "resolve_model", "section", "state", "offload",
            "exposed_headers", "provide", "service"} <= set(names)


def test_first_party_plugins_use_only_the_documented_kernel():
    assert PLUGIN_FILES, "no plugin sources found"
    found: list[str] = []
    for path in PLUGIN_FILES:
        found += violations_in(path.read_text(), str(path.relative_to(ROOT)))
    assert not found, "plugins touch undocumented Kernel API:\n" + "\n".join(found)


@pytest.mark.parametrize("source, expected", [
    ("def f(kernel):\n    return kernel.pipeline.submit\n", "kernel.pipeline is not documented"),
    ("def f(self):\n    return self.kernel.models.resolve(None)\n", "kernel.models is not documented"),
    ("def f():\n    k = current_kernel()\n    return k.queues\n", "kernel.queues is not documented"),
    ("def f(kernel):\n    kernel.limits_service = 1\n", "writes 'kernel.limits_service' onto the kernel"),
    ("def f(kernel):\n    return getattr(kernel.settings, 'guided', None)\n", "dynamic access"),
    ("def f(kernel):\n    return kernel.settings.llama\n", "kernel.section(name, cls)"),
    ("def f(k: 'Kernel'):\n    return k.metrics\n", "kernel.metrics is not documented"),
])
def test_the_scan_catches_violations(source, expected):
    found = violations_in(source)
    assert len(found) == 1 and expected in found[0], found


def test_the_scan_allows_documented_uses():
    source = ("async def f(kernel, credentials):\n"
              "    await kernel.submit(None, credentials)\n"
              "    kernel.section('x', object)\n"
              "    return current_kernel().settings.server.max_body_bytes, kernel.home\n")
    assert violations_in(source) == []


def test_documented_names_exist_on_the_kernel(tmp_path):
    app = create_app(settings={"home": str(tmp_path)}, load_entrypoints=False)
    kernel = app.extensions["adyton"]
    for name, signature in documented().items():
        assert hasattr(kernel, name), f"docs/kernel.md documents kernel.{name}, which Kernel lacks"
        value = getattr(kernel, name)
        call = re.match(rf"(?:async )?kernel\.{name}\((.*)\)", signature)
        if call is None:
            assert not inspect.ismethod(value), f"kernel.{name} is a method: document its call"
            continue
        assert inspect.ismethod(value), f"docs/kernel.md documents kernel.{name}(...), which is not a method"
        assert signature.startswith("async ") == inspect.iscoroutinefunction(value), \
            f"docs/kernel.md says kernel.{name} is {'' if signature.startswith('async ') else 'not '}async"
        documented_params = [p.split(":")[0].split("=")[0].strip(" *")
                             for p in re.split(r",\s*(?![^\[]*\])", call.group(1)) if p.strip() not in ("", "/")]
        real = list(inspect.signature(value).parameters)
        assert documented_params == real, f"kernel.{name}: documented {documented_params}, real {real}"


# -- the API's behaviour ---------------------------------------------------------------


class _HeaderAuth(Authenticator):
    name = "header-auth"
    exposed_headers = ("x-header-auth-left",)

    async def authenticate(self, credentials):
        return None


class _AuthPlugin:
    __name__ = "header-auth-plugin"

    def __init__(self, authenticator):
        self.authenticator = authenticator

    @hookimpl
    def register_authenticators(self, register, kernel):
        register(self.authenticator)


async def test_cors_exposes_the_headers_registered_objects_declare(tmp_path):
    app = create_app(settings={"home": str(tmp_path), "server": {"cors_origins": ["*"]}},
                     load_entrypoints=False, plugins=[_AuthPlugin(_HeaderAuth())])
    kernel = app.extensions["adyton"]
    assert kernel.exposed_headers() == ["Retry-After", "x-should-retry", "x-header-auth-left"]
    assert kernel.owner_of(kernel.authenticators[0]) == "header-auth-plugin"
    assert "_adyton_plugin" not in vars(kernel.authenticators[0])  # nothing written onto plugin objects
    response = await app.test_client().get("/health", headers={"Origin": "https://example.test"})
    assert response.headers["Access-Control-Expose-Headers"] == "Retry-After, x-should-retry, x-header-auth-left"


def test_exposed_headers_must_be_a_sequence_of_names(tmp_path):
    auth = _HeaderAuth()
    auth.exposed_headers = "x-one, x-two"
    with pytest.raises(PluginError, match=r"header-auth-plugin.*exposed_headers"):
        create_app(settings={"home": str(tmp_path)}, load_entrypoints=False, plugins=[_AuthPlugin(auth)])


class _Section(BaseModel):
    level: int = 3


class _SectionPlugin:
    __name__ = "section-plugin"

    @hookimpl
    def register_settings(self, register):
        register("sectioned", _Section)


def test_section_is_the_validated_instance_or_the_defaults(tmp_path):
    app = create_app(settings={"home": str(tmp_path), "sectioned": {"level": 7}},
                     load_entrypoints=False, plugins=[_SectionPlugin()])
    kernel = app.extensions["adyton"]
    assert kernel.section("sectioned", _Section).level == 7
    absent = kernel.section("absent", _Section)
    assert absent.level == 3 and kernel.section("absent", _Section) is absent

    class Other(BaseModel):
        level: int = 0

    with pytest.raises(PluginError, match="'sectioned' is a _Section, not the Other"):
        kernel.section("sectioned", Other)


def test_state_is_per_kernel_and_services_are_named(tmp_path):
    one = create_app(settings={"home": str(tmp_path)}, load_entrypoints=False).extensions["adyton"]
    two = create_app(settings={"home": str(tmp_path)}, load_entrypoints=False).extensions["adyton"]
    made = []
    first = one.state("k", lambda: made.append(1) or object())
    assert one.state("k", lambda: made.append(1) or object()) is first and made == [1]
    assert two.state("k", object) is not first
    with pytest.raises(PluginError, match="no installed plugin provides the service 'accounts'"):
        one.service("accounts")
    service = object()
    one.provide("accounts", service)
    one.provide("accounts", service)  # the same object again: fine
    assert one.service("accounts") is service
    with pytest.raises(PluginError, match="service 'accounts' is provided twice"):
        one.provide("accounts", object())
    with pytest.raises(PluginError):
        two.service("accounts")
