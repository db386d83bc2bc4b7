"""Behaviors ``/sae/generate`` reports: one feature of a sparse autoencoder or
a linear probe, read at one layer's hidden state, token by token.

* **SAE feature** (the SAELens on-disk format: ``cfg.json`` +
  ``sae_weights.safetensors`` with ``W_enc [d_in, d_sae]``, ``b_enc
  [d_sae]``, optional ``threshold [d_sae]`` (JumpReLU) and ``b_dec [d_in]``):
  ``a = ReLU(h · W_enc[:, f] + b_enc[f])``; with a ``threshold``, ``a`` is 0
  unless the pre-activation exceeds ``threshold[f]``. If the config says
  ``apply_b_dec_to_input``, ``h - b_dec`` is encoded (folded into the bias
  here). The feature *fires* when ``a > 0``.
* **Probe**: ``a = h · vector + bias``; it fires when ``a > threshold``.

Only the one column of ``W_enc`` a behavior uses is kept (in
``behaviors.json``), not the whole SAE.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adyton import InvalidRequest, NotFound

from .store import _atomic_write


@dataclass
class Behavior:
    name: str
    model: str
    layer: int
    kind: str  # "sae" | "probe"
    vector: np.ndarray
    bias: float
    threshold: float | None
    source: dict[str, Any]

    def activation(self, h: np.ndarray) -> float:
        pre = float(np.dot(h.astype(np.float32), self.vector) + self.bias)
        if self.kind == "sae":
            if self.threshold is not None and pre <= self.threshold:
                return 0.0
            return max(pre, 0.0)
        return pre

    def fires(self, activation: float) -> bool:
        if self.kind == "sae":
            return activation > 0.0
        return activation > (self.threshold if self.threshold is not None else 0.0)

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "object": "sae.behavior", "model": self.model, "layer": self.layer,
                "kind": self.kind, "threshold": self.threshold, "source": self.source}

    def record(self) -> dict[str, Any]:
        return {**self.public(), "vector": [float(x) for x in self.vector], "bias": self.bias}


def _finite_number(value: Any, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise InvalidRequest(f"'{param}' must be a finite number", param=param)
    return float(value)


def load_sae_feature(path: Path, feature: int) -> tuple[np.ndarray, float, float | None, dict[str, Any]]:
    """(encoder column, bias, threshold or None, cfg) of feature ``feature``
    of the SAELens SAE in directory ``path``."""
    from safetensors.numpy import load_file

    cfg_path, weights_path = path / "cfg.json", path / "sae_weights.safetensors"
    if not cfg_path.is_file() or not weights_path.is_file():
        raise InvalidRequest(f"{path} is not a SAELens SAE directory (cfg.json and sae_weights.safetensors)",
                             param="sae.path")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        weights = load_file(str(weights_path))
    except Exception as exc:  # noqa: BLE001 - a broken file is the caller's to fix
        raise InvalidRequest(f"cannot read the SAE in {path}: {exc}", param="sae.path") from None
    w_enc, b_enc = weights.get("W_enc"), weights.get("b_enc")
    if w_enc is None or b_enc is None or w_enc.ndim != 2 or b_enc.shape != (w_enc.shape[1],):
        raise InvalidRequest("the SAE needs W_enc [d_in, d_sae] and b_enc [d_sae]", param="sae.path")
    if not 0 <= feature < w_enc.shape[1]:
        raise InvalidRequest(f"feature {feature} is outside this SAE's {w_enc.shape[1]} features",
                             param="sae.feature")
    column = w_enc[:, feature].astype(np.float32)
    bias = float(b_enc[feature])
    if cfg.get("apply_b_dec_to_input") and "b_dec" in weights:
        bias -= float(np.dot(weights["b_dec"].astype(np.float32), column))
    threshold = weights.get("threshold")
    return column, bias, (float(threshold[feature]) if threshold is not None else None), cfg


class BehaviorStore:
    def __init__(self, root: Path) -> None:
        self.path = root / "behaviors.json"
        self._lock = threading.Lock()
        self._behaviors: dict[str, Behavior] | None = None

    def _all(self) -> dict[str, Behavior]:
        if self._behaviors is None:
            found: dict[str, Behavior] = {}
            if self.path.is_file():
                for rec in json.loads(self.path.read_text(encoding="utf-8")):
                    found[rec["name"]] = Behavior(
                        name=rec["name"], model=rec["model"], layer=int(rec["layer"]), kind=rec["kind"],
                        vector=np.asarray(rec["vector"], np.float32), bias=float(rec["bias"]),
                        threshold=rec.get("threshold"), source=rec.get("source") or {})
            self._behaviors = found
        return self._behaviors

    def _save(self) -> None:
        data = json.dumps([b.record() for b in self._all().values()])
        _atomic_write(self.path, lambda tmp: tmp.write_text(data, encoding="utf-8"))

    def list_behaviors(self) -> list[Behavior]:
        with self._lock:
            return sorted(self._all().values(), key=lambda b: b.name)

    def get_many(self, names: list[str], model: str) -> list[Behavior]:
        with self._lock:
            known = self._all()
            unknown = [n for n in names if n not in known]
            if unknown:
                listing = ", ".join(sorted(known)) or "none are registered"
                raise InvalidRequest(f"unknown behavior(s) {', '.join(map(repr, unknown))}; known: {listing}",
                                     param="behavior_names", code="unknown_behavior")
            wrong = [n for n in names if known[n].model != model]
            if wrong:
                raise InvalidRequest(f"behavior {wrong[0]!r} reads model '{known[wrong[0]].model}', not "
                                     f"'{model}'", param="behavior_names", code="invalid_value")
            return [known[n] for n in names]

    def put(self, behavior: Behavior) -> None:
        with self._lock:
            self._all()[behavior.name] = behavior
            self._save()

    def delete(self, name: str) -> None:
        with self._lock:
            if self._all().pop(name, None) is None:
                raise NotFound(f"no behavior {name!r}", param="name")
            self._save()


def parse_behavior(body: dict[str, Any], model: str, shape: tuple[int, int]) -> Behavior:
    """A behavior from the admin's JSON: ``name``, ``layer``, and ``sae``
    (``{"path", "feature"}``) or ``probe`` (``{"vector", "bias", "threshold"}``)."""
    n_layers, hidden = shape
    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 128:
        raise InvalidRequest("'name' must be a non-empty string (at most 128 characters)", param="name")
    layer = body.get("layer")
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise InvalidRequest(f"'layer' must be an integer from 0 to {n_layers - 1}", param="layer")
    sae, probe = body.get("sae"), body.get("probe")
    if (sae is None) == (probe is None):
        raise InvalidRequest("send one of 'sae' ({path, feature}) or 'probe' ({vector, bias, threshold})",
                             param="sae")
    if sae is not None:
        if not isinstance(sae, dict) or not isinstance(sae.get("path"), str):
            raise InvalidRequest("'sae.path' must be the directory of a SAELens SAE", param="sae.path")
        feature = sae.get("feature")
        if isinstance(feature, bool) or not isinstance(feature, int):
            raise InvalidRequest("'sae.feature' must be an integer", param="sae.feature")
        column, bias, threshold, cfg = load_sae_feature(Path(sae["path"]).expanduser(), feature)
        if column.shape[0] != hidden:
            raise InvalidRequest(f"the SAE reads {column.shape[0]}-dimensional states; model '{model}' has "
                                 f"{hidden}", param="sae.path")
        source = {"sae": str(sae["path"]), "feature": feature, "hook_name": cfg.get("hook_name")}
        return Behavior(name, model, layer, "sae", column, bias, threshold, source)
    if not isinstance(probe, dict) or not isinstance(probe.get("vector"), list):
        raise InvalidRequest("'probe.vector' must be a list of numbers", param="probe.vector")
    vector = np.asarray([_finite_number(x, "probe.vector") for x in probe["vector"]], np.float32)
    if vector.shape[0] != hidden:
        raise InvalidRequest(f"'probe.vector' has {vector.shape[0]} values; model '{model}' has {hidden}",
                             param="probe.vector")
    bias = _finite_number(probe.get("bias", 0.0), "probe.bias")
    threshold = _finite_number(probe.get("threshold", 0.0), "probe.threshold")
    return Behavior(name, model, layer, "probe", vector, bias, threshold, {"probe": True})


def summarize(behavior: Behavior, values: list[float], tokens: list[str]) -> dict[str, Any]:
    """max, mean, and the token spans ([start, end)) where it fired."""
    spans: list[dict[str, Any]] = []
    start = None
    for i, value in enumerate([*values, None]):
        firing = value is not None and behavior.fires(value)
        if firing and start is None:
            start = i
        elif not firing and start is not None:
            spans.append({"start": start, "end": i, "text": "".join(tokens[start:i]),
                          "max": max(values[start:i])})
            start = None
    return {
        "layer": behavior.layer,
        "kind": behavior.kind,
        "threshold": behavior.threshold,
        "max": max(values) if values else None,
        "mean": float(np.mean(values)) if values else None,
        "fired_tokens": sum(1 for v in values if behavior.fires(v)),
        "spans": spans,
    }
